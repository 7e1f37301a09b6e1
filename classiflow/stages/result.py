"""What a stage runner hands back: its outcome, in the terms one generic function logs to MLflow.

Runners stay plain library code: they describe the params, metrics, tags and files worth recording and the
line to print, and ``classiflow.tracking.stage`` records them, so no stage keeps its own logging code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class Report(Protocol):
    """Where a long stage reports progress while it runs (an epoch's numbers, a log line)."""

    def metrics(self, values: Mapping[str, float], step: int) -> None: ...


class NoReport:
    """Progress goes nowhere: library and test callers that only want the result."""

    def metrics(self, values: Mapping[str, float], step: int) -> None:
        pass


@dataclass
class StageResult:
    """``value`` is what the stage returns to a flow; the rest is what its MLflow run records.

    ``artifacts`` maps each file to log to its artifact folder ("" for the run's root); ``documents`` are
    logged as JSON files, ``tables`` as MLflow tables; ``pipeline_metrics`` and ``pipeline_tags`` go to the
    pipeline run that groups the stages; ``summary`` lines are logged at INFO when the stage ends; ``record`` is
    kept in the stage's record file (``records/<stage>.json``) beside its run ids. ``keep_until_recorded``: files
    removed once the run is recorded, and kept when recording fails (the train stage's resume point, from which a
    rerun records the same model without training it again).
    """

    value: dict[str, Any]
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: dict[Path | str, str] = field(default_factory=dict)
    documents: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, dict[str, list]] = field(default_factory=dict)
    pipeline_metrics: dict[str, float] = field(default_factory=dict)
    pipeline_tags: dict[str, str] = field(default_factory=dict)
    summary: list[str] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)
    keep_until_recorded: list[Path] = field(default_factory=list)


def numbers(values: Mapping[str, Any]) -> dict[str, float]:
    """The int and float entries of ``values`` (not bools), as floats: what MLflow can chart."""
    return {k: float(v) for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)}


NO_REPORT = NoReport()
