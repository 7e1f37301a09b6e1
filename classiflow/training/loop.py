"""The training loop: whole-array batches, batched augmentation, per-epoch validation,
best-by-validation weights and a resume point after every epoch.

Batches are gathered straight from one uint8 tensor (no per-sample Dataset calls), so the
loop runs as fast as a bare PyTorch loop on the same arrays; ``benchmarks/`` checks that.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from classiflow.config import TrainParams
from classiflow.cpu import usable_cores
from classiflow.data.prepared import PreparedData
from classiflow.progress import task_progress
from classiflow.tensors import Normalizer, predict_logits, to_nchw
from classiflow.training.device import autocast, rng_state, seed_everything, select_device, set_rng_state
from classiflow.training.optim import make_ema, make_optimizer, make_scheduler
from classiflow.training.resume import load_state, save_state

log = logging.getLogger("classiflow.training")
DATA_INIT_IMAGES = 5000


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


def evaluate_split(model, images, labels, normalizer, device, batch_size=1024) -> tuple[float, float]:
    logits = predict_logits(model, images, normalizer, device, batch_size)
    loss = F.cross_entropy(logits, labels).item()
    return loss, (logits.argmax(1) == labels).float().mean().item()


def planned_epochs(cfg: TrainParams, steps_per_epoch: int) -> int:
    """``train.epochs``, or more when that is fewer than ``train.min_steps`` optimiser steps."""
    return max(cfg.epochs, -(-cfg.min_steps // max(steps_per_epoch, 1)))


def _cpu_state(model: nn.Module) -> dict:
    return copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})


def fit(
    model: nn.Module,
    data: PreparedData,
    cfg: TrainParams,
    on_epoch_end: Callable[[dict], None] | None = None,
    inputs: Inputs | None = None,
    resume: Resume | None = None,
) -> TrainResult:
    """Train ``model`` on the train split; keep the weights of the best validation epoch."""
    inputs = inputs or Inputs()
    seed_everything(cfg.seed)
    device = select_device(cfg.device)
    if device.type == "cpu":
        torch.set_num_threads(usable_cores())
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(device=device, memory_format=memory_format)
    normalizer = Normalizer(data.meta["mean"], data.meta["std"]).to(device)
    x_train = to_nchw(data.images["train"]).to(device)
    y_train = torch.from_numpy(data.labels["train"]).to(device)
    sources = [(to_nchw(x).to(device), torch.from_numpy(y).to(device)) for x, y in inputs.copies]
    x_val, y_val = to_nchw(data.images["val"]), torch.from_numpy(data.labels["val"])
    if hasattr(model, "data_init"):
        with torch.no_grad():
            model.data_init(normalizer(x_train[:DATA_INIT_IMAGES]))
    n = len(y_train)
    batch_size = min(cfg.batch_size, n)
    steps_per_epoch = n // batch_size  # the last partial batch is dropped: BN needs > 1 sample
    cfg = cfg.model_copy(update={"epochs": planned_epochs(cfg, steps_per_epoch)})
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch)
    ema = make_ema(model, cfg.ema)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    train_model = torch.compile(model) if cfg.compile else model
    generators = {"order": torch.Generator().manual_seed(cfg.seed)}
    generators["augment"] = torch.Generator().manual_seed(inputs.augment_seed)
    augment = None if inputs.augment is None or inputs.augment.is_identity else inputs.augment
    history, best, train_time, start_epoch, stale = [], (-1.0, 0, None), 0.0, 1, 0

    state = load_state(resume.path, resume.fingerprint) if resume and resume.enabled else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"], generators)
        history, train_time, stale = state["history"], state["train_time"], state["stale"]
        best = (state["best_val_accuracy"], state["best_epoch"], state["best_state"])
        start_epoch = state["epoch"] + 1
        log.info("resuming from epoch %d of %d (%s)", state["epoch"], cfg.epochs, resume.path)

    with task_progress() as progress:
        bar = progress.add_task("train", total=cfg.epochs * steps_per_epoch, status="")
        progress.update(bar, completed=(start_epoch - 1) * steps_per_epoch)
        for epoch in range(start_epoch, cfg.epochs + 1):
            if history and cfg.early_stopping and stale >= cfg.early_stopping:
                break
            model.train()
            x_src, y_src = sources[(epoch - 1) % len(sources)] if sources else (x_train, y_train)
            order = torch.randperm(n, generator=generators["order"]).to(device)
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            lr = optimizer.param_groups[0]["lr"]
            start = time.perf_counter()
            for step in range(steps_per_epoch):
                idx = order[step * batch_size : (step + 1) * batch_size]
                xb, yb = x_src[idx], y_src[idx]
                if augment is not None and not sources:
                    xb = augment.images(xb, generators["augment"])
                xb = normalizer(xb).contiguous(memory_format=memory_format)
                target = yb
                if augment is not None:
                    xb, target = augment.mix(xb, yb, generators["augment"])
                with autocast(device, cfg.precision):
                    out = train_model(xb)
                loss = F.cross_entropy(out.float(), target, label_smoothing=cfg.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.grad_clip is not None:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                if ema is not None:
                    ema.update_parameters(model)
                loss_sum += loss.detach() * len(yb)
                correct += (out.detach().argmax(1) == yb).sum()
                if step % 20 == 19:
                    rate = (step + 1) * batch_size / (time.perf_counter() - start)
                    progress.update(bar, advance=20, status=f"epoch {epoch} loss {loss.item():.3f} {rate:,.0f} img/s")
            seconds = time.perf_counter() - start
            train_time += seconds
            progress.update(bar, completed=epoch * steps_per_epoch)
            eval_model = ema.module if ema is not None else model
            val_loss, val_acc = evaluate_split(eval_model, x_val, y_val, normalizer, device)
            seen = steps_per_epoch * batch_size
            stats = {
                "epoch": epoch,
                "train_loss": loss_sum.item() / seen,
                "train_accuracy": correct.item() / seen,
                "val_loss": val_loss,
                "val_accuracy": val_acc,
                "lr": lr,
                "images_per_second": seen / seconds,
                "epoch_seconds": seconds,
            }
            history.append(stats)
            if val_acc > best[0]:
                best, stale = (val_acc, epoch, _cpu_state(eval_model)), 0
            else:
                stale += 1
            if resume is not None:
                save_state(
                    resume.path,
                    {
                        "fingerprint": resume.fingerprint,
                        "epoch": epoch,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(),
                        "ema": ema.state_dict() if ema is not None else None,
                        "rng": rng_state(generators),
                        "history": history,
                        "train_time": train_time,
                        "stale": stale,
                        "best_val_accuracy": best[0],
                        "best_epoch": best[1],
                        "best_state": best[2],
                    },
                )
            if on_epoch_end is not None:
                on_epoch_end(stats)
    model.load_state_dict(best[2])
    epochs_run = len(history)
    return TrainResult(
        history=history,
        best_epoch=best[1],
        best_val_accuracy=best[0],
        best_state=best[2],
        images_per_second=epochs_run * steps_per_epoch * batch_size / max(train_time, 1e-9),
        train_seconds=train_time,
        device=str(device),
        resumed_from_epoch=start_epoch - 1,
    )
