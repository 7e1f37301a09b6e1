"""Parameters of the prune stage, validated like every other ``params.yaml`` section.

The defaults prune half of every layer's channels in one step and fine-tune three epochs at a third of
the train section's peak rate: structured pruning is the only kind that makes a model smaller and
faster on ordinary hardware, since the zeros of unstructured pruning still sit in dense tensors and
are multiplied like any other weight.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

FINETUNE_LR_SHARE = 1 / 3  # 2 epochs of the defaults: 1/30 of train.lr lost 6.2 points, 1/3 lost 0.5 (docs)
METHODS = ("none", "l1_unstructured", "global_unstructured", "structured")


def _check_amount(value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise ValueError("must be in [0, 1): the fraction of weights (or channels) removed")
    return value


class PruneParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["none", "l1_unstructured", "global_unstructured", "structured"] = "structured"
    # fraction of weights (unstructured) or of each layer's channels (structured) removed
    amount: float = 0.5
    # l1_unstructured only: module names such as "features.3"; null = every conv/linear but the classifier
    layers: list[str] | None = None
    # reach ``amount`` in this many equal increments, fine-tuning after each
    steps: int = Field(1, ge=1, le=100)
    finetune_epochs: int = Field(3, ge=0)
    # peak rate of the fine-tuning cosine; null: FINETUNE_LR_SHARE of train.lr, so the rate suits the optimiser
    finetune_lr: float | None = Field(None, gt=0.0)
    # amounts of the pruning-vs-accuracy/latency curve, each pruned WITHOUT fine-tuning; [] = no sweep
    sweep: list[float] = [0.25, 0.5, 0.75]
    latency_repeats: int = Field(50, ge=1)
    # points of test accuracy the pruned model may lose; over it, it is reported as rejected and not exported
    max_accuracy_drop: float = Field(1.0, ge=0.0, le=100.0)

    @field_validator("amount")
    @classmethod
    def _amount_in_range(cls, value: float) -> float:
        return _check_amount(value)

    @field_validator("sweep")
    @classmethod
    def _sweep_in_range(cls, values: list[float]) -> list[float]:
        for value in values:
            _check_amount(value)
        return values

    @field_validator("layers")
    @classmethod
    def _layers_not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("an empty list prunes nothing; use null for every conv/linear layer")
        return value
