"""The team stack for real: scripts/infra_up.sh starts PostgreSQL, an S3 server (moto) and an MLflow server on
loopback; the pipeline tracks and registers there with no S3 credentials of its own, promotes, predicts from
``models:/...@champion``, and pushes and pulls its DVC outputs through an S3 remote.

Skips without PostgreSQL (Debian's ``postgresql`` package; ``.ci/run`` installs it) or the ``team`` extra.
"""

from __future__ import annotations

import csv
import glob
import importlib.util
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.pipeline_project import REPO, tiny_project
from tests.team_stack import client_env, team_stack

pytestmark = [pytest.mark.e2e, pytest.mark.shared_infra]
NAME = "classiflow-shapes"


def _postgres() -> bool:
    return bool(glob.glob("/usr/lib/postgresql/*/bin/initdb") or shutil.which("initdb"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if not _postgres():
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("psycopg") is None:
        pytest.skip("the team extra is not installed (pip install -e '.[team]')")
    with team_stack(tmp_path_factory.mktemp("infra") / "stack") as info:
        yield info


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return tiny_project(tmp_path_factory.mktemp("team"))


def _run(proj: Path, env: dict, *command: str) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=proj, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, " ".join(command) + "\n" + done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _bucket(stack: dict, bucket: str) -> list[str]:
    import boto3

    s3 = boto3.client(
        "s3", endpoint_url=stack["DVC_S3_ENDPOINT"], region_name="us-east-1",
        aws_access_key_id=stack["AWS_ACCESS_KEY_ID"], aws_secret_access_key=stack["AWS_SECRET_ACCESS_KEY"],
    )  # fmt: skip
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def test_the_pipeline_tracks_registers_promotes_and_predicts_through_the_shared_server(stack, project):
    import mlflow

    env = client_env(stack)
    _run(project, env, "dvc", "repro")
    assert not (project / "mlflow.db").exists(), "nothing tracked locally"
    client = mlflow.MlflowClient(stack["MLFLOW_TRACKING_URI"], registry_uri=stack["MLFLOW_TRACKING_URI"])
    version = client.get_model_version_by_alias(NAME, "challenger")
    assert client.get_run(version.run_id).data.tags["classiflow.stage"] == "register"
    assert any(key.endswith("model.onnx") for key in _bucket(stack, "mlflow")), "artifacts live in S3"

    promoted = _run(project, env, "classiflow", "promote", "--version", version.version)
    assert f"promoted {NAME} version {version.version}" in promoted.stdout
    assert client.get_model_version_by_alias(NAME, "champion").version == version.version
    _run(project, env, "classiflow", "predict", str(project.parent / "shapes" / "test"), "--out", "served.csv")
    rows = list(csv.DictReader((project / "served.csv").open()))
    assert len(rows) == 8 * 3 and all(row["error"] == "" for row in rows)


def test_dvc_pushes_and_pulls_the_pipeline_outputs_through_an_s3_remote(stack, project):
    keys = {k: stack[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}  # DVC talks to S3 itself
    env = client_env(stack, **keys)
    if not (project / "dvc.lock").exists():
        _run(project, env, "dvc", "repro")
    _run(project, env, "dvc", "remote", "add", "-d", "team", "s3://dvc/classiflow")
    _run(project, env, "dvc", "remote", "modify", "team", "endpointurl", stack["DVC_S3_ENDPOINT"])
    _run(project, env, "dvc", "push")
    assert _bucket(stack, "dvc"), "the remote holds the outputs"
    model = (project / "models" / "model.pt").read_bytes()
    shutil.rmtree(project / ".dvc" / "cache")
    shutil.rmtree(project / "models")
    _run(project, env, "dvc", "pull")
    assert (project / "models" / "model.pt").read_bytes() == model
    assert "up to date" in _run(project, env, "dvc", "status").stdout


def test_a_server_that_dies_mid_train_fails_the_stage_in_one_line_and_a_rerun_records_the_model(stack, project):
    """Runs last: it stops the module's MLflow server, then starts it again with scripts/infra_up.sh. A longer
    training of the module's project makes DVC rerun only the train stage."""
    import mlflow

    proj = project
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["train"].update(epochs=300, min_steps=0)
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = client_env(stack, MLFLOW_HTTP_REQUEST_MAX_RETRIES="1", MLFLOW_HTTP_REQUEST_TIMEOUT="3")
    last = proj / "models" / "last.pt"
    proc = subprocess.Popen(
        ["dvc", "repro", "train"], cwd=proj, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(int((stack["dir"] / "mlflow.pid").read_text()), signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode != 0, "the server was stopped after training had ended"
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"MLflow at {stack['MLFLOW_TRACKING_URI']}" in errors[0], err[-3000:]
    assert "Traceback" not in err
    assert last.exists(), "the trained state stays, so the rerun need not train again"

    up = subprocess.run(
        ["bash", REPO / "scripts/infra_up.sh", stack["dir"]], env=stack["up_env"], capture_output=True, text=True
    )
    assert up.returncode == 0, up.stderr
    again = _run(proj, client_env(stack), "dvc", "repro", "train")  # MLflow's own retries and timeout again
    assert "resuming from epoch 300 of 300" in again.stdout + again.stderr
    assert not last.exists()
    client = mlflow.MlflowClient(stack["MLFLOW_TRACKING_URI"], registry_uri=stack["MLFLOW_TRACKING_URI"])
    runs = client.search_runs(
        [client.get_experiment_by_name("classiflow").experiment_id],
        "tags.`classiflow.stage` = 'train' and attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"],
    )  # fmt: skip
    assert len(client.get_metric_history(runs[0].info.run_id, "val_accuracy")) == 300
