"""The SimCLR loop: two views per image, NT-Xent, AdamW, SGD or LARS with warm-up and cosine decay, a kNN monitor on
validation after every epoch, and a resume point after every epoch (a killed run continues bit for bit).

Both views go through the network as one batch of 2N (batch norm then sees both, as in SimCLR). The time
spent making views is measured apart from the step, so a slow augmentation shows in the history.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from classiflow.cpu import usable_cores
from classiflow.errors import ClassiflowError
from classiflow.pretrain.encoder import SimCLR, embed, knn_accuracy, strip_head
from classiflow.pretrain.loss import nt_xent
from classiflow.pretrain.params import PretrainParams
from classiflow.pretrain.views import two_views
from classiflow.progress import task_progress
from classiflow.tensors import Normalizer
from classiflow.training.device import (
    autocast,
    resolve_precision,
    rng_state,
    seed_everything,
    select_device,
    set_rng_state,
    training_memory_format,
)
from classiflow.training.loop import Resume, init_from_data
from classiflow.training.resume import load_state, save_state

log = logging.getLogger("classiflow.pretrain")
KNN_BANK = 10_000  # labelled train images the monitor compares against (a seeded sample when there are more)


@dataclass
class Images:
    """uint8 N,C,H,W tensors: every train image (labelled or not), the labelled ones with labels (the kNN bank),
    and validation with labels."""

    pool: torch.Tensor
    bank: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    classes: int


@dataclass
class PretrainResult:
    encoder: nn.Module
    history: list[dict]
    seconds: float
    images_per_second: float
    device: str
    resumed_from_epoch: int


def _optimizer(model: nn.Module, cfg: PretrainParams, steps: int):
    """AdamW, SGD or LARS without decay on norms and biases (nor LARS's adaptation, which timm applies only to
    decayed groups); linear warm-up, then cosine to 0, stepped per batch."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    plain = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=cfg.lr)
    elif cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    else:
        from timm.optim import Lars

        opt = Lars(groups, lr=cfg.lr, momentum=cfg.momentum)
    total, warmup = cfg.epochs * steps, round(cfg.warmup_epochs * steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _network(model: nn.Module, x_all: torch.Tensor, normalizer: Normalizer, cfg: PretrainParams, device) -> SimCLR:
    """The model (data-initialised where it has such a layer) less its classifier, with a projection head."""
    init_from_data(model.to(device), x_all, normalizer, device)
    encoder, features = strip_head(model, x_all.shape[1], x_all.shape[2])
    return SimCLR(encoder, features, cfg.hidden_dim, cfg.projection_dim).to(device)


def _bank(images: Images, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = images.bank
    if len(x) <= KNN_BANK:
        return x, y
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:KNN_BANK].sort().values
    return x[pick], y[pick]


def pretrain(
    model: nn.Module,
    images: Images,
    mean: list[float],
    std: list[float],
    cfg: PretrainParams,
    resume: Resume | None = None,
    on_epoch_end: Callable[[dict], None] | None = None,
) -> PretrainResult:
    """Train ``model``'s encoder (the model less its classifier) with SimCLR on every image of ``images``."""
    seed_everything(cfg.seed)
    device = select_device(cfg.device)
    cfg = cfg.model_copy(update={"precision": resolve_precision(device, cfg.precision)})
    if device.type == "cpu":
        torch.set_num_threads(usable_cores())
    normalizer = Normalizer(mean, std).to(device)
    x_all = images.pool
    net = _network(model, x_all, normalizer, cfg, device)
    memory = training_memory_format(net, device, cfg.channels_last)
    net = net.to(memory_format=memory)
    encoder = net.encoder
    batch = min(cfg.batch_size, len(x_all))
    steps = len(x_all) // batch
    if steps == 0 or batch < 2:
        raise ClassiflowError(f"pretrain: {len(x_all)} images cannot make a batch of two")
    opt, sched = _optimizer(net, cfg, steps)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    generators = {name: torch.Generator().manual_seed(cfg.seed + i) for i, name in enumerate(("order", "views"))}
    state = _restore(resume, net, (opt, sched, scaler), generators)
    if state["epoch"]:
        log.info("pretrain: resuming from epoch %d of %d (%s)", state["epoch"], cfg.epochs, resume.path)
    resumed_from = state["epoch"]
    bank_x, bank_y = _bank(images, cfg.seed)
    with task_progress() as progress:
        bar = progress.add_task("pretrain", total=cfg.epochs * steps, status="", completed=resumed_from * steps)
        for epoch in range(resumed_from + 1, cfg.epochs + 1):
            stats = _epoch(net, x_all, batch, steps, normalizer, cfg, (opt, sched, scaler), generators, memory)
            stats["epoch"] = epoch
            stats["knn_accuracy"] = knn_accuracy(
                embed(encoder, bank_x, normalizer, device), bank_y,
                embed(encoder, images.val[0], normalizer, device), images.val[1], cfg.knn_k, images.classes,
            )  # fmt: skip
            progress.update(bar, completed=epoch * steps, status=f"loss {stats['loss']:.3f}")
            state["epoch"], state["seconds"] = epoch, state["seconds"] + stats["epoch_seconds"]
            state["history"].append(stats)
            if resume is not None:
                save_state(resume.path, _capture(net, (opt, sched, scaler), generators, state, resume.fingerprint))
            if on_epoch_end is not None:
                on_epoch_end(stats)
    seen = len(state["history"]) * steps * batch
    return PretrainResult(
        encoder=encoder.eval(),
        history=state["history"],
        seconds=state["seconds"],
        images_per_second=seen / max(state["seconds"], 1e-9),
        device=str(device),
        resumed_from_epoch=resumed_from,
    )


def _restore(resume: Resume | None, net, stepping, generators) -> dict:
    """The epoch count, history and time of a saved run of this configuration (its weights, optimiser,
    schedule, scaler and random streams restored), or a fresh start."""
    saved = load_state(resume.path, resume.fingerprint) if resume and resume.enabled else None
    if saved is None:
        return {"epoch": 0, "history": [], "seconds": 0.0}
    net.load_state_dict(saved["model"])
    for part, key in zip(stepping, ("optimizer", "scheduler", "scaler"), strict=True):
        part.load_state_dict(saved[key])
    set_rng_state(saved["rng"], generators)
    return {k: saved[k] for k in ("epoch", "history", "seconds")}


def _capture(net, stepping, generators, state: dict, fingerprint: str) -> dict:
    opt, sched, scaler = stepping
    weights = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    return {
        "fingerprint": fingerprint,
        "model": weights,
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng_state(generators),
        **copy.deepcopy(state),
    }


def _epoch(net, x_all, batch, steps, normalizer, cfg, stepping, generators, memory) -> dict:
    opt, sched, scaler = stepping
    device = normalizer.mean.device
    net.train()
    order = torch.randperm(len(x_all), generator=generators["order"])
    loss_sum, view_seconds, start = torch.zeros((), device=device), 0.0, time.perf_counter()
    lr = opt.param_groups[0]["lr"]
    for step in range(steps):
        xb = x_all[order[step * batch : (step + 1) * batch]].to(device, non_blocking=True)
        t0 = time.perf_counter()
        v1, v2 = two_views(xb, cfg, generators["views"])
        views = normalizer(torch.cat([v1, v2])).contiguous(memory_format=memory)
        view_seconds += time.perf_counter() - t0
        with autocast(device, cfg.precision):
            z = net(views)
        loss = nt_xent(z[: len(xb)], z[len(xb) :], cfg.temperature)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        loss_sum += loss.detach()
    seconds = time.perf_counter() - start
    return {
        "loss": loss_sum.item() / steps,
        "lr": lr,
        "images_per_second": steps * batch / seconds,
        "view_share": view_seconds / seconds,
        "epoch_seconds": seconds,
    }
