"""One epoch of training: the global batches of the epoch, each augmented once and split into micro-batches, of
which this process trains its share (all of them when it is the only one), then one optimiser step.

The phases are marked for torch.profiler (``classiflow.batch``, ``.forward``, ``.backward``, ``.optimizer``;
``.validate`` in the loop), so a profile of a run says where its time goes (``benchmarks/profile_step.py``).
With one process and one micro-batch this is the plain loop; several micro-batches are gradient accumulation, each
normalised on its own; several processes (``classiflow.training.distributed``) split the micro-batches between them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from classiflow.config import TrainParams
from classiflow.data.mapped import release_pages
from classiflow.tensors import Normalizer
from classiflow.training import distributed
from classiflow.training.device import autocast
from classiflow.training.distributed import SINGLE, World
from classiflow.training.imbalance import epoch_order
from classiflow.training.state import TrainState

RELEASE_EVERY = 8  # steps between unmapping the pages a memory-mapped split has read (classiflow.data.mapped)
PROGRESS_EVERY = 20  # steps between progress-bar updates (each one syncs the loss)


@dataclass
class Batches:
    """The run's tensors on its device (memory-mapped splits stay on the CPU, read batch by batch), and how an
    epoch walks them."""

    train: tuple[torch.Tensor, torch.Tensor]
    copies: list[tuple[torch.Tensor, torch.Tensor]]
    val: tuple[torch.Tensor, torch.Tensor]
    normalizer: Normalizer
    batch_size: int
    steps_per_epoch: int
    memory_format: torch.memory_format
    device: torch.device
    mapped: list = field(default_factory=list)  # the memory-mapped arrays behind the tensors
    loss_weights: torch.Tensor | None = None  # per class (train.class_weights), on the device

    def release(self) -> None:
        for array in self.mapped:
            release_pages(array)

    def source(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The train split, or the epoch's materialised augmented copy (copies rotate by epoch)."""
        return self.copies[(epoch - 1) % len(self.copies)] if self.copies else self.train


def train_one_epoch(
    train_model: nn.Module,
    state: TrainState,
    batches: Batches,
    augment: Any,
    cfg: TrainParams,
    epoch: int,
    on_progress: Callable[[int, str], None],
    world: World = SINGLE,
) -> dict:
    """One pass over the epoch's global batches: augment, step on this rank's micro-batches, schedule, average;
    the train half of the stats, the same on every rank."""
    state.model.train()
    device = batches.device
    x_src, y_src = batches.source(epoch)
    order = epoch_order(y_src, cfg.sampler, state.generators["order"]).to(x_src.device)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    lr = state.optimizer.param_groups[0]["lr"]
    size, start = batches.batch_size, time.perf_counter()
    parts = distributed.bounds(size, cfg.micro_batch_count)
    mine = parts[distributed.my_share(len(parts), world)]
    sync_norms = world.distributed and device.type != "cuda"
    for step in range(batches.steps_per_epoch):
        idx = order[step * size : (step + 1) * size]
        with record_function("classiflow.batch"):
            xb, target, yb = _global_batch(idx, x_src, y_src, batches, augment, state)
        if batches.mapped and step % RELEASE_EVERY == RELEASE_EVERY - 1:
            batches.release()
        before = distributed.norm_statistics(state.model) if sync_norms else None
        state.optimizer.zero_grad(set_to_none=True)
        for j, (lo, hi) in enumerate(mine):
            last = j == len(mine) - 1
            with contextlib.nullcontext() if last or not world.distributed else train_model.no_sync():
                with record_function("classiflow.forward"):
                    with autocast(device, cfg.precision):
                        out = train_model(xb[lo:hi])
                    loss = F.cross_entropy(
                        out.float(), target[lo:hi], batches.loss_weights, label_smoothing=cfg.label_smoothing
                    )
                with record_function("classiflow.backward"):
                    state.scaler.scale(loss * ((hi - lo) * world.size / size)).backward()
            loss_sum += loss.detach() * (hi - lo)
            correct += (out.detach().argmax(1) == yb[lo:hi]).sum()
        with record_function("classiflow.optimizer"):
            _step(state, cfg.grad_clip)
        if before is not None:
            distributed.sync_norm_statistics(state.model, before, len(mine), world)
        if step % PROGRESS_EVERY == PROGRESS_EVERY - 1:
            rate = (step + 1) * size / (time.perf_counter() - start)
            on_progress(PROGRESS_EVERY, f"epoch {epoch} loss {loss.item():.3f} {rate:,.0f} img/s")
    seconds = time.perf_counter() - start
    seen = batches.steps_per_epoch * size
    totals = distributed.all_sum(torch.stack([loss_sum.double(), correct.double()]), world)
    return {
        "train_loss": totals[0].item() / seen,
        "train_accuracy": totals[1].item() / seen,
        "lr": lr,
        "images_per_second": seen / seconds,
        "epoch_seconds": seconds,
    }


def _global_batch(idx, x_src, y_src, batches: Batches, augment: Any, state: TrainState):
    """The whole global batch, augmented and normalised (every rank draws the same augmentation): images, targets
    (soft when mixed) and labels."""
    device = batches.device
    xb, yb = x_src[idx].contiguous().to(device, non_blocking=True), y_src[idx].to(device, non_blocking=True)
    if augment is not None and not batches.copies:
        xb = augment.images(xb, state.generators["augment"])
    xb = batches.normalizer(xb).contiguous(memory_format=batches.memory_format)
    target = yb
    if augment is not None:
        xb, target = augment.mix(xb, yb, state.generators["augment"])
    return xb, target, yb


def _step(state: TrainState, grad_clip: float | None) -> None:
    if grad_clip is not None:
        state.scaler.unscale_(state.optimizer)
        nn.utils.clip_grad_norm_(state.model.parameters(), grad_clip)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.scheduler.step()
    if state.ema is not None:
        state.ema.update_parameters(state.model)
    if state.lookahead is not None:
        state.lookahead.update(state.model)
