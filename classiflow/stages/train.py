"""Train stage: build the configured model for the prepared data, fit it with the augmentation
policy, keep the best checkpoint; a killed run resumes from its last epoch."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from classiflow.atomic import write_json, write_text
from classiflow.augment import build_augment, load_copies, load_policy
from classiflow.checkpoint import model_spec, save_checkpoint
from classiflow.config import AugmentParams, Params
from classiflow.data.prepared import PreparedData, load_prepared
from classiflow.errors import ClassiflowError
from classiflow.layout import Layout
from classiflow.models import build_model
from classiflow.models.pretrained import load_into, normalization, read_weights, with_defaults
from classiflow.pretrain.made import encoder_spec
from classiflow.stages.result import NO_REPORT, Report, StageResult, numbers
from classiflow.stages.train_ranks import launch
from classiflow.training import TrainResult, fit, seed_everything
from classiflow.training.imbalance import check_class_weights
from classiflow.training.loop import Inputs, Resume
from classiflow.training.resume import fingerprint

log = logging.getLogger("classiflow.train")
PRETRAIN = "pretrain"  # model.pretrained: the pretrain stage's encoder
HISTORY_FIELDS = (
    "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_balanced_accuracy", "lr",
    "images_per_second",
)  # fmt: skip


def _inputs(layout: Layout, aug: AugmentParams, data: PreparedData) -> Inputs:
    augment = build_augment(aug, len(data.classes), channels=data.channels, image_size=data.image_size)
    copies = []
    if aug.copies and not augment.is_identity:
        copies = load_copies(layout.augmented, data_hash=data.data_hash)
        if len(copies) != aug.copies:
            raise ClassiflowError(
                f"{layout.augmented}: {len(copies)} augmented copies, augment.copies is {aug.copies}; "
                "rerun the augment stage"
            )
    return Inputs(augment=augment, copies=copies, augment_seed=aug.seed)


def _epoch_reporter(report: Report):
    def on_epoch_end(stats: dict) -> None:
        epoch = stats["epoch"]
        report.metrics({k: v for k, v in stats.items() if k != "epoch"}, step=epoch)
        log.info(
            "epoch %d: train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.0f img/s",
            epoch,
            stats["train_loss"],
            stats["train_accuracy"],
            stats["val_loss"],
            stats["val_accuracy"],
            stats["images_per_second"],
        )

    return on_epoch_end


def _same_architecture(weights, spec: dict) -> None:
    """An encoder of the pretrain stage names its architecture: another one (or another channel count) is refused
    in one line, before any tensor is compared."""
    made = weights.config.get("model")
    if not isinstance(made, dict):
        return
    keys = ("name", "in_channels", "width", "attention", "cbam_reduction")
    differ = [k for k in keys if made.get(k) != spec.get(k)]
    if differ:
        theirs = ", ".join(f"{k} {made.get(k)!r}" for k in differ)
        ours = ", ".join(f"{k} {spec.get(k)!r}" for k in differ)
        raise ClassiflowError(f"model.pretrained {weights.file}: an encoder of {theirs}, the model has {ours}")


def _pretrained(model, spec: dict, params: Params, data: PreparedData, layout: Layout):
    """Load ``model.pretrained`` into the fresh model; the weights' mean and std then feed it, not the data's."""
    cfg = params.model
    if not cfg.pretrained:
        return None, data
    source = cfg.pretrained
    if source == PRETRAIN:
        encoder_spec(layout)  # a clear line when the pretrain stage made no encoder
        source = str(layout.encoder)
    weights = with_defaults(read_weights(source, cfg.pretrained_sha256, cfg.allow_download), spec["name"])
    _same_architecture(weights, spec)
    fresh = load_into(model, weights, spec["name"])
    record = weights.record() | {"fresh": fresh}
    stats = normalization(weights, data.channels)
    log.info(
        "pretrained: %s (sha256 %s, licence %s), %d tensors loaded, fresh: %s",
        cfg.pretrained, weights.sha256[:12], record["license"] or "unknown",
        len(model.state_dict()) - len(fresh), ", ".join(fresh) or "none",
    )  # fmt: skip
    return record, data.with_stats(*stats) if stats else data


@dataclass
class Job:
    """What the training loop is given: the same on every rank, since every rank builds it from the same seed."""

    model: torch.nn.Module
    spec: dict
    data: PreparedData
    pretrained: dict | None
    augment: AugmentParams
    inputs: Inputs
    resume: Resume


def setup(layout: Layout, params: Params) -> Job:
    """The model (seeded, with any pretrained weights), data, augmentation and resume point of the stage.

    The resume fingerprint leaves out how many processes run: with the same micro-batches they give the same
    weights, so a run may resume on another number of processes."""
    data = load_prepared(layout.prepared, ("train", "val"))
    check_class_weights(params.train.class_weights, data.classes)
    spec = model_spec(params.model, data.meta)
    seed_everything(params.train.seed)  # the initial weights too, not only the batch order
    model = build_model(**spec)
    pretrained, data = _pretrained(model, spec, params, data, layout)
    augment = load_policy(layout.augmented, params.augment, data.data_hash)
    inputs = _inputs(layout, augment, data)
    train_cfg = params.train.model_dump(exclude={"resume", "processes", "nodes", "rendezvous"})
    train_cfg["micro_batches"] = params.train.micro_batch_count
    key = fingerprint(spec, augment.model_dump(), train_cfg, data.data_hash, pretrained and pretrained["sha256"])
    resume = Resume(layout.last_checkpoint, key, enabled=params.train.resume)
    return Job(model, spec, data, pretrained, augment, inputs, resume)


def join_as_agent(layout: Layout, params: Params) -> None:
    """Lend this machine's processes to a run that `classiflow train` leads on another node (``train.nodes`` > 1)."""
    if params.train.nodes == 1:
        raise ClassiflowError("classiflow train-agent: train.nodes is 1; set it and train.rendezvous on every node")
    job = setup(layout, params)
    launch(layout, params, job.resume.fingerprint[:16], None)


def _train(layout: Layout, params: Params, job: Job, report: Report) -> TrainResult:
    """In this process, or on ``train.processes`` x ``train.nodes`` processes that torchrun starts."""
    on_epoch_end = _epoch_reporter(report)
    size = params.train.world_size
    if size == 1:
        return fit(job.model, job.data, params.train, on_epoch_end, job.inputs, job.resume)
    log.info("train: %d processes (%d per node), torchrun", size, params.train.processes)
    result = TrainResult(**launch(layout, params, job.resume.fingerprint[:16], on_epoch_end))
    job.model.load_state_dict(result.best_state)
    return result


def run(layout: Layout, params: Params, report: Report = NO_REPORT) -> StageResult:
    job = setup(layout, params)
    model, spec, data, pretrained, augment = job.model, job.spec, job.data, job.pretrained, job.augment
    result = _train(layout, params, job, report)
    save_checkpoint(
        layout.model,
        model,
        spec,
        data.meta,
        {
            "epoch": result.best_epoch,
            "val_accuracy": result.best_val_accuracy,
            "train": params.train.model_dump(),
            "augment": augment.model_dump(),
            "pretrained": pretrained,
        },
    )
    rows = [",".join(HISTORY_FIELDS)]
    rows += [
        ",".join(f"{h[k]:.6g}" if isinstance(h[k], float) else str(h[k]) for k in HISTORY_FIELDS)
        for h in result.history
    ]
    write_text(layout.train_history, "\n".join(rows) + "\n")
    last = result.history[-1]
    metrics = {
        "best_val_accuracy": result.best_val_accuracy,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "final_train_loss": last["train_loss"],
        "final_train_accuracy": last["train_accuracy"],
        "images_per_second": result.images_per_second,
        "train_seconds": result.train_seconds,
        "parameters": sum(p.numel() for p in model.parameters()),
        "world_size": result.world_size,
        "micro_batches": result.micro_batches,
    }
    write_json(layout.train_metrics, metrics)
    value = {**metrics, "device": result.device, "data_hash": data.data_hash}
    value["resumed_from_epoch"] = result.resumed_from_epoch
    headline = ("best_val_accuracy", "images_per_second", "train_seconds")
    tags = {"device": result.device, "data_hash": data.data_hash, "precision": result.precision}
    if pretrained:
        tags |= {f"pretrained_{k}": str(pretrained[k]) for k in ("source", "sha256", "license")}
    return StageResult(
        value,
        metrics=numbers(value),
        tags=tags,
        artifacts={layout.train_history: ""},
        pipeline_metrics={k: metrics[k] for k in headline},
        summary=[f"train: best val accuracy {result.best_val_accuracy:.4f} at epoch {result.best_epoch}"],
        keep_until_recorded=[layout.last_checkpoint],
    )
