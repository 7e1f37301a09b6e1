"""Everything a resumed training run continues from, named once: :class:`TrainState` writes the resume
point (:meth:`TrainState.capture`) and reads it back (:meth:`TrainState.restore`) from the same field lists.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from classiflow.training.device import rng_state, set_rng_state


def cpu_state(model: nn.Module) -> dict:
    return copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})


@dataclass
class TrainState:
    """Everything a resumed run continues from. The field names are the keys of the saved state,
    so a resume point is written and read from this one list."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    ema: Any
    generators: dict[str, torch.Generator]
    lookahead: Any = None
    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    train_time: float = 0.0
    stale: int = 0
    best_val_accuracy: float = -1.0  # of the kept epoch
    best_score: float = -1.0  # the kept epoch's train.select_by figure
    best_epoch: int = 0
    best_state: dict | None = None

    STATEFUL = ("model", "optimizer", "scheduler", "scaler")
    OPTIONAL = ("ema", "lookahead")  # stateful when enabled (None when not)
    PLAIN = ("epoch", "history", "train_time", "stale", "best_val_accuracy", "best_score", "best_epoch", "best_state")

    def capture(self, fingerprint: str) -> dict:
        state = {"fingerprint": fingerprint} | {k: getattr(self, k).state_dict() for k in self.STATEFUL}
        for key in self.OPTIONAL:
            part = getattr(self, key)
            state[key] = part.state_dict() if part is not None else None
        state["rng"] = rng_state(self.generators)
        return state | {k: getattr(self, k) for k in self.PLAIN}

    def restore(self, saved: dict) -> None:
        for key in self.STATEFUL:
            getattr(self, key).load_state_dict(saved[key])
        for key in self.OPTIONAL:
            if getattr(self, key) is not None:
                getattr(self, key).load_state_dict(saved[key])
        set_rng_state(saved["rng"], self.generators)
        for key in self.PLAIN:
            setattr(self, key, saved[key])

    def end_epoch(self, stats: dict, eval_model: nn.Module, select_by: str = "val_accuracy") -> None:
        """Record the epoch; keep its weights when it is the best on validation so far (by ``select_by``)."""
        self.epoch = stats["epoch"]
        self.history.append(stats)
        self.train_time += stats["epoch_seconds"]
        if stats[select_by] > self.best_score:
            self.best_score, self.best_val_accuracy = stats[select_by], stats["val_accuracy"]
            self.best_epoch, self.best_state, self.stale = self.epoch, cpu_state(eval_model), 0
        else:
            self.stale += 1
