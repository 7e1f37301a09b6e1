"""How stage runs group under one pipeline run.

A pipeline run is an MLflow parent run with every parameter; each stage is a nested run.
The Prefect flow opens the parent itself. Under DVC every stage is its own process, so a
stage joins the parent recorded by its newest upstream stage (``records/<stage>.json``) when
that parent has no finished run of this stage yet and was made with the same parameters;
otherwise the stage starts a new pipeline run. Changing ``train.epochs`` therefore gives a
new row in the UI that holds train, evaluate, compare and register, with every parameter.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator

import mlflow
from mlflow.tracking import MlflowClient

from classiflow.atomic import read_json, write_json
from classiflow.config import Params
from classiflow.layout import Layout
from classiflow.pipeline import BY_NAME
from classiflow.tracking.store import git_commit, setup
from classiflow.tracking.uri import tracking_uri

STAGE_TAG = "classiflow.stage"
PIPELINE_TAG = "classiflow.pipeline"


def _same_params(run: mlflow.entities.Run, params: Params) -> bool:
    logged = run.data.params
    return all(logged.get(k, str(v)) == str(v) for k, v in params.flat().items())


def _joinable_parent(client: MlflowClient, exp_id: str, layout: Layout, stage: str, params: Params) -> str | None:
    """The newest upstream stage's pipeline run, if this stage may still join it."""
    records = [read_json(p) for p in (layout.record(s) for s in BY_NAME[stage].upstream) if p.exists()]
    records = [r for r in records if r.get("tracking_uri") == tracking_uri() and r.get("pipeline_run_id")]
    if not records:
        return None
    newest = max(records, key=lambda r: r.get("finished_at", ""))
    try:
        parent = client.get_run(newest["pipeline_run_id"])
    except mlflow.exceptions.MlflowException:
        return None
    if parent.info.lifecycle_stage != "active" or not _same_params(parent, params):
        return None
    done = client.search_runs(
        [exp_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}' and tags.`{STAGE_TAG}` = '{stage}' "
        "and attributes.status = 'FINISHED'",
        max_results=1,
    )
    return None if done else parent.info.run_id


def start_pipeline_run(exp_id: str, params: Params, entry: str, name: str | None = None) -> str:
    client = MlflowClient()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run = client.create_run(
        exp_id,
        run_name=name or f"{params.model.name}-{stamp}",
        tags={PIPELINE_TAG: "true", "classiflow.entry": entry, "git_commit": git_commit()},
    )
    flat = params.flat()
    client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, str(v)) for k, v in flat.items()])
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def mark_failed(pipeline_run_id: str) -> None:
    """A flow that stops half-way shows as a FAILED pipeline run, not a finished one."""
    MlflowClient().set_terminated(pipeline_run_id, "FAILED")


@contextlib.contextmanager
def stage_run(
    stage: str,
    layout: Layout,
    params: Params,
    parent_run_id: str | None = None,
    kind: str | None = None,
    extra: dict | None = None,
) -> Iterator[str]:
    """Open the stage's nested run (yielding the pipeline run id) and leave its record behind.

    ``kind`` (``deep`` or ``classical``) tags model runs so the UI can tell CNNs from the baseline; ``extra`` is
    merged into the record when the run ends (the caller may fill it inside the ``with`` block).
    """
    exp_id = setup(params)
    client = MlflowClient()
    if parent_run_id is None:
        parent_run_id = _joinable_parent(client, exp_id, layout, stage, params) or start_pipeline_run(
            exp_id, params, entry="dvc"
        )
    tags = {STAGE_TAG: stage, "git_commit": git_commit()} | ({"classiflow.kind": kind} if kind else {})
    with mlflow.start_run(run_id=parent_run_id):
        with mlflow.start_run(run_name=stage, nested=True, tags=tags, experiment_id=exp_id) as run:
            yield parent_run_id
    write_json(
        layout.record(stage),
        {
            "stage": stage,
            "run_id": run.info.run_id,
            "pipeline_run_id": parent_run_id,
            "experiment_id": exp_id,
            "tracking_uri": tracking_uri(),
            "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
        }
        | (extra or {}),
    )


def log_to_pipeline(pipeline_run_id: str, metrics: dict | None = None, tags: dict | None = None) -> None:
    client = MlflowClient()
    for key, value in (metrics or {}).items():
        client.log_metric(pipeline_run_id, key, float(value))
    for key, value in (tags or {}).items():
        client.set_tag(pipeline_run_id, key, str(value))
