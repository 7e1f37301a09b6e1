"""Export stage: the trained model (and the pruned one, when the prune stage made and accepted it) as
deployable files, each checked against PyTorch on the test split and timed, all replaced together in
``models/export``. Every file computes the predictions evaluate scored, flip TTA included when evaluate
chose it. Files that fail a check are left out and listed with the reason (``classiflow.export.pipeline``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from classiflow.atomic import atomic_dir, write_json, write_text
from classiflow.checkpoint import check_same_data, load_checkpoint
from classiflow.config import Params
from classiflow.cpu import usable_cores
from classiflow.data.prepared import PreparedData, load_prepared
from classiflow.errors import ClassiflowError
from classiflow.explain import save_explainable
from classiflow.export import report as export_tables
from classiflow.export import runtime
from classiflow.export.convert import INPUT_NAME, OUTPUT_NAME
from classiflow.export.params import ExportParams
from classiflow.export.pipeline import Images, Source, export_model
from classiflow.layout import SPEC_FILE, Layout
from classiflow.prune.saving import load_pruned as load_pruned_model
from classiflow.stages.evaluate import chosen_point, temperature, tta_used
from classiflow.stages.result import NO_REPORT, Report, StageResult, numbers
from classiflow.tensors import WithPreprocessing, tta_name

Loader = Callable[[Path], tuple[nn.Module, dict[str, Any]]]
CALIBRATION_SEED = 0
log = logging.getLogger("classiflow.export")


def _pruned_variant(path: Path, data: PreparedData, load_pruned: Loader | None, strict: bool) -> tuple | None:
    """The pruned model, unless there is none, it is the trained model (``prune.method: none``) or the prune
    stage rejected it for losing too much accuracy (which fails the stage under ``export.strict``)."""
    if not path.exists():
        return None
    model, payload = (load_pruned or load_pruned_model)(path)
    check_same_data(path, payload, data.data_hash, "the stages that made it")
    pruning = payload.get("pruning", {})
    if pruning.get("method") == "none":
        return None
    if pruning.get("status", "accepted") != "accepted":
        if strict:
            raise ClassiflowError(f"{path}: the prune stage rejected it ({pruning.get('reason')}); export.strict")
        log.warning("export: no pruned variant: the prune stage rejected it (%s)", pruning.get("reason"))
        return None
    return "pruned", model, payload, path


def _sources(layout: Layout, data: PreparedData, load_pruned: Loader | None, strict: bool) -> tuple[list[Source], dict]:
    model, payload = load_checkpoint(layout.model)
    check_same_data(layout.model, payload, data.data_hash, "the stages that made it")
    loaded = [("trained", model, payload, layout.model)]
    pruned = _pruned_variant(layout.pruned_model, data, load_pruned, strict)
    loaded += [pruned] if pruned else []
    tta = tta_used(layout)
    sources = [
        Source(label, WithPreprocessing(net.eval(), p["mean"], p["std"], tta).eval(), path)
        for label, net, p, path in loaded
    ]
    return sources, payload


def _calibration(data: PreparedData, count: int) -> np.ndarray:
    train = data.images["train"]
    rng = np.random.default_rng(CALIBRATION_SEED)
    pick = np.sort(rng.choice(len(train), size=min(count, len(train)), replace=False))
    return runtime.pixels(train[pick])


def _preprocessing(
    payload: dict,
    data: PreparedData,
    sources: list[Source],
    rows: list[dict],
    temperature: float = 1.0,
    operating_point: dict | None = None,
    explain: dict | None = None,
) -> dict:
    """What a deployment needs besides the file: the input it takes, what the outputs mean, which files
    passed their checks (the only ones a deployment may load)."""
    files: dict[str, dict[str, str]] = {}
    for row in rows:
        if row.get("status") == "verified":
            files.setdefault(row["model"], {})[row["format"]] = row["file"]
    return {
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", data.channels, data.image_size, data.image_size],
            "dtype": "float32",
            "layout": "NCHW",
            "range": [0, 255],
            "note": "raw pixel values; the files normalise with mean/std themselves",
        },
        "tta": tta_name(sources[0].module.tta),
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(payload["classes"])], "meaning": "logits"},
        "temperature": temperature,  # probabilities: softmax(logits / temperature)
        "operating_point": operating_point,  # thresholds for the answer (classiflow.operating), or null
        "explain": explain,  # the trained network's weights for Grad-CAM (classiflow.explain), or null
        "mean": list(payload["mean"]),
        "std": list(payload["std"]),
        "classes": list(payload["classes"]),
        "image_size": data.image_size,
        "resize": data.resize,
        "channels": data.channels,
        "model": payload["model"]["name"],
        "data_hash": data.data_hash,
        "files": files,
        "rejected": {row["file"]: row["reason"] for row in rows if row.get("status") == "rejected"},
    }


def run(layout: Layout, params: Params, report: Report = NO_REPORT) -> StageResult:
    metrics = export(layout, params.export)
    flat = flat_metrics(metrics)
    headline = {k.replace("/", "_"): v for k, v in flat.items() if k.endswith(("latency_ms_median", "accuracy"))}
    lines = [
        f"export: {model:<8} {fmt:<18} accuracy {row['accuracy']:.4f}, batch-1 {row['latency_ms_median']:.3f} ms, "
        f"{row['images_per_second']:.0f} img/s"
        for model, formats in metrics.items()
        if isinstance(formats, dict)
        for fmt, row in formats.items()
        if row.get("status") != "rejected"  # the stage already warned, with the reason
    ]
    return StageResult(
        metrics,
        metrics=flat,
        tags=rejection_tags(metrics) | {"export.tta": metrics["tta"]},
        artifacts={layout.export_report: "", layout.export_metrics: ""},
        pipeline_metrics=headline,
        summary=lines,
    )


def rejection_tags(metrics: dict) -> dict[str, str]:
    """``rejected.<file>`` = why it was left out (MLflow tag values are capped at 5000 characters)."""
    return {f"rejected.{name}": reason[:5000] for name, reason in export_tables.rejected(metrics).items()}


def flat_metrics(metrics: dict) -> dict[str, float]:
    """``trained/onnx/latency_ms_median``-style keys: one MLflow metric per model, format and figure."""
    return {
        f"{model}/{fmt}/{key}": value
        for model, formats in metrics.items()
        if isinstance(formats, dict)
        for fmt, values in formats.items()
        for key, value in numbers(values).items()
    }


def export(layout: Layout, export_params: ExportParams, load_pruned: Loader | None = None) -> dict:
    """Every configured file of the trained (and accepted pruned) model, verified and timed, with its report;
    ``load_pruned`` defaults to ``classiflow.prune.saving.load_pruned``."""
    if not layout.model.exists():
        raise ClassiflowError(f"{layout.model}: no trained model; run the train stage first")
    data = load_prepared(layout.prepared, ("train", "test"))
    if not len(data.images["test"]):
        raise ClassiflowError(f"{layout.prepared}: the test split is empty; nothing to check the exports on")
    sources, payload = _sources(layout, data, load_pruned, export_params.strict)
    images = Images(data.images["test"], data.labels["test"], _calibration(data, export_params.calibration_images))
    threads = export_params.threads or usable_cores()
    rows: list[dict] = []
    with atomic_dir(layout.export_dir) as tmp:
        for source in sources:
            rows += export_model(source, tmp, export_params, images, threads)
        explain = save_explainable(sources[0].module.net, payload["model"], tmp)
        spec = _preprocessing(payload, data, sources, rows, temperature(layout), chosen_point(layout), explain)
        write_json(tmp / SPEC_FILE, spec)
    text = export_tables.markdown(rows, threads, export_params.throughput_batch, len(images.labels))
    write_text(layout.export_report, text)
    metrics = export_tables.metrics(rows, threads) | {"tta": tta_name(sources[0].module.tta)}
    write_json(layout.export_metrics, metrics)
    return metrics
