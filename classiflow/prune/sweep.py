"""The trade-off curve: accuracy and latency against sparsity, unstructured and structured side by side.

Sweep points are pruned in one shot WITHOUT fine-tuning (fine-tuning each would cost a training
run per point), so the curve shows how much each method damages the model as it stands: a lower
bound on the accuracy that fine-tuning (the prune stage's own ``finetune_epochs``) gets back.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from classiflow.atomic import atomic_path, write_text
from classiflow.errors import ClassiflowError
from classiflow.prune.measure import count_nonzero, count_parameters, latency_ms
from classiflow.prune.schedule import prune_steps
from classiflow.prune.structured import check_structured
from classiflow.prune.unstructured import make_permanent, sparsity

log = logging.getLogger("classiflow.prune")
FIELDS = ("method", "amount", "sparsity", "params", "nonzero_params", "test_accuracy", "latency_ms_median")
SWEEP_METHODS = ("global_unstructured", "structured")


def sweep(
    original: nn.Module,
    amounts: list[float],
    score: Callable[[nn.Module], float],
    input_shape: tuple[int, ...],
    repeats: int,
) -> list[dict]:
    """One row per method and amount; ``score`` gives a model's test accuracy."""
    methods = list(SWEEP_METHODS)
    try:
        check_structured(original)
    except ClassiflowError as err:
        log.warning("prune sweep: structured skipped: %s", err)
        methods.remove("structured")
    rows = []
    for method in methods:
        for amount in amounts:
            model = copy.deepcopy(original).cpu()
            for _ in prune_steps(model, method, amount, example_inputs=torch.randn(input_shape)):
                pass
            make_permanent(model)
            rows.append(
                {
                    "method": method,
                    "amount": amount,
                    "sparsity": sparsity(model, original),
                    "params": count_parameters(model),
                    "nonzero_params": count_nonzero(model),
                    "test_accuracy": score(model),
                    "latency_ms_median": latency_ms(model, input_shape, repeats)["median"],
                }
            )
    return rows


def write_sweep(csv_path: Path, png_path: Path, rows: list[dict], baseline: dict, chosen: dict, title: str) -> None:
    """The CSV for DVC plots and a PNG: sweep curves, the unpruned model as a dashed line and the stage's own
    (fine-tuned) model as a star, so both files exist and say something even when ``prune.sweep`` is empty."""
    table = [{**baseline, "method": "unpruned", "amount": 0.0}, *rows, chosen]
    lines = [",".join(FIELDS)]
    lines += [",".join(f"{r[k]:.6g}" if isinstance(r[k], float) else str(r[k]) for k in FIELDS) for r in table]
    write_text(csv_path, "\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in (
        (axes[0], "test_accuracy", "test accuracy"),
        (axes[1], "latency_ms_median", "batch-1 CPU latency (ms, median)"),
    ):
        for method in dict.fromkeys(r["method"] for r in rows):
            points = sorted((r["sparsity"], r[key]) for r in rows if r["method"] == method)
            ax.plot(*zip(*points, strict=True), marker="o", label=method)
        ax.axhline(baseline[key], color="gray", linestyle="--", label="unpruned")
        ax.plot([chosen["sparsity"]], [chosen[key]], marker="*", markersize=14, linestyle="", label=chosen["method"])
        ax.set_xlabel("sparsity (share of prunable weights zeroed or removed)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{title}: sweep without fine-tuning, star = this stage's model")
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
