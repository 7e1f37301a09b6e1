"""Register stage: the model, its exports, predictions and card as a registered MLflow model version.

It is the one stage whose work is MLflow itself, so its runner lives here; promotion is in ``aliases``."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import torch
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from classiflow.atomic import read_json, write_json, write_text
from classiflow.checkpoint import load_checkpoint
from classiflow.config import Params
from classiflow.data.prepared import load_prepared
from classiflow.errors import ClassiflowError
from classiflow.layout import Layout
from classiflow.model_card import model_card
from classiflow.stages.evaluate import tta_of
from classiflow.stages.export import rejection_tags
from classiflow.stages.result import NO_REPORT, Report, StageResult
from classiflow.tensors import WithPreprocessing, tta_name
from classiflow.tracking.aliases import LATENCY_TAG, OPERATING_TAG, PREDICTIONS
from classiflow.tracking.refs import registered_name
from classiflow.tracking.store import git_commit

DESCRIPTION_LIMIT = 4000


def _export_files(layout: Layout) -> list[str]:
    """Every verified file of the export stage, which the version carries beside the PyTorch flavour."""
    if not layout.export_metrics.exists() or not layout.export_dir.is_dir():
        raise ClassiflowError(f"{layout.export_dir}: no exported model; run the export stage before register")
    return sorted(str(p) for p in layout.export_dir.iterdir() if p.is_file())


def _version_tags(ckpt: dict, metrics: dict, exported: dict, pruned: dict, pipeline: str) -> dict[str, str]:
    """``test_accuracy`` is evaluate's headline, the accuracy of the predictions the gate compares and the
    shipped files compute (test-time augmentation included when ``tta`` names it)."""
    tags = {
        "test_accuracy": f"{metrics['accuracy']:.6f}",
        "test_accuracy_plain": f"{metrics['accuracy_plain']:.6f}",
        "tta": tta_name(tta_of(metrics)),
        "macro_f1": f"{metrics['macro_f1']:.6f}",
        "data_hash": ckpt["data_hash"],
        "git_commit": git_commit(),
        "architecture": ckpt["model"]["name"],
        "classes": json.dumps(ckpt["classes"]),
        "pipeline_run_id": pipeline,
        "pruned_status": pruned.get("status", "accepted"),
        "pruned_test_accuracy": f"{pruned['test_accuracy_after']:.6f}",
    }
    point = metrics.get("operating_point", {})
    if "thresholds" in point:
        tags[OPERATING_TAG] = "met" if point["met_on_test"] else "missed"
        tags["operating_point.policy"] = f"{point['policy']} {point['target']:g}"
    trained = exported.get("trained", {})
    if "onnx" in trained:
        tags[LATENCY_TAG] = f"{trained['onnx']['latency_ms_median']:.4f}"
    for fmt in ("onnx-int8-static", "onnx-int8-dynamic"):
        if trained.get(fmt, {}).get("status") == "verified":
            tags[f"{fmt}_test_accuracy"] = f"{trained[fmt]['accuracy']:.6f}"
    return tags | rejection_tags(exported)


def run(layout: Layout, params: Params, report: Report = NO_REPORT) -> StageResult:
    """Log the model with its exports, predictions and model card, and register it as ``@<register.alias>``.

    Runs inside the stage's MLflow run. The per-image predictions let ``classiflow promote`` pair two
    versions image by image (McNemar).
    """
    net, ckpt = load_checkpoint(layout.model)
    metrics = read_json(layout.eval_metrics)
    exported, pruned = read_json(layout.export_metrics), read_json(layout.prune_metrics)
    files = _export_files(layout)
    data = load_prepared(layout.prepared, ("test",))
    name = registered_name(params, data.meta["dataset"])
    model = WithPreprocessing(net, ckpt["mean"], ckpt["std"], tta_of(metrics)).eval()
    example = np.ascontiguousarray(data.images["test"][:4].transpose(0, 3, 1, 2)).astype(np.float32)
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()
    card = model_card(name, ckpt, params.flat(), metrics, pruned, exported, git_commit())
    write_text(layout.model_card, card)
    info = mlflow.pytorch.log_model(
        model,
        name="model",
        signature=infer_signature(example, output),
        input_example=example,
        registered_model_name=name,
        extra_files=[*files, str(layout.model_card)],
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
    )
    version, alias = str(info.registered_model_version), params.registry.alias
    pipeline = mlflow.active_run().data.tags["mlflow.parentRunId"]
    client = MlflowClient()
    for key, value in _version_tags(ckpt, metrics, exported, pruned, pipeline).items():
        client.set_model_version_tag(name, version, key, value)
    summary = card.split("\n## ")[0]  # the full card is an artifact; stores cap descriptions (5000 chars)
    client.update_model_version(name, version, description=summary[:DESCRIPTION_LIMIT])
    client.set_registered_model_alias(name, alias, version)
    result = {"model_name": name, "version": version, "alias": alias, "model_uri": info.model_uri}
    write_json(layout.registration, result)
    return StageResult(
        result,
        params={"register.model_name": name, "register.alias": alias},
        artifacts={layout.model: "checkpoint", layout.predictions: PREDICTIONS.rpartition("/")[0],
                   layout.model_card: ""},
        pipeline_tags={"registered_model": name, "registered_version": version},
        summary=[f"register: {name} version {version} is now @{alias}"],
    )  # fmt: skip
