"""run_stage: the stage works on the caller's thread while its MLflow run is kept on a thread of its own."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from classiflow.errors import ClassiflowError
from classiflow.layout import Layout
from classiflow.pipeline import Stage
from classiflow.stages.result import StageResult
from classiflow.tracking import stage as tracking_stage
from tests.conftest import shrunk_params


def reporting(layout, params, report):
    for step in (1, 2):
        report.metrics({"val_accuracy": 0.5 * step}, step=step)
    return StageResult({"done": True}, metrics={"accuracy": 0.75}, tags={"device": "cpu"}, summary=["ok"])


def failing(layout, params, report):
    report.metrics({"val_accuracy": 0.1}, step=1)
    raise ClassiflowError("train.lr: too large")


def inside_the_run(layout, params, report=None):
    return StageResult({"run_id": mlflow.active_run().info.run_id})


@pytest.fixture
def stage_named(monkeypatch, tmp_path, mlflow_uri):
    monkeypatch.chdir(tmp_path)

    def use(function: str, **options) -> str:
        stage = Stage("train", f"tests.test_tracking_stage:{function}", (), ("train.epochs",), "deep", **options)
        monkeypatch.setitem(tracking_stage.BY_NAME, "train", stage)
        return "train"

    return use


def _stage_runs(uri: str) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("classiflow")
    return client.search_runs([experiment.experiment_id], "tags.`classiflow.stage` = 'train'")


def test_a_stage_logs_its_params_progress_and_result(stage_named, tmp_path, mlflow_uri):
    value = tracking_stage.run_stage(stage_named("reporting"), tmp_path, shrunk_params())
    assert value == {"done": True}
    (run,) = _stage_runs(mlflow_uri)
    assert run.info.status == "FINISHED" and run.data.params == {"train.epochs": "1"}
    assert run.data.metrics["accuracy"] == 0.75 and run.data.tags["device"] == "cpu"
    history = MlflowClient(mlflow_uri).get_metric_history(run.info.run_id, "val_accuracy")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 1.0)]
    assert Layout.at(tmp_path).record("train").exists()


def test_a_failed_stage_raises_its_own_error_and_leaves_a_failed_run_and_no_record(stage_named, tmp_path, mlflow_uri):
    with pytest.raises(ClassiflowError, match="too large"):
        tracking_stage.run_stage(stage_named("failing"), tmp_path, shrunk_params())
    (run,) = _stage_runs(mlflow_uri)
    assert run.info.status == "FAILED" and run.data.params == {"train.epochs": "1"}
    assert not Layout.at(tmp_path).record("train").exists()


def test_a_stage_that_logs_itself_runs_inside_its_run(stage_named, tmp_path, mlflow_uri):
    value = tracking_stage.run_stage(stage_named("inside_the_run", in_run=True), tmp_path, shrunk_params())
    (run,) = _stage_runs(mlflow_uri)
    assert value["run_id"] == run.info.run_id


def test_a_tracking_store_that_cannot_open_fails_the_stage(stage_named, tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}")
    with pytest.raises(Exception):  # noqa: B017 - whatever MLflow raises, the stage must not pass
        tracking_stage.run_stage(stage_named("reporting"), tmp_path, shrunk_params())
