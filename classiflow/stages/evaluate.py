"""Evaluate stage: the trained model on the held-out test split, never on training data.

Flip test-time augmentation is decided here, on the validation split, and only for a model that was trained
on mirrored images (a digit never seen mirrored is not recognised better by averaging in its mirror image).
The headline accuracy is that of the chosen predictions, which the export stage builds into every deployed
file, so evaluate, the registry, the promotion gate and serving all score the same predictions; plain and
TTA accuracy are reported side by side.
"""

from __future__ import annotations

import time

import torch

from classiflow.atomic import read_json, write_json
from classiflow.checkpoint import check_same_data, load_checkpoint, trained_with_flip
from classiflow.config import Params
from classiflow.data.prepared import load_prepared
from classiflow.errors import ClassiflowError
from classiflow.evaluation import score_and_report
from classiflow.layout import Layout
from classiflow.stages.result import NO_REPORT, Report, StageResult
from classiflow.tensors import Normalizer, mirror_average, predict_views, to_nchw
from classiflow.training import select_device


def choose_tta(mode: bool | str, flip_trained: bool, val_plain: float, val_tta: float | None) -> tuple[bool, str]:
    """``evaluate.tta`` (auto, true, false) -> (use flip TTA, why)."""
    if mode is False:
        return False, "evaluate.tta is false"
    if not flip_trained:
        if mode is True:
            raise ClassiflowError(
                "evaluate.tta is true, but the model was trained without horizontal flips (augment.flip resolved "
                "to false): it would be scored on mirrored images it never saw; use auto or false"
            )
        return False, "the model was not trained with horizontal flips"
    if mode is True:
        return True, "evaluate.tta is true"
    if val_tta is not None and val_tta > val_plain:
        return True, f"validation accuracy {val_tta:.2%} with flip TTA vs {val_plain:.2%} without"
    return False, f"flip TTA does not help on validation ({val_tta:.2%} vs {val_plain:.2%} without)"


def tta_used(layout: Layout) -> bool:
    """The choice evaluate made, for the stages that deploy or re-score the model."""
    if not layout.eval_metrics.exists():
        raise ClassiflowError(f"{layout.eval_metrics}: missing; run the evaluate stage first")
    return bool(read_json(layout.eval_metrics).get("tta", {}).get("used", False))


HEADLINE = ("accuracy", "macro_precision", "macro_recall", "macro_f1", "test_loss")


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean()) if len(labels) else 0.0


def run(layout: Layout, params: Params, report: Report = NO_REPORT) -> StageResult:
    model, ckpt = load_checkpoint(layout.model)
    data = load_prepared(layout.prepared, ("val", "test"))
    check_same_data(layout.model, ckpt, data.data_hash)
    device = select_device(params.train.device)
    model.to(device)
    normalizer = Normalizer(ckpt["mean"], ckpt["std"]).to(device)
    flip_trained, batch = trained_with_flip(ckpt), params.evaluate.batch_size
    views = {}
    start = time.perf_counter()
    for split in ("val", "test"):
        plain, mirrored = predict_views(model, to_nchw(data.images[split]), normalizer, device, batch, flip_trained)
        views[split] = (plain, mirror_average(plain, mirrored) if flip_trained else None)
    seconds = time.perf_counter() - start
    labels = {split: torch.from_numpy(data.labels[split]) for split in views}
    scores = {
        split: [None if v is None else _accuracy(v, labels[split]) for v in pair] for split, pair in views.items()
    }
    used, reason = choose_tta(params.evaluate.tta, flip_trained, *scores["val"])
    logits = views["test"][1 if used else 0]
    y_true, y_pred = data.labels["test"], logits.argmax(1).numpy()
    title = f"{ckpt['model']['name']} on {data.meta['dataset']}" + (" (flip TTA)" if used else "")
    metrics, matrix = score_and_report(layout, y_true, y_pred, ckpt["classes"], title)
    metrics["accuracy_plain"], metrics["accuracy_tta"] = scores["test"]
    metrics["tta"] = {
        "mode": params.evaluate.tta,
        "used": used,
        "reason": reason,
        "val_accuracy_plain": scores["val"][0],
        "val_accuracy_tta": scores["val"][1],
    }
    passes = (2 if flip_trained else 1) * (len(y_true) + len(data.labels["val"]))
    metrics["inference_ms_per_image"] = 1000.0 * seconds / max(passes, 1) * (2 if used else 1)
    metrics["model_bytes"] = layout.model.stat().st_size
    metrics["test_loss"] = float(torch.nn.functional.cross_entropy(logits, labels["test"]))
    write_json(layout.eval_metrics, metrics)
    return _result(layout, {**metrics, "data_hash": data.data_hash, "confusion_matrix": matrix.tolist()})


def _result(layout: Layout, metrics: dict) -> StageResult:
    headline = {f"test_{k}" if not k.startswith("test_") else k: metrics[k] for k in HEADLINE}
    views = {f"test_{k}": metrics[k] for k in ("accuracy_plain", "accuracy_tta") if metrics[k] is not None}
    per_class = {
        f"{name}_{m}": v for name, vals in metrics["per_class"].items() for m, v in vals.items() if m != "support"
    }
    tta = metrics["tta"]
    files = (layout.eval_metrics, layout.confusion_matrix_png, layout.confusion_matrix_csv, layout.per_class)
    return StageResult(
        metrics,
        metrics=headline | views | per_class,
        tags={"data_hash": metrics["data_hash"], "tta": "flip" if tta["used"] else "none", "tta_reason": tta["reason"]},
        artifacts=dict.fromkeys(files, ""),
        pipeline_metrics=headline | views,
        summary=[
            f"evaluate: test accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f} "
            f"on {metrics['test_size']} images"
        ],
    )
