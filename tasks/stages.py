"""One Prefect task per stage of the table, each wrapping :func:`classiflow.tracking.stage.run_stage`."""

from __future__ import annotations

from typing import Any

from prefect import Task, task

from classiflow.config import Params
from classiflow.pipeline import STAGES, Stage
from classiflow.tracking.stage import run_stage


def _task(stage: Stage) -> Task:
    def run(root: str, params: Params, pipeline_run_id: str | None = None) -> dict[str, Any]:
        return run_stage(stage.name, root, params, pipeline_run_id)

    run.__name__ = run.__qualname__ = stage.name
    run.__doc__ = f"The {stage.name} stage ({stage.runner})."
    return task(name=stage.name, retries=stage.retries, retry_delay_seconds=stage.retry_delay_seconds)(run)


TASKS: dict[str, Task] = {stage.name: _task(stage) for stage in STAGES}
