"""Evaluate stage: the trained model on the held-out test split, never on training data."""

from __future__ import annotations

import time

import torch

from classiflow.atomic import write_json
from classiflow.checkpoint import load_checkpoint
from classiflow.config import Params
from classiflow.data.prepared import load_prepared
from classiflow.errors import ClassiflowError
from classiflow.evaluation import score_and_report
from classiflow.layout import Layout
from classiflow.tensors import Normalizer, predict_logits, to_nchw
from classiflow.training import select_device


def run(layout: Layout, params: Params) -> dict:
    model, ckpt = load_checkpoint(layout.model)
    data = load_prepared(layout.prepared, ("test",))
    if ckpt["data_hash"] != data.data_hash:
        raise ClassiflowError(
            f"{layout.model} was trained on other data (hash {ckpt['data_hash'][:12]}, "
            f"prepared data is {data.data_hash[:12]}); rerun the train stage"
        )
    device = select_device(params.train.device)
    model.to(device)
    normalizer = Normalizer(ckpt["mean"], ckpt["std"]).to(device)
    images = to_nchw(data.images["test"])
    start = time.perf_counter()
    logits = predict_logits(model, images, normalizer, device, params.evaluate.batch_size, params.evaluate.tta)
    seconds = time.perf_counter() - start
    y_true, y_pred = data.labels["test"], logits.argmax(1).numpy()
    classes = ckpt["classes"]
    metrics, matrix = score_and_report(
        layout, y_true, y_pred, classes, f"{ckpt['model']['name']} on {data.meta['dataset']}"
    )
    metrics["inference_ms_per_image"] = 1000.0 * seconds / max(len(y_true), 1)
    metrics["model_bytes"] = layout.model.stat().st_size
    metrics["test_loss"] = float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(y_true)))
    write_json(layout.eval_metrics, metrics)
    return {**metrics, "data_hash": data.data_hash, "confusion_matrix": matrix.tolist()}
