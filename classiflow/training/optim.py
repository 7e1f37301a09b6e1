"""Optimiser, learning-rate schedule, weight averaging and lookahead, built from ``train`` params.

Schedules are stepped once per batch so that cosine warm-up and OneCycle are smooth; StepLR
keeps the article's per-epoch meaning by counting whole epochs of steps. ``train.momentum`` is the
momentum under every schedule: OneCycle only cycles it (up to ``train.momentum_cycle``) when asked.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from classiflow.config import TrainParams
from classiflow.training.finetune import head_parameter_ids


def parameter_groups(model: nn.Module, cfg: TrainParams) -> list[dict]:
    """Weight decay on weights only: decaying norm gains and biases hurts accuracy (as timm and
    torchvision's references do by default). Norm and bias parameters may take a larger
    learning rate (``bias_lr_scale``), which fast schedules such as airbench's rely on. Everything but the
    head may take a smaller one (``backbone_lr_scale``), as fine-tuning a pretrained backbone wants."""
    head = head_parameter_ids(model) if cfg.backbone_lr_scale != 1.0 else set()
    buckets: dict[tuple[bool, bool], list] = {}
    for param in model.parameters():
        if param.requires_grad:
            buckets.setdefault((id(param) in head or not head, param.ndim <= 1), []).append(param)
    groups = []
    for (is_head, no_decay), params in sorted(buckets.items(), key=lambda kv: (not kv[0][0], kv[0][1])):
        lr = cfg.lr * (cfg.bias_lr_scale if no_decay else 1.0) * (1.0 if is_head else cfg.backbone_lr_scale)
        groups.append({"params": params, "weight_decay": 0.0 if no_decay else cfg.weight_decay, "lr": lr})
    return groups


def make_optimizer(model: nn.Module, cfg: TrainParams) -> torch.optim.Optimizer:
    groups = parameter_groups(model, cfg)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.Adam(groups, lr=cfg.lr)


def lr_factor(cfg: TrainParams, steps_per_epoch: int):
    """Multiplier of ``train.lr`` at a given optimiser step (for step, cosine and none)."""
    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if cfg.scheduler == "step":
            return cfg.gamma ** ((step // steps_per_epoch) // cfg.step_size)
        if cfg.scheduler == "cosine":
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return factor


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainParams, steps_per_epoch: int):
    if cfg.scheduler == "onecycle":
        total = cfg.epochs * steps_per_epoch
        rise = cfg.warmup_epochs / cfg.epochs if cfg.warmup_epochs >= 1 else (cfg.warmup_epochs or 0.3)
        rise = min(max(rise, 0.01), 0.99)
        if abs(rise * total - 1.0) < 1e-9:  # a rise of exactly one step has zero length: OneCycleLR divides by it
            rise = 1.5 / total
        cycles = cfg.optimizer == "sgd" and cfg.momentum > 0 and cfg.momentum_cycle is not None
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[group["lr"] for group in optimizer.param_groups],
            total_steps=total,
            pct_start=rise,
            cycle_momentum=cycles,
            base_momentum=cfg.momentum,
            max_momentum=cfg.momentum_cycle or cfg.momentum,
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch))


def make_ema(model: nn.Module, decay: float | None) -> AveragedModel | None:
    """An exponential moving average of the weights (and batch-norm buffers), evaluated instead
    of the raw weights when enabled."""
    if decay is None:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


class Lookahead:
    """airbench's lookahead: every ``every`` steps the weights (and float buffers) move to a slow average of their
    past values and go on from there; the average forgets more slowly as the run ends (decay 0.95**every x
    (step / total)**3), and the last step ends on it. Unlike an EMA evaluated on the side, it steers training.
    Its state (steps taken, the average) is part of the resume point."""

    def __init__(self, model: nn.Module, every: int, total_steps: int):
        self.every, self.total, self.steps = every, max(total_steps, 1), 0
        self.slow = [t.detach().clone() for t in _float_tensors(model)]

    def decay(self, step: int) -> float:
        return 0.95**self.every * (step / self.total) ** 3

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Call after every optimiser step."""
        self.steps += 1
        due, last = self.steps % self.every == 0, self.steps == self.total
        if not (due or last):
            return
        for fast, slow in zip(_float_tensors(model), self.slow, strict=True):
            if due:
                slow.lerp_(fast, 1.0 - self.decay(self.steps))
            fast.copy_(slow)

    def state_dict(self) -> dict:
        return {"steps": self.steps, "slow": self.slow}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]
        for slow, saved in zip(self.slow, state["slow"], strict=True):
            slow.copy_(saved)


def _float_tensors(model: nn.Module) -> list[torch.Tensor]:
    return [t for t in model.state_dict().values() if t.is_floating_point()]


def make_lookahead(model: nn.Module, every: int | None, total_steps: int) -> Lookahead | None:
    return None if every is None else Lookahead(model, every, total_steps)
