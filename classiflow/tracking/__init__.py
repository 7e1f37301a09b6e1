"""MLflow, in one place: where runs go, how stage runs group, what a stage logs, the registry and its aliases.

Nothing else in classiflow imports MLflow; the library stages return a ``StageResult`` that
:mod:`classiflow.tracking.stage` records. MLflow's telemetry is off before anything here imports it.
"""

import os

for _key, _value in (("MLFLOW_DISABLE_TELEMETRY", "true"), ("DO_NOT_TRACK", "1")):
    os.environ.setdefault(_key, _value)
