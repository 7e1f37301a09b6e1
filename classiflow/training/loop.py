"""The training loop: whole-array batches, batched augmentation, per-epoch validation,
best-by-validation weights and a resume point after every epoch.

Batches are gathered straight from one uint8 tensor (no per-sample Dataset calls), so the
loop runs as fast as a bare PyTorch loop on the same arrays; ``benchmarks/`` checks that.
The epoch is its own function (:func:`train_one_epoch`, as in torchvision's references), and
everything a resumed run continues from is one object (:class:`TrainState`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from classiflow.config import TrainParams
from classiflow.cpu import usable_cores
from classiflow.data.mapped import is_mapped
from classiflow.data.prepared import PreparedData
from classiflow.progress import task_progress
from classiflow.tensors import Normalizer, predict_logits, to_nchw
from classiflow.training import distributed
from classiflow.training.device import resolve_precision, seed_everything, select_device, training_memory_format
from classiflow.training.distributed import SINGLE, World
from classiflow.training.epoch import Batches, train_one_epoch
from classiflow.training.finetune import freeze_backbone
from classiflow.training.imbalance import class_weights
from classiflow.training.optim import make_ema, make_lookahead, make_optimizer, make_scheduler
from classiflow.training.resume import load_state, save_state
from classiflow.training.state import TrainState

log = logging.getLogger("classiflow.training")
DATA_INIT_IMAGES = 5000
DATA_INIT_VALUES = DATA_INIT_IMAGES * 3 * 32 * 32  # fewer images when they are large (a float copy of them is made)


@dataclass
class TrainResult:
    history: list[dict]
    best_epoch: int
    best_val_accuracy: float
    best_state: dict
    images_per_second: float
    train_seconds: float
    device: str
    resumed_from_epoch: int = 0
    world_size: int = 1
    micro_batches: int = 1
    precision: str = "fp32"  # what train.precision resolved to on this device (``auto`` never)


@dataclass
class Resume:
    """Where to keep the per-epoch state, and the fingerprint a saved state must match."""

    path: Path
    fingerprint: str
    enabled: bool = True


@dataclass
class Inputs:
    """Optional training inputs beyond the prepared arrays: an augmentation policy (with
    ``images``/``mix``/``is_identity``) and materialised augmented copies of the train split."""

    augment: object | None = None
    copies: list[tuple] = field(default_factory=list)
    augment_seed: int = 0


def balanced_accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    """The mean recall over the classes present: accuracy as if every class were equally common."""
    recalls = [(predicted[labels == c] == c).float().mean() for c in labels.unique()]
    return float(torch.stack(recalls).mean()) if recalls else 0.0


def evaluate_split(model, images, labels, normalizer, device, batch_size=1024, world=SINGLE) -> dict[str, float]:
    """Each rank predicts its slice of the split and every rank scores them all, so all take the same decisions."""
    lo, hi = distributed.bounds(len(labels), world.size)[world.rank]
    logits = distributed.all_gather_rows(predict_logits(model, images[lo:hi], normalizer, device, batch_size), world)
    predicted = logits.argmax(1)
    return {
        "val_loss": F.cross_entropy(logits, labels).item(),
        "val_accuracy": (predicted == labels).float().mean().item(),
        "val_balanced_accuracy": balanced_accuracy(predicted, labels),
    }


def planned_epochs(cfg: TrainParams, steps_per_epoch: int) -> int:
    """``train.epochs``, or more when that is fewer than ``train.min_steps`` optimiser steps."""
    return max(cfg.epochs, -(-cfg.min_steps // max(steps_per_epoch, 1)))


def _batches(model: nn.Module, data: PreparedData, cfg: TrainParams, inputs: Inputs, device: torch.device) -> Batches:
    """Move the model and the splits to ``device``; models with a data-dependent first layer see the data."""
    memory_format = training_memory_format(model, device, cfg.channels_last)
    model.to(device=device, memory_format=memory_format)
    normalizer = Normalizer(data.meta["mean"], data.meta["std"]).to(device)

    def split(images, labels) -> tuple[torch.Tensor, torch.Tensor]:
        home = torch.device("cpu") if is_mapped(images) else device
        return to_nchw(images).to(home), torch.from_numpy(labels).to(home)

    x_train, y_train = split(data.images["train"], data.labels["train"])
    init_from_data(model, x_train, normalizer, device)
    n = len(x_train)
    batch_size = min(cfg.batch_size, n)
    return Batches(
        train=(x_train, y_train),
        copies=[split(x, y) for x, y in inputs.copies],
        val=(to_nchw(data.images["val"]), torch.from_numpy(data.labels["val"])),
        normalizer=normalizer,
        batch_size=batch_size,
        steps_per_epoch=n // batch_size,  # the last partial batch is dropped: BN needs > 1 sample
        memory_format=memory_format,
        device=device,
        mapped=[a for a in (data.images["train"], data.images["val"], *(x for x, _ in inputs.copies)) if is_mapped(a)],
        loss_weights=_to(class_weights(cfg.class_weights, data.labels["train"], data.classes), device),
    )


def init_from_data(model: nn.Module, images: torch.Tensor, normalizer: Normalizer, device: torch.device) -> None:
    """Models with a data-dependent first layer (FastNet's whitening) see the first images of the train split."""
    if hasattr(model, "data_init"):
        count = max(1, min(DATA_INIT_IMAGES, DATA_INIT_VALUES // max(images[0].numel(), 1)))
        with torch.no_grad():
            model.data_init(normalizer(images[:count].contiguous().to(device)))


def _to(tensor: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(device)


def _new_state(model: nn.Module, cfg: TrainParams, steps_per_epoch: int, augment_seed: int, device) -> TrainState:
    optimizer = make_optimizer(model, cfg)
    return TrainState(
        model=model,
        optimizer=optimizer,
        scheduler=make_scheduler(optimizer, cfg, steps_per_epoch),
        scaler=torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16"),
        ema=make_ema(model, cfg.ema),
        generators={
            "order": torch.Generator().manual_seed(cfg.seed),
            "augment": torch.Generator().manual_seed(augment_seed),
        },
        lookahead=make_lookahead(model, cfg.lookahead, cfg.epochs * steps_per_epoch),
    )


def fit(
    model: nn.Module,
    data: PreparedData,
    cfg: TrainParams,
    on_epoch_end: Callable[[dict], None] | None = None,
    inputs: Inputs | None = None,
    resume: Resume | None = None,
    world: World = SINGLE,
) -> TrainResult:
    """Train ``model`` on the train split; keep the weights of the best validation epoch. As one of several
    processes (``world``), only the writer rank saves the resume point, reports epochs and shows progress."""
    inputs = inputs or Inputs()
    seed_everything(cfg.seed)
    if world.rank:
        torch.manual_seed(cfg.seed + world.rank)  # dropout: independent masks per rank
    device = select_device(cfg.device)
    if device.type == "cpu" and not world.distributed:  # a rank's threads are set when it joins
        torch.set_num_threads(usable_cores())
    model = distributed.sync_norm_layers(model, device, world)
    batches = _batches(model, data, cfg, inputs, device)
    steps = batches.steps_per_epoch
    precision = resolve_precision(device, cfg.precision)  # once per run: the scaler, autocast and the record agree
    cfg = cfg.model_copy(update={"epochs": planned_epochs(cfg, steps), "precision": precision})
    state = _new_state(model, cfg, steps, inputs.augment_seed, device)
    saved = load_state(resume.path, resume.fingerprint) if resume and resume.enabled else None
    if saved is not None:
        state.restore(saved)
        log.info("resuming from epoch %d of %d (%s)", state.epoch, cfg.epochs, resume.path)
        if on_epoch_end is not None and world.is_writer:
            for stats in state.history:  # the new run records the whole history, not only the epochs it trains
                on_epoch_end(stats)
    resumed_from = state.epoch
    augment = None if inputs.augment is None or inputs.augment.is_identity else inputs.augment
    writer = world.is_writer
    compiled = torch.compile(model) if cfg.compile else model
    with task_progress(enabled=writer) as progress:
        bar = progress.add_task("train", total=cfg.epochs * steps, status="", completed=resumed_from * steps)

        def tick(advance: int, status: str) -> None:
            progress.update(bar, advance=advance, status=status)

        for epoch in range(resumed_from + 1, cfg.epochs + 1):
            if state.history and cfg.early_stopping and state.stale >= cfg.early_stopping:
                break
            stats = _epoch(state, compiled, batches, augment, cfg, epoch, tick, world)
            progress.update(bar, completed=epoch * steps)
            if resume is not None and writer:
                save_state(resume.path, state.capture(resume.fingerprint))
            if on_epoch_end is not None and writer:
                on_epoch_end(stats)
    model.load_state_dict(state.best_state)
    freeze_backbone(model, frozen=False)
    distributed.check_identical(model.state_dict(), world)
    return TrainResult(
        history=state.history,
        best_epoch=state.best_epoch,
        best_val_accuracy=state.best_val_accuracy,
        best_state=state.best_state,
        images_per_second=len(state.history) * steps * batches.batch_size / max(state.train_time, 1e-9),
        train_seconds=state.train_time,
        device=str(device),
        resumed_from_epoch=resumed_from,
        world_size=world.size,
        micro_batches=cfg.micro_batch_count,
        precision=cfg.precision,
    )


def _epoch(state: TrainState, compiled, batches: Batches, augment, cfg: TrainParams, epoch, tick, world) -> dict:
    """Train one epoch (the backbone frozen or not, wrapped for DDP with the parameters that train in it), then
    validate and record it."""
    model = state.model
    if cfg.freeze_epochs:
        freeze_backbone(model, frozen=epoch <= cfg.freeze_epochs)
    train_model = distributed.wrap(compiled, batches.device, world)
    trained = train_one_epoch(train_model, state, batches, augment, cfg, epoch, tick, world)
    eval_model = state.ema.module if state.ema is not None else model
    with record_function("classiflow.validate"):
        scores = evaluate_split(eval_model, *batches.val, batches.normalizer, batches.device, world=world)
    batches.release()
    first = {key: trained.pop(key) for key in ("train_loss", "train_accuracy")}
    stats = {"epoch": epoch, **first, **scores, **trained}
    state.end_epoch(stats, eval_model, cfg.select_by)
    return stats
