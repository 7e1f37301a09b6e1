"""The training loop: whole-array batches, per-epoch validation, best-by-validation weights.

Batches are gathered straight from one uint8 tensor (no per-sample Dataset calls), so the
loop runs as fast as a bare PyTorch loop on the same arrays; ``benchmarks/`` checks that.
"""

from __future__ import annotations

import copy
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from classiflow.config import TrainParams
from classiflow.data.prepared import PreparedData
from classiflow.errors import ClassiflowError
from classiflow.progress import task_progress
from classiflow.tensors import Normalizer, predict_logits, to_nchw


@dataclass
class TrainResult:
    history: list[dict]
    best_epoch: int
    best_val_accuracy: float
    best_state: dict
    images_per_second: float
    train_seconds: float
    device: str


def select_device(preference: str = "auto") -> torch.device:
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available[preference]:
        raise ClassiflowError(f"train.device {preference!r}: not available on this machine")
    return torch.device(preference)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(model: nn.Module, cfg: TrainParams) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainParams):
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    return None


def evaluate_split(model, images, labels, normalizer, device, batch_size=1024) -> tuple[float, float]:
    logits = predict_logits(model, images, normalizer, device, batch_size)
    loss = F.cross_entropy(logits, labels).item()
    return loss, (logits.argmax(1) == labels).float().mean().item()


def fit(
    model: nn.Module,
    data: PreparedData,
    cfg: TrainParams,
    on_epoch_end: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train ``model`` on the train split; keep the weights of the best validation epoch."""
    seed_everything(cfg.seed)
    device = select_device(cfg.device)
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    model.to(device)
    normalizer = Normalizer(data.meta["mean"], data.meta["std"]).to(device)
    x_train = to_nchw(data.images["train"]).to(device)
    y_train = torch.from_numpy(data.labels["train"]).to(device)
    x_val, y_val = to_nchw(data.images["val"]), torch.from_numpy(data.labels["val"])
    optimizer, n = make_optimizer(model, cfg), len(y_train)
    scheduler = make_scheduler(optimizer, cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = (n + cfg.batch_size - 1) // cfg.batch_size
    history, best = [], (-1.0, 0, None)
    train_time = 0.0
    with task_progress() as progress:
        bar = progress.add_task("train", total=cfg.epochs * steps_per_epoch, status="")
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            order = torch.randperm(n, generator=generator).to(device)
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            start = time.perf_counter()
            for step, i in enumerate(range(0, n, cfg.batch_size)):
                idx = order[i : i + cfg.batch_size]
                xb, yb = normalizer(x_train[idx]), y_train[idx]
                out = model(xb)
                loss = F.cross_entropy(out, yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach() * len(yb)
                correct += (out.detach().argmax(1) == yb).sum()
                if step % 20 == 19:
                    rate = (i + len(yb)) / (time.perf_counter() - start)
                    progress.update(bar, advance=20, status=f"epoch {epoch} loss {loss.item():.3f} {rate:,.0f} img/s")
            seconds = time.perf_counter() - start
            train_time += seconds
            progress.update(bar, completed=epoch * steps_per_epoch)
            val_loss, val_acc = evaluate_split(model, x_val, y_val, normalizer, device)
            stats = {
                "epoch": epoch,
                "train_loss": loss_sum.item() / n,
                "train_accuracy": correct.item() / n,
                "val_loss": val_loss,
                "val_accuracy": val_acc,
                "lr": optimizer.param_groups[0]["lr"],
                "images_per_second": n / seconds,
                "epoch_seconds": seconds,
            }
            if scheduler is not None:
                scheduler.step()
            history.append(stats)
            if val_acc > best[0]:
                best = (val_acc, epoch, copy.deepcopy({k: v.cpu() for k, v in model.state_dict().items()}))
            if on_epoch_end is not None:
                on_epoch_end(stats)
    model.load_state_dict(best[2])
    return TrainResult(
        history=history,
        best_epoch=best[1],
        best_val_accuracy=best[0],
        best_state=best[2],
        images_per_second=n * cfg.epochs / train_time,
        train_seconds=train_time,
        device=str(device),
    )
