"""Prune stage: prune the trained model, fine-tune it back, and measure what that traded.

Reads models/model.pt and the prepared splits; writes models/pruned.pt, metrics/prune.json and,
when ``prune.sweep`` lists amounts, the accuracy/latency-vs-sparsity curve in reports/. A pruned model
that loses more than ``prune.max_accuracy_drop`` points is still written and reported, marked rejected,
so the export stage neither ships it as the pruned variant nor offers it to serving.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Callable

import torch
from torch import nn

from classiflow.atomic import write_json
from classiflow.augment import build_augment, load_policy
from classiflow.checkpoint import check_same_data, load_checkpoint
from classiflow.config import Params, TrainParams
from classiflow.data.prepared import PreparedData, load_prepared
from classiflow.layout import Layout
from classiflow.prune.measure import accuracy, compressed_size, count_nonzero, count_parameters, file_size, latency_ms
from classiflow.prune.params import FINETUNE_LR_SHARE, PruneParams
from classiflow.prune.saving import save_pruned
from classiflow.prune.schedule import prune_steps
from classiflow.prune.structured import check_structured
from classiflow.prune.sweep import sweep, write_sweep
from classiflow.prune.unstructured import detach_masked_weights, make_permanent, sparsity
from classiflow.stages.evaluate import tta_used
from classiflow.stages.result import NO_REPORT, Report, StageResult, numbers
from classiflow.tensors import to_nchw, tta_name
from classiflow.training import fit, select_device
from classiflow.training.loop import Inputs

LATENCY_THREADS = 1  # the steady figure to compare by; a busy machine's other cores add noise
log = logging.getLogger("classiflow.prune")
HEADLINE = ("test_accuracy_after", "accuracy_drop_points", "speedup", "params_after", "sparsity")


def finetune_config(train: TrainParams, prune: PruneParams) -> TrainParams:
    """The train section with the fine-tuning schedule: a short cosine from ``finetune_lr``
    (by default a share of ``train.lr``, so that an AdamW recipe is not fine-tuned at an SGD rate).

    Warm-up and early stopping are off: the weights are already trained, and a run of one or two
    epochs has no room for either. Resuming is off because the pruned shapes change every step.
    ``prune.finetune_epochs`` is meant as given, so the train section's step floor does not apply.
    """
    return train.model_copy(
        update={
            "epochs": prune.finetune_epochs,
            "min_steps": 0,
            "lr": prune.finetune_lr or train.lr * FINETUNE_LR_SHARE,
            "scheduler": "cosine",
            "warmup_epochs": 0.0,
            "early_stopping": None,
            "resume": False,
        }
    )


def _finetune_inputs(layout: Layout, params: Params, data: PreparedData) -> Inputs:
    resolved = load_policy(layout.augmented, params.augment, data.data_hash)
    augment = build_augment(resolved, len(data.classes), channels=data.channels, image_size=data.image_size)
    return Inputs(augment=augment, augment_seed=params.augment.seed)


def verdict(method: str, drop: float, budget: float) -> tuple[str, str]:
    """(status, reason) of a pruned model that lost ``drop`` points of test accuracy."""
    if method == "none":
        return "none", "prune.method is none"
    if drop > budget:
        return "rejected", f"lost {drop:.2f} points of test accuracy > prune.max_accuracy_drop {budget:g}"
    return "accepted", f"lost {drop:.2f} points of test accuracy <= prune.max_accuracy_drop {budget:g}"


def _measure(model: nn.Module, score: Callable[[nn.Module], float], shape: tuple, repeats: int) -> dict:
    latency = latency_ms(model, shape, repeats, threads=LATENCY_THREADS)
    return {
        "params": count_parameters(model),
        "nonzero_params": count_nonzero(model),
        "test_accuracy": score(model),
        "latency_ms_median": latency["median"],
        "latency_ms_p99": latency["p99"],
    }


def _finetune_reporter(report: Report) -> Callable[[dict], None]:
    step = itertools.count(1)

    def on_epoch_end(stats: dict) -> None:
        metrics = {f"finetune_{k}": v for k, v in stats.items() if k in ("train_loss", "val_loss", "val_accuracy")}
        report.metrics(metrics, step=next(step))
        log.info("prune: fine-tune epoch %d, val accuracy %.4f", stats["epoch"], stats["val_accuracy"])

    return on_epoch_end


def run(layout: Layout, params: Params, report: Report = NO_REPORT) -> StageResult:
    original, ckpt = load_checkpoint(layout.model)
    data = load_prepared(layout.prepared)
    check_same_data(layout.model, ckpt, data.data_hash)
    pp, on_epoch_end = params.prune, _finetune_reporter(report)
    if pp.method == "structured":
        check_structured(original)
    device = select_device(params.train.device)
    test_images, test_labels = to_nchw(data.images["test"]), data.labels["test"]
    shape = (1, data.channels, data.image_size, data.image_size)

    tta = tta_used(layout)

    def score(model: nn.Module) -> float:
        mean, std = ckpt["mean"], ckpt["std"]
        return accuracy(model, test_images, test_labels, mean, std, device, params.evaluate.batch_size, tta)

    model = copy.deepcopy(original)
    finetune = pp.finetune_epochs > 0 and pp.method != "none"
    cfg = finetune_config(params.train, pp)
    inputs = _finetune_inputs(layout, params, data) if finetune else None
    tune = (lambda m: fit(detach_masked_weights(m), data, cfg, on_epoch_end, inputs)) if finetune else None
    steps = _prune(model, original, pp, torch.randn(shape), tune)
    before = _measure(original, score, shape, pp.latency_repeats)
    after = _measure(model, score, shape, pp.latency_repeats)
    drop = 100.0 * (before["test_accuracy"] - after["test_accuracy"])
    status, reason = verdict(pp.method, drop, pp.max_accuracy_drop)
    if status == "rejected":
        log.warning("prune: rejected the pruned model: %s (not exported, not served)", reason)
    pruning = {
        "method": pp.method,
        "amount": pp.amount,
        "steps": pp.steps,
        "finetune_epochs": pp.finetune_epochs if finetune else 0,
        "finetune_lr": cfg.lr if finetune else None,
        "status": status,
        "reason": reason,
    }
    save_pruned(
        layout.pruned_model,
        model,
        ckpt["model"],
        data.meta,
        {"pruning": pruning, "source_val_accuracy": ckpt.get("val_accuracy")},
    )
    metrics = _metrics(layout, pp, pruning, before, after, sparsity(model, original), sparsity(original))
    metrics["tta"] = tta_name(tta)
    write_json(layout.prune_metrics, metrics)

    sweep_rows = sweep(original, pp.sweep, score, shape, pp.latency_repeats) if pp.sweep else []
    label = (f"{pp.method}+finetune" if finetune else pp.method) + (" (rejected)" if status == "rejected" else "")
    chosen = {**after, "method": label, "amount": pp.amount, "sparsity": metrics["sparsity"]}
    unpruned = {**before, "sparsity": metrics["sparsity_before"]}
    title = f"{ckpt['model']['name']} on {data.meta.get('dataset', 'data')}"
    write_sweep(layout.prune_sweep_csv, layout.prune_sweep_png, sweep_rows, unpruned, chosen, title)
    value = {**metrics, "steps_history": steps, "sweep": sweep_rows, "device": str(device), "data_hash": data.data_hash}
    return _result(layout, value)


def _prune(model: nn.Module, original: nn.Module, pp: PruneParams, example: torch.Tensor, tune) -> list[dict]:
    """Prune ``model`` in place in ``pp.steps`` increments, fine-tuning after each when ``tune`` is given."""
    steps = []
    for step in prune_steps(model, pp.method, pp.amount, pp.steps, pp.layers, example):
        row = {"step": step, "sparsity": sparsity(model, original)}
        if tune is not None:
            row["val_accuracy"] = tune(model).best_val_accuracy
        steps.append(row)
    make_permanent(model)
    return steps


def _metrics(layout: Layout, pp: PruneParams, pruning: dict, before: dict, after: dict, now: float, was: float) -> dict:
    metrics: dict = {**pruning, "sparsity": now, "sparsity_before": was}
    for key in ("params", "nonzero_params", "test_accuracy", "latency_ms_median", "latency_ms_p99"):
        metrics[f"{key}_before"], metrics[f"{key}_after"] = before[key], after[key]
    return metrics | {
        "size_bytes_before": file_size(layout.model),
        "size_bytes_after": file_size(layout.pruned_model),
        "compressed_bytes_before": compressed_size(layout.model),
        "compressed_bytes_after": compressed_size(layout.pruned_model),
        "accuracy_drop_points": 100.0 * (before["test_accuracy"] - after["test_accuracy"]),
        "max_accuracy_drop": pp.max_accuracy_drop,
        "speedup": before["latency_ms_median"] / max(after["latency_ms_median"], 1e-9),
        "latency_threads": LATENCY_THREADS,
    }


def _result(layout: Layout, result: dict) -> StageResult:
    files = (layout.prune_metrics, layout.prune_sweep_csv, layout.prune_sweep_png)
    r = result
    return StageResult(
        result,
        metrics={k: v for k, v in numbers(result).items() if k != "amount"},
        tags={"data_hash": r["data_hash"], "prune.method": r["method"], "prune.status": r["status"],
              "prune.reason": r["reason"]},
        artifacts={path: "" for path in files if path.exists()},
        pipeline_metrics={f"prune_{k}": r[k] for k in HEADLINE},
        summary=[
            f"prune: {r['method']} {r['amount']:.2f} -> {r['params_after']} parameters (from {r['params_before']}), "
            f"test accuracy {r['test_accuracy_after']:.4f} ({r['accuracy_drop_points']:.2f} points lost), "
            f"batch-1 {r['speedup']:.2f}x faster"
        ],
    )  # fmt: skip
