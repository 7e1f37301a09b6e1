"""The ``sweep`` section: the search space, the budget and the study's storage, validated like the others.

Trials are ranked by the train stage's best validation accuracy, never by test accuracy (no peeking).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Dimension(BaseModel):
    """One searched parameter: ``choices``, or a range (``low``-``high``; ints when both are ints, ``log`` scale)."""

    model_config = ConfigDict(extra="forbid")

    low: int | float | None = None  # an int stays an int, so two int bounds search integers
    high: int | float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0.0)
    choices: list[bool | int | float | str] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _range_or_choices(self) -> Dimension:
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give choices or low/high, not both")
            return self
        if self.low is None or self.high is None or not self.low < self.high:
            raise ValueError("a range needs low < high")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self

    @property
    def integer(self) -> bool:
        return all(isinstance(v, int) for v in (self.low, self.high)) and (self.step is None or self.step.is_integer())


def _default_space() -> dict[str, Dimension]:
    return {
        "train.lr": Dimension(low=0.5, high=3.0, log=True),
        "train.label_smoothing": Dimension(low=0.0, high=0.3),
    }


class SweepParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    trials: int = Field(8, ge=1, le=10_000)
    parallel: int = Field(2, ge=1, le=1000)  # trials in flight; each takes a worker slot of the pool
    seed: int = 0  # TPE's
    storage: str | None = None  # null: sqlite:///<project>/.cache/optuna.db; or a database URL (its own database)
    deployment: str = Field("train-flow/local", pattern=r"^[^/\s]+/[^/\s]+$")
    space: dict[str, Dimension] = Field(default_factory=_default_space, min_length=1)
