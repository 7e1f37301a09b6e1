"""Pretrain stage: SimCLR on every train image, labelled or not (``pretrain.method: simclr``); the train stage
starts from the encoder with ``model.pretrained: pretrain``.

Writes ``models/pretrain`` as a whole (``spec.json`` always; ``encoder.safetensors`` when it pretrained, the
architecture and normalisation in its metadata, as any pretrained file), ``metrics/pretrain.json`` and
``reports/pretrain_history.csv`` (per epoch: NT-Xent loss, kNN accuracy on validation, share of time spent on
views). With ``method: none`` (the default) it writes the same files saying so, and trains nothing.
"""

from __future__ import annotations

import logging

from classiflow.atomic import atomic_dir, write_json, write_text
from classiflow.config import Params
from classiflow.data.prepared import load_meta
from classiflow.layout import Layout
from classiflow.pretrain.made import SPEC
from classiflow.stages.result import NO_REPORT, Report, StageResult, numbers

log = logging.getLogger("classiflow.pretrain")
HISTORY_FIELDS = ("epoch", "loss", "knn_accuracy", "lr", "images_per_second", "view_share", "epoch_seconds")


def _write(layout: Layout, spec: dict, history: list[dict], state: dict | None) -> None:
    with atomic_dir(layout.pretrain_dir) as tmp:
        if state is not None:
            from classiflow.models.pretrained import save_weights

            save_weights(tmp / layout.encoder.name, state, spec)
        write_json(tmp / SPEC, spec)
    rows = [",".join(HISTORY_FIELDS)] + [",".join(f"{h[k]:.6g}" for k in HISTORY_FIELDS) for h in history]
    write_text(layout.pretrain_history, "\n".join(rows) + "\n")


def run(layout: Layout, params: Params, report: Report = NO_REPORT) -> StageResult:
    cfg = params.pretrain
    meta = load_meta(layout.prepared)
    if cfg.method == "none":
        spec = {"method": "none", "data_hash": meta["data_hash"]}
        _write(layout, spec, [], None)
        write_json(layout.pretrain_metrics, spec)
        return StageResult(spec, summary=["pretrain: skipped (pretrain.method: none)"])
    return _simclr(layout, params, report)


def _images(data, splits: tuple[str, ...]):
    """The pool SimCLR learns from (every train image, labelled or not), the labelled bank and validation."""
    import torch

    from classiflow.data.labelled import UNLABELLED
    from classiflow.pretrain.loop import Images
    from classiflow.tensors import to_nchw

    def tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        return to_nchw(data.images[split]), torch.from_numpy(data.labels[split])

    train, val = tensors("train"), tensors("val")
    pool = torch.cat([train[0], *([tensors(UNLABELLED)[0]] if UNLABELLED in splits else [])])
    return Images(pool, train, val, len(data.classes))


def _finish(layout: Layout, spec: dict, cfg, data, result, images: int) -> dict:
    """Write the encoder with its record, the history and the metrics; drop the resume point."""
    record = {
        "method": "simclr",
        "model": spec,
        "data_hash": data.data_hash,
        "images": images,
        "mean": data.meta["mean"],
        "std": data.meta["std"],
        "input_size": [spec["in_channels"], spec["image_size"], spec["image_size"]],
        "license": None,
        "params": cfg.model_dump(),
    }
    state = {k: v.detach().cpu() for k, v in result.encoder.state_dict().items()}
    _write(layout, record, result.history, state)
    layout.pretrain_last.unlink(missing_ok=True)
    last = result.history[-1]
    metrics = {
        "method": "simclr",
        "final_loss": last["loss"],
        "knn_accuracy": last["knn_accuracy"],
        "epochs_run": len(result.history),
        "pretrain_seconds": result.seconds,
        "images_per_second": result.images_per_second,
        "view_share": last["view_share"],
        "images": images,
        "resumed_from_epoch": result.resumed_from_epoch,
    }
    write_json(layout.pretrain_metrics, metrics)
    return metrics


def _simclr(layout: Layout, params: Params, report: Report) -> StageResult:
    import torch

    from classiflow.checkpoint import model_spec
    from classiflow.data.labelled import UNLABELLED
    from classiflow.data.prepared import load_prepared
    from classiflow.models import build_model
    from classiflow.pretrain.loop import pretrain
    from classiflow.pretrain.params import MIN_CONTRASTIVE_BATCH
    from classiflow.training.loop import Resume
    from classiflow.training.resume import fingerprint

    cfg = params.pretrain
    splits = ("train", "val", *([UNLABELLED] if UNLABELLED in load_meta(layout.prepared)["sizes"] else []))
    data = load_prepared(layout.prepared, splits)
    if cfg.batch_size < MIN_CONTRASTIVE_BATCH:
        log.warning(
            "pretrain.batch_size %d: under %d, each image has few negatives", cfg.batch_size, MIN_CONTRASTIVE_BATCH
        )
    spec = model_spec(params.model, data.meta)
    torch.manual_seed(cfg.seed)
    model = build_model(**spec)
    images = _images(data, splits)
    key = fingerprint(spec, cfg.model_dump(exclude={"resume"}), data.data_hash)
    resume = Resume(layout.pretrain_last, key, enabled=cfg.resume)

    def on_epoch_end(stats: dict) -> None:
        report.metrics({k: v for k, v in stats.items() if k != "epoch"}, step=stats["epoch"])
        log.info(
            "pretrain epoch %d: loss %.4f, kNN val accuracy %.4f, %.0f img/s (views %.0f%%)",
            stats["epoch"],
            stats["loss"],
            stats["knn_accuracy"],
            stats["images_per_second"],
            100 * stats["view_share"],
        )

    result = pretrain(model, images, data.meta["mean"], data.meta["std"], cfg, resume, on_epoch_end)
    metrics = _finish(layout, spec, cfg, data, result, len(images.pool))
    last = result.history[-1]
    return StageResult(
        metrics | {"device": result.device},
        metrics=numbers(metrics),
        tags={"device": result.device, "data_hash": data.data_hash},
        artifacts={layout.pretrain_history: "", layout.encoder: "encoder"},
        pipeline_metrics={"pretrain_knn_accuracy": last["knn_accuracy"]},
        summary=[
            f"pretrain: SimCLR on {metrics['images']} images, kNN val accuracy {last['knn_accuracy']:.4f}, "
            f"loss {last['loss']:.4f}"
        ],
    )
