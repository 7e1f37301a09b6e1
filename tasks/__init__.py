"""Prefect tasks: each wraps one library stage and records it in MLflow."""

import os

for _key, _value in (
    ("MLFLOW_DISABLE_TELEMETRY", "true"),
    ("DO_NOT_TRACK", "1"),
    ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
):
    os.environ.setdefault(_key, _value)
