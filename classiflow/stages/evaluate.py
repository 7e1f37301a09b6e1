"""Evaluate stage: the trained model on the held-out test split, never on training data.

Flip test-time augmentation (with ``evaluate.tta_shift``, also two shifted views and their mirrors) is decided
here, on the validation split, and only for a model that was trained on mirrored images (a digit never seen
mirrored is not recognised better by averaging in its mirror image).
The headline accuracy is that of the chosen predictions, which the export stage builds into every deployed
file, so evaluate, the registry, the promotion gate and serving all score the same predictions; plain and
TTA accuracy are reported side by side. A softmax temperature is fitted on the validation split's chosen
predictions and checked on test (expected calibration error before and after); the export stage hands it to
serving.
"""

from __future__ import annotations

import logging
import time

import torch

from classiflow.atomic import read_json, write_json
from classiflow.calibration import calibrate, plot_reliability, write_reliability_csv
from classiflow.checkpoint import check_same_data, load_checkpoint, trained_with_flip
from classiflow.config import EvaluateParams, Params
from classiflow.curves import plot_curves, pr_curves, write_curves_csv
from classiflow.data.prepared import load_prepared
from classiflow.errors import ClassiflowError
from classiflow.evaluation import score_and_report
from classiflow.explain import gallery, grad_cam, plot_gallery, plot_note
from classiflow.layout import Layout
from classiflow.operating import check_normal, choose, met, summarize
from classiflow.stages.result import NO_REPORT, Report, StageResult
from classiflow.tensors import TTA, Normalizer, predict_views, to_nchw, tta_name
from classiflow.training import select_device


def choose_tta(
    mode: bool | str, flip_trained: bool, val_plain: float, val_tta: float | None, name: str = "flip"
) -> tuple[bool, str]:
    """``evaluate.tta`` (auto, true, false) -> (use TTA, why); ``name`` names its views."""
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
        return True, f"validation accuracy {val_tta:.2%} with {name} TTA vs {val_plain:.2%} without"
    return False, f"{name} TTA does not help on validation ({val_tta:.2%} vs {val_plain:.2%} without)"


def tta_of(metrics: dict) -> TTA | None:
    """The test-time augmentation recorded in evaluate's metrics (None: plain predictions)."""
    tta = metrics.get("tta", {})
    return TTA(tta.get("shift", 0)) if tta.get("used") else None


def tta_used(layout: Layout) -> TTA | None:
    """The choice evaluate made, for the stages that deploy or re-score the model."""
    if not layout.eval_metrics.exists():
        raise ClassiflowError(f"{layout.eval_metrics}: missing; run the evaluate stage first")
    return tta_of(read_json(layout.eval_metrics))


def temperature(layout: Layout) -> float:
    """The softmax temperature evaluate fitted (1.0 for metrics written before calibration existed)."""
    return float(read_json(layout.eval_metrics).get("calibration", {}).get("temperature", 1.0))


def chosen_point(layout: Layout) -> dict | None:
    """The thresholds evaluate chose on validation (``classiflow.operating``), or None under no policy."""
    point = read_json(layout.eval_metrics).get("operating_point", {})
    return {k: point[k] for k in ("policy", "target", "normal", "thresholds")} if "thresholds" in point else None


log = logging.getLogger("classiflow.evaluate")
HEADLINE = ("accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1", "test_loss")
CALIBRATION = ("temperature", "ece_before", "ece_after", "nll_before", "nll_after", "note")


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean()) if len(labels) else 0.0


def operating_point(layout: Layout, ev: EvaluateParams, probs: dict, labels: dict, classes: list[str], title) -> dict:
    """Precision-recall curves on test and, under a threshold policy, the thresholds chosen on validation with
    what they do on both splits (``classiflow.operating``)."""
    point = None
    if ev.threshold_policy != "none":
        point = choose(probs["val"], labels["val"], classes, ev.threshold_policy, ev.threshold_target, ev.normal_class)
    curves = pr_curves(probs["test"], labels["test"], classes, ev.normal_class)
    write_curves_csv(layout.pr_curves_csv, curves)
    plot_curves(layout.pr_curves_png, probs["test"], labels["test"], classes, curves, point, title)
    out = {"normal_class": ev.normal_class, "average_precision": {k: c["average_precision"] for k, c in curves.items()}}
    if point is None:
        return out
    found = {split: summarize(probs[split], labels[split], classes, point) for split in ("val", "test")}
    return out | point.as_dict() | found | {f"met_on_{k}": met(v, point) for k, v in found.items()}


def explain(layout: Layout, model, normalizer, images, labels, probs, classes: list[str], device) -> int:
    """The Grad-CAM gallery (an optional report: a model it cannot explain is logged and skipped, and the image
    says why)."""
    rows = gallery(labels, probs)
    if not rows:
        plot_note(layout.gradcam_png, "No Grad-CAM gallery: the test split is empty")
        return 0
    predicted = torch.from_numpy(probs[rows].argmax(1)).to(device)
    try:
        cams = grad_cam(model, normalizer(to_nchw(images[rows]).to(device)), predicted)
    except ClassiflowError as err:
        log.warning("evaluate: no Grad-CAM gallery: %s", err)
        plot_note(layout.gradcam_png, f"No Grad-CAM gallery: {err}")
        return 0
    pairs = list(zip(rows, predicted.tolist(), strict=True))
    names = [f"{classes[labels[r]]} -> {classes[p]} {probs[r].max():.2f}" for r, p in pairs]
    plot_gallery(layout.gradcam_png, images[rows], cams, names, [labels[r] != p for r, p in pairs])
    return len(rows)


def run(layout: Layout, params: Params, report: Report = NO_REPORT) -> StageResult:
    model, ckpt = load_checkpoint(layout.model)
    check_normal(params.evaluate.normal_class, ckpt["classes"])
    data = load_prepared(layout.prepared, ("val", "test"))
    check_same_data(layout.model, ckpt, data.data_hash)
    device = select_device(params.train.device)
    model.to(device)
    normalizer = Normalizer(ckpt["mean"], ckpt["std"]).to(device)
    flip_trained, batch = trained_with_flip(ckpt), params.evaluate.batch_size
    tta = TTA(params.evaluate.tta_shift) if flip_trained else None
    views = {}
    start = time.perf_counter()
    for split in ("val", "test"):
        views[split] = predict_views(model, to_nchw(data.images[split]), normalizer, device, batch, tta)
    seconds = time.perf_counter() - start
    labels = {split: torch.from_numpy(data.labels[split]) for split in views}
    scores = {
        split: [None if v is None else _accuracy(v, labels[split]) for v in pair] for split, pair in views.items()
    }
    used, reason = choose_tta(params.evaluate.tta, flip_trained, *scores["val"], tta_name(tta))
    logits = views["test"][1 if used else 0]
    calibration = calibrate((views["val"][1 if used else 0], labels["val"]), (logits, labels["test"]),
                            params.evaluate.calibrate)  # fmt: skip
    if calibration["note"]:
        log.warning("evaluate: %s", calibration["note"])
    y_true, y_pred = data.labels["test"], logits.argmax(1).numpy()
    title = f"{ckpt['model']['name']} on {data.meta['dataset']}" + (f" ({tta.name} TTA)" if used else "")
    metrics, matrix = score_and_report(layout, y_true, y_pred, ckpt["classes"], title)
    metrics["accuracy_plain"], metrics["accuracy_tta"] = scores["test"]
    metrics["tta"] = {
        "mode": params.evaluate.tta,
        "used": used,
        "views": tta_name(tta),  # the candidate's, used or not
        "shift": tta.shift if tta else 0,
        "reason": reason,
        "val_accuracy_plain": scores["val"][0],
        "val_accuracy_tta": scores["val"][1],
    }
    views_each = tta.views if tta else 1
    passes = views_each * (len(y_true) + len(data.labels["val"]))
    metrics["inference_ms_per_image"] = 1000.0 * seconds / max(passes, 1) * (views_each if used else 1)
    metrics["model_bytes"] = layout.model.stat().st_size
    metrics["test_loss"] = float(torch.nn.functional.cross_entropy(logits, labels["test"]))
    metrics["calibration"] = {k: calibration[k] for k in CALIBRATION}
    write_reliability_csv(layout.reliability_csv, calibration)
    plot_reliability(layout.reliability_png, calibration, f"{title}: test calibration")
    chosen = {split: views[split][1 if used else 0] for split in views}
    probs = {split: torch.softmax(v.double() / calibration["temperature"], 1).numpy() for split, v in chosen.items()}
    points = operating_point(layout, params.evaluate, probs, data.labels, ckpt["classes"], title)
    metrics["operating_point"] = points
    metrics["explained"] = 0
    if not params.evaluate.explain:
        plot_note(layout.gradcam_png, "No Grad-CAM gallery: evaluate.explain is false")
    else:
        metrics["explained"] = explain(layout, model, normalizer, data.images["test"], data.labels["test"],
                                       probs["test"], ckpt["classes"], device)  # fmt: skip
    metrics["pretrained_features"] = _frozen(layout, params, data.data_hash, device)
    write_json(layout.eval_metrics, metrics)
    return _result(layout, {**metrics, "data_hash": data.data_hash, "confusion_matrix": matrix.tolist()})


def _frozen(layout: Layout, params: Params, data_hash: str, device) -> dict | None:
    """Linear probe and kNN on the pretrain stage's frozen features, when it made an encoder of this data."""
    if not layout.encoder.exists():
        return None
    from classiflow.pretrain.probe import frozen_scores, load_encoder

    encoder, spec = load_encoder(layout)
    if spec.get("data_hash") != data_hash:
        log.warning("evaluate: no frozen-feature scores: the encoder was pretrained on other data; rerun pretrain")
        return None
    data = load_prepared(layout.prepared, ("train", "test"))
    return frozen_scores(encoder, spec, data, params.pretrain.knn_k, device)


def _result(layout: Layout, metrics: dict) -> StageResult:
    headline = {f"test_{k}" if not k.startswith("test_") else k: metrics[k] for k in HEADLINE}
    views = {f"test_{k}": metrics[k] for k in ("accuracy_plain", "accuracy_tta") if metrics[k] is not None}
    per_class = {
        f"{name}_{m}": v for name, vals in metrics["per_class"].items() for m, v in vals.items() if m != "support"
    }
    tta, calibration = metrics["tta"], metrics["calibration"]
    views |= {f"test_{k}" if k.startswith(("ece", "nll")) else k: calibration[k] for k in CALIBRATION if k != "note"}
    files = (
        layout.eval_metrics, layout.confusion_matrix_png, layout.confusion_matrix_csv, layout.confusion_normalized_csv,
        layout.per_class, layout.reliability_png, layout.reliability_csv, layout.pr_curves_png, layout.pr_curves_csv,
        layout.gradcam_png,
    )  # fmt: skip
    frozen = metrics["pretrained_features"] or {}
    views |= {f"frozen_{k}": frozen[k] for k in ("linear_probe_accuracy", "knn_accuracy") if k in frozen}
    point = metrics["operating_point"]
    if "test" in point:
        views |= {"test_uncertain": point["test"]["uncertain"], "operating_point_met": float(point["met_on_test"])}
        views |= {"test_false_alarm": point["test"]["false_alarm"]} if "false_alarm" in point["test"] else {}
    return StageResult(
        metrics,
        metrics=headline | views | per_class,
        tags={
            "data_hash": metrics["data_hash"],
            "tta": tta_name(tta_of(metrics)),
            "tta_reason": tta["reason"],
        },
        artifacts=dict.fromkeys(files, ""),
        pipeline_metrics=headline | views,
        summary=[
            f"evaluate: test accuracy {metrics['accuracy']:.4f}, balanced {metrics['balanced_accuracy']:.4f}, "
            f"macro F1 {metrics['macro_f1']:.4f} on {metrics['test_size']} images",
            f"evaluate: temperature {calibration['temperature']:.3f}, test ECE {calibration['ece_before']:.4f} -> "
            f"{calibration['ece_after']:.4f}",
            *_point_lines(point),
            *(
                [
                    f"evaluate: pretrained features, frozen: linear probe {frozen['linear_probe_accuracy']:.4f}, "
                    f"kNN {frozen['knn_accuracy']:.4f} on test"
                ]
                if frozen
                else []
            ),
        ],
    )


def _point_lines(point: dict) -> list[str]:
    if "test" not in point:
        return []
    test, key = point["test"], "caught" if point["normal"] else "recall"
    lowest = min((row[key], c) for c, row in test["per_class"].items() if c != point["normal"])
    alarms = f", false alarms {test['false_alarm']:.4f}" if "false_alarm" in test else ""
    return [
        f"evaluate: {point['policy']} {point['target']:g} (thresholds chosen on validation): on test lowest {key} "
        f"{lowest[0]:.4f} ({lowest[1]}){alarms}, uncertain {test['uncertain']:.4f}; target "
        f"{'met' if point['met_on_test'] else 'MISSED'} on test"
    ]
