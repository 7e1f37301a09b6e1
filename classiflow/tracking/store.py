"""Where MLflow runs and models go: the tracking URI, its experiment, and the code's git commit."""

from __future__ import annotations

import subprocess
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from classiflow.config import Params
from classiflow.layout import project_root
from classiflow.tracking.uri import check_reachable, tracking_uri


def setup(params: Params) -> str:
    """Point MLflow at the configured store and return the experiment id."""
    uri = tracking_uri()
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient()
    exp = client.get_experiment_by_name(params.tracking.experiment)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    try:
        return client.create_experiment(params.tracking.experiment, artifact_location=location)
    except mlflow.exceptions.MlflowException:
        return client.get_experiment_by_name(params.tracking.experiment).experiment_id


def client(params: Params) -> MlflowClient:
    """A client of the configured store (tracking and registry)."""
    setup(params)
    return MlflowClient()


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, cwd=project_root(), timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD") or "unknown"
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty and commit != "unknown" else commit
