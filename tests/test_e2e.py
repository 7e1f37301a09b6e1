"""The real pipeline (DVC + Prefect + MLflow, nothing mocked) on a tiny generated archive."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.pipeline_project import make_project

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING_URI", "PREFECT_API_URL"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    return env


def _repro(proj: Path, *command: str) -> str:
    command = command or ("dvc", "repro")
    done = subprocess.run(command, cwd=proj, env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def _client(proj: Path):
    import mlflow

    uri = f"sqlite:///{proj / 'mlflow.db'}"
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _runs(client, parent_id: str) -> dict[str, str]:
    exp = client.get_experiment_by_name("classiflow")
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    return {r.data.tags["classiflow.stage"]: r.info.status for r in children}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("e2e"))


@pytest.fixture(scope="module")
def first_repro(project) -> str:
    return _repro(project)


STAGES = ("download", "prepare", "augment", "train", "evaluate", "register", "baseline", "compare")


def test_dvc_repro_runs_every_stage_and_registers_a_challenger(project, first_repro):
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first_repro
    meta = json.loads((project / "data/prepared/meta.json").read_text())
    grid = list(csv.reader(open(project / "reports/confusion_matrix.csv")))
    assert sum(int(v) for row in grid[1:] for v in row[1:]) == meta["sizes"]["test"] == 24
    evaluation = json.loads((project / "metrics/evaluate.json").read_text())
    assert evaluation["test_size"] == 24 and 0.0 <= evaluation["accuracy"] <= 1.0

    client = _client(project)
    version = client.get_model_version_by_alias("classiflow-shapes", "challenger")
    assert version.tags["data_hash"] == meta["data_hash"]
    assert float(version.tags["test_accuracy"]) == pytest.approx(evaluation["accuracy"], abs=1e-6)
    assert version.tags["git_commit"]

    record = json.loads((project / "records/register.json").read_text())
    parent = client.get_run(record["pipeline_run_id"])
    assert parent.data.params["train.epochs"] == "2"
    assert parent.data.metrics["test_accuracy"] == pytest.approx(evaluation["accuracy"])
    assert _runs(client, parent.info.run_id) == {s: "FINISHED" for s in STAGES}


def test_baseline_and_comparison_sit_beside_the_cnn(project, first_repro):
    baseline = json.loads((project / "metrics/baseline.json").read_text())
    assert baseline["test_size"] == 24 and 0.0 <= baseline["accuracy"] <= 1.0
    grid = list(csv.reader(open(project / "reports/baseline/confusion_matrix.csv")))
    assert sum(int(v) for row in grid[1:] for v in row[1:]) == 24
    table = (project / "reports/comparison.md").read_text()
    model = yaml.safe_load((project / "params.yaml").read_text())["model"]["name"]
    assert f"| {model} | deep |" in table and "| classical |" in table
    shown = subprocess.run(["dvc", "metrics", "show"], cwd=project, env=_env(), capture_output=True, text=True)
    assert "metrics/baseline.json" in shown.stdout and "metrics/evaluate.json" in shown.stdout
    client = _client(project)
    record = json.loads((project / "records/baseline.json").read_text())
    assert client.get_run(record["run_id"]).data.tags["classiflow.kind"] == "classical"
    train_record = json.loads((project / "records/train.json").read_text())
    assert client.get_run(train_record["run_id"]).data.tags["classiflow.kind"] == "deep"


def test_second_repro_runs_nothing(project, first_repro):
    out = _repro(project)
    assert "Running stage" not in out and "up to date" in out


def test_changing_epochs_reruns_train_and_after_only(project, first_repro):
    out = _repro(project, "dvc", "exp", "run", "-S", "train.epochs=1")
    assert yaml.safe_load((project / "params.yaml").read_text())["train"]["epochs"] == 1
    for stage in ("download", "prepare", "augment", "baseline"):
        assert f"Running stage '{stage}'" not in out
    for stage in ("train", "evaluate", "register", "compare"):
        assert f"Running stage '{stage}'" in out
    client = _client(project)
    record = json.loads((project / "records/register.json").read_text())
    parent = client.get_run(record["pipeline_run_id"])
    assert parent.data.params["train.epochs"] == "1"
    assert _runs(client, parent.info.run_id) == {s: "FINISHED" for s in ("train", "evaluate", "register", "compare")}
    assert str(client.get_model_version_by_alias("classiflow-shapes", "challenger").version) == "2"


def test_promote_moves_champion_only_when_not_worse(project, first_repro):
    def promote(*args):
        return subprocess.run(
            ["classiflow", "promote", *args], cwd=project, env=_env(), capture_output=True, text=True, timeout=300
        )

    first = promote("--version", "1")
    assert first.returncode == 0, first.stderr
    assert "promoted classiflow-shapes version 1" in first.stdout
    client = _client(project)
    v1 = float(client.get_model_version("classiflow-shapes", "1").tags["test_accuracy"])
    v2 = float(client.get_model_version("classiflow-shapes", "2").tags["test_accuracy"])
    second = promote()
    assert (second.returncode == 0) == (v2 >= v1), second.stdout
    expected = "2" if v2 >= v1 else "1"
    assert str(client.get_model_version_by_alias("classiflow-shapes", "champion").version) == expected
    other = "1" if expected == "2" else "2"
    forced = promote("--version", other, "--force")
    assert forced.returncode == 0 and "forced" in forced.stdout
    assert str(client.get_model_version_by_alias("classiflow-shapes", "champion").version) == other
    again = promote("--version", other)
    assert again.returncode == 0 and "already is the champion" in again.stdout


def test_prefect_flow_runs_the_same_tasks(project, first_repro, tmp_path, monkeypatch):
    from prefect.testing.utilities import prefect_test_harness

    monkeypatch.chdir(project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    from flows.train import train_flow

    with prefect_test_harness(server_startup_timeout=120):
        result = train_flow(overrides={"train.epochs": 1}, workdir=str(tmp_path / "flowrun"))
    dvc_meta = json.loads((project / "data/prepared/meta.json").read_text())
    assert result["data_hash"] == dvc_meta["data_hash"]
    client = _client(project)
    parent = client.get_run(result["pipeline_run_id"])
    assert parent.data.tags["classiflow.entry"] == "prefect"
    assert _runs(client, result["pipeline_run_id"]) == {s: "FINISHED" for s in STAGES}
    assert str(client.get_model_version_by_alias("classiflow-shapes", "challenger").version) == result["version"]
    assert (tmp_path / "flowrun/reports/confusion_matrix.png").exists()
