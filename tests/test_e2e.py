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
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "PREFECT_API_URL"))
    }
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


STAGES = ("download", "prepare", "augment", "train", "evaluate", "prune", "export", "register", "baseline", "compare")


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


def test_registered_version_carries_verified_exports_and_a_model_card(project, first_repro):
    import mlflow

    exported = json.loads((project / "metrics/export.json").read_text())
    for fmt in ("torchscript", "onnx", "onnx-int8-static", "onnx-int8-dynamic"):
        assert fmt in exported["trained"] and fmt in exported["pruned"]
    assert exported["trained"]["onnx"]["max_abs_diff"] <= 1e-4
    pruned = json.loads((project / "metrics/prune.json").read_text())
    assert pruned["method"] == "structured" and pruned["params_after"] < pruned["params_before"]
    assert "| pruned | ONNX Runtime int8 static |" in (project / "reports/export.md").read_text()

    client = _client(project)
    version = client.get_model_version_by_alias("classiflow-shapes", "challenger")
    latency = exported["trained"]["onnx"]["latency_ms_median"]
    assert float(version.tags["latency_ms_batch1"]) == pytest.approx(latency, abs=1e-4)
    assert version.description.startswith("# Model card: classiflow-shapes")
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{project / 'mlflow.db'}")
    local = Path(mlflow.artifacts.download_artifacts(f"models:/classiflow-shapes/{version.version}"))
    extra = {p.name for p in (local / "extra_files").iterdir()}
    assert {"model.onnx", "model.int8.onnx", "pruned.onnx", "preprocessing.json", "model_card.md"} <= extra
    card = (local / "extra_files/model_card.md").read_text()
    assert json.loads((project / "data/prepared/meta.json").read_text())["data_hash"] in card
    predictions = mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path="evaluation/predictions.csv")
    assert len(Path(predictions).read_text().splitlines()) == 1 + 24


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
    for stage in ("train", "evaluate", "prune", "export", "register", "compare"):
        assert f"Running stage '{stage}'" in out
    client = _client(project)
    record = json.loads((project / "records/register.json").read_text())
    parent = client.get_run(record["pipeline_run_id"])
    assert parent.data.params["train.epochs"] == "1"
    rerun = ("train", "evaluate", "prune", "export", "register", "compare")
    assert _runs(client, parent.info.run_id) == {s: "FINISHED" for s in rerun}
    assert str(client.get_model_version_by_alias("classiflow-shapes", "challenger").version) == "2"


def test_promote_gate_dry_run_and_rollback(project, first_repro):
    def cli(*args):
        return subprocess.run(
            ["classiflow", *args], cwd=project, env=_env(), capture_output=True, text=True, timeout=300
        )

    def champion() -> str:
        return str(client.get_model_version_by_alias("classiflow-shapes", "champion").version)

    client = _client(project)
    first = cli("promote", "--version", "1")
    assert first.returncode == 0, first.stderr
    assert "promoted classiflow-shapes version 1" in first.stdout and champion() == "1"
    dry = cli("promote", "--dry-run")
    assert dry.returncode in (0, 3) and "dry run: would" in dry.stdout and "McNemar p=" in dry.stdout
    assert champion() == "1"
    gate = cli("promote")
    assert (gate.returncode == 0) == (champion() == "2"), gate.stdout + gate.stderr
    if champion() != "2":
        assert cli("promote", "--version", "2", "--force").returncode == 0 and champion() == "2"
    assert "already is the champion" in cli("promote", "--version", "2").stdout
    back = cli("rollback")
    assert back.returncode == 0 and "from version 2 to 1" in back.stdout and champion() == "1"
    events = [
        json.loads(v)
        for k, v in client.get_registered_model("classiflow-shapes").tags.items()
        if k.startswith("classiflow.promotion.")
    ]
    assert [e["action"] for e in sorted(events, key=lambda e: e["time"])][-1] == "rollback"
    assert client.get_model_version("classiflow-shapes", "1").tags["promotion.decision"] == "restored by rollback"
