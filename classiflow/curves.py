"""Precision-recall curves on the test split: one per class (that class against the rest), and defect against
``ok`` when a normal class is named (score: 1 - p(ok)), with the chosen operating point marked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve

from classiflow.atomic import atomic_path, write_text
from classiflow.operating import OperatingPoint, decide

DEFECT = "defect vs ok"
POINTS = 200  # per curve in the CSV: enough to draw, few enough for DVC


def pr_curves(probs: np.ndarray, labels: np.ndarray, classes: list[str], normal: str | None) -> dict[str, dict]:
    """name -> precision, recall (subsampled) and average precision; classes absent from ``labels`` are left out."""
    scores = {c: (labels == i, probs[:, i]) for i, c in enumerate(classes)}
    if normal is not None:
        n = classes.index(normal)
        scores[DEFECT] = (labels != n, 1.0 - probs[:, n])
    out = {}
    for name, (positive, score) in scores.items():
        if positive.all() or not positive.any():
            continue
        precision, recall, _ = precision_recall_curve(positive, score)
        keep = np.unique(np.linspace(0, len(recall) - 1, min(POINTS, len(recall))).round().astype(int))
        out[name] = {
            "precision": precision[keep].tolist(),
            "recall": recall[keep].tolist(),
            "average_precision": float(average_precision_score(positive, score)),
        }
    return out


def write_curves_csv(path: Path, curves: dict[str, dict]) -> None:
    lines = ["curve,recall,precision"]
    for name, c in curves.items():
        lines += [f"{name},{r:.5f},{p:.5f}" for r, p in zip(c["recall"], c["precision"], strict=True)]
    write_text(path, "\n".join(lines) + "\n")


def _marks(probs, labels, classes, point: OperatingPoint | None) -> dict[str, tuple[float, float]]:
    """(recall, precision) of each class's answers at the operating point."""
    if point is None:
        return {}
    answer, out = decide(probs, classes, point), {}
    for i, c in enumerate(classes):
        said, mine = answer == i, labels == i
        if mine.any() and said.any():
            out[c] = (float(np.mean(answer[mine] == i)), float(np.mean(labels[said] == i)))
    return out


def plot_curves(path: Path, probs, labels, classes, curves: dict[str, dict], point: OperatingPoint | None, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 6))
    marks = _marks(probs, labels, classes, point)
    for name, c in curves.items():
        (line,) = ax.plot(c["recall"], c["precision"], lw=2.2 if name == DEFECT else 1.2,
                          label=f"{name} (AP {c['average_precision']:.3f})")  # fmt: skip
        if name in marks:
            ax.plot(*marks[name], "o", color=line.get_color(), ms=7, mec="black")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.01)
    chosen = f"; dots: {point.policy} {point.target:g} (chosen on validation)" if point else ""
    ax.set_title(f"{title}{chosen}", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
