"""Prefect tasks: each wraps one plain function of classiflow (a stage of the table, batch prediction)."""

import os

for _key, _value in (
    ("MLFLOW_DISABLE_TELEMETRY", "true"),
    ("DO_NOT_TRACK", "1"),
    ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
    ("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore"),
):
    os.environ.setdefault(_key, _value)
