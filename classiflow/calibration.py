"""Calibrated probabilities: temperature scaling (Guo et al. 2017), expected calibration error, a reliability
diagram.

A network trained with cross-entropy is usually over-confident: of the test images it scores at 95%, fewer than
95% are right. Dividing every logit by one temperature T, fitted on the validation split by minimising the
negative log-likelihood, fixes most of that without changing a single prediction (the argmax is the same for
any T > 0); serving applies the same T, so that a served probability of 0.9 is right about nine times in ten.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from classiflow.atomic import atomic_path, write_text

BINS = 15  # equal-width confidence bins, as in Guo et al.
T_RANGE = (0.05, 20.0)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 minimising the NLL of ``softmax(logits / T)``: a one-dimensional convex problem in log T,
    solved by L-BFGS; 1.0 when there is nothing to fit on."""
    if len(labels) == 0:
        return 1.0
    logits, labels = logits.detach().double(), labels.long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(np.clip(log_t.exp().item(), *T_RANGE))


def reliability(probs: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> list[dict]:
    """Per confidence bin: how many images, their mean confidence (top probability) and their accuracy."""
    confidence, predicted = probs.max(1)
    correct = (predicted == labels).double()
    edges = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64)
    which = torch.bucketize(confidence.double(), edges[1:-1], right=True)
    rows = []
    for b in range(bins):
        mask = which == b
        count = int(mask.sum())
        rows.append({
            "low": float(edges[b]),
            "high": float(edges[b + 1]),
            "count": count,
            "confidence": float(confidence[mask].double().mean()) if count else 0.0,
            "accuracy": float(correct[mask].mean()) if count else 0.0,
        })  # fmt: skip
    return rows


def expected_calibration_error(rows: list[dict]) -> float:
    """The count-weighted mean gap between confidence and accuracy over the bins of :func:`reliability`."""
    total = sum(r["count"] for r in rows)
    return sum(r["count"] * abs(r["accuracy"] - r["confidence"]) for r in rows) / max(total, 1)


def calibrate(val: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor], enabled: bool) -> dict:
    """T fitted on validation (1.0 when ``enabled`` is false), and ECE/NLL on test before and after it."""
    temperature = fit_temperature(*val) if enabled else 1.0
    (logits, labels), out = test, {"temperature": temperature, "bins": {}, "note": None}
    if enabled and temperature in T_RANGE:
        out["note"] = (
            f"the temperature sits at its bound {temperature:g}: the validation split is (nearly) separated, so its "
            "likelihood has no finite optimum; test ECE and NLL before/after tell whether it helps"
        )
    for name, t in (("before", 1.0), ("after", temperature)):
        rows = reliability(F.softmax(logits.double() / t, 1), labels)
        out["bins"][name] = rows
        out[f"ece_{name}"] = expected_calibration_error(rows)
        out[f"nll_{name}"] = float(F.cross_entropy(logits.double() / t, labels)) if len(labels) else 0.0
    return out


def write_reliability_csv(path: Path, calibration: dict) -> None:
    """One row per non-empty bin and view (``before``: raw softmax, ``after``: over the temperature)."""
    lines = ["scaling,confidence,accuracy,count"]
    for name, rows in calibration["bins"].items():
        lines += [f"{name},{r['confidence']:.4f},{r['accuracy']:.4f},{r['count']}" for r in rows if r["count"]]
    write_text(path, "\n".join(lines) + "\n")


def plot_reliability(path: Path, calibration: dict, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.8), sharey=True)
    t = calibration["temperature"]
    for ax, name, label in zip(axes, ("before", "after"), ("raw softmax", f"temperature {t:.2f}"), strict=True):
        rows = [r for r in calibration["bins"][name] if r["count"]]
        centres = [(r["low"] + r["high"]) / 2 for r in rows]
        width = rows[0]["high"] - rows[0]["low"] if rows else 0.0
        ax.bar(centres, [r["accuracy"] for r in rows], width=width * 0.9, color="tab:blue", label="accuracy")
        ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], "o", color="tab:orange", ms=4,
                label="(mean confidence, accuracy)")  # fmt: skip
        ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top probability)")
        ax.set_title(f"{label}: ECE {100 * calibration[f'ece_{name}']:.2f}%")
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
