"""One function runs any stage of the table and records it: the CLI calls it, the Prefect tasks wrap it.

The stage's params are logged before it runs (a failed run still shows what it was asked to do); its
``StageResult`` is logged after, the same way for every stage.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow

from classiflow.config import Params
from classiflow.layout import Layout
from classiflow.pipeline import BY_NAME, Stage
from classiflow.stages.result import StageResult
from classiflow.tracking.runs import log_to_pipeline, stage_run

log = logging.getLogger("classiflow")


class MlflowReport:
    """Progress of a running stage as step metrics of its MLflow run (the train stage's epochs)."""

    def metrics(self, values: Mapping[str, float], step: int) -> None:
        mlflow.log_metrics(dict(values), step=step)


def stage_params(stage: Stage, params: Params) -> dict[str, Any]:
    """The entries of ``params.yaml`` under the stage's ``params`` prefixes."""
    return {
        key: value
        for key, value in params.flat().items()
        if any(key == p or key.startswith(p + ".") for p in stage.params)
    }


def log_result(result: StageResult, pipeline_run_id: str) -> None:
    """Record a stage's result in the active (stage) run and its pipeline run."""
    if result.params:
        mlflow.log_params(result.params)
    if result.metrics:
        mlflow.log_metrics({k: float(v) for k, v in result.metrics.items()})
    if result.tags:
        mlflow.set_tags(result.tags)
    for path, folder in result.artifacts.items():
        mlflow.log_artifact(str(path), folder or None)
    for name, document in result.documents.items():
        mlflow.log_dict(document, name)
    for name, table in result.tables.items():
        mlflow.log_table(table, name)
    log_to_pipeline(pipeline_run_id, metrics=result.pipeline_metrics, tags=result.pipeline_tags)


def run_stage(name: str, root: str | Path, params: Params, pipeline_run_id: str | None = None) -> dict[str, Any]:
    """Run stage ``name`` in ``root`` as a nested MLflow run (joining or opening its pipeline run)."""
    stage = BY_NAME[name]
    runner = stage.load()
    layout = Layout.at(root)
    with stage_run(name, layout, params, pipeline_run_id, kind=stage.kind) as pipeline:
        logged = stage_params(stage, params)
        if logged:
            mlflow.log_params(logged)
        result: StageResult = runner(layout, params, MlflowReport())
        log_result(result, pipeline)
    for line in result.summary:
        log.info("%s", line)
    return result.value
