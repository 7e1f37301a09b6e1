"""Which MLflow store a run goes to, and whether a tracking server answers: without importing MLflow,
so a stage process can fail on an unreachable server at once, before its work starts."""

from __future__ import annotations

import os

from classiflow.errors import ClassiflowError
from classiflow.layout import project_root


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def check_reachable(uri: str) -> None:
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
    except requests.RequestException as err:
        reason = type(err).__name__ if isinstance(err, requests.ConnectionError) else err
        raise ClassiflowError(
            f"MLflow tracking server {uri} is unreachable ({reason}); start it or unset MLFLOW_TRACKING_URI"
        ) from None
