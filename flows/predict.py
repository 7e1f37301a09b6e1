"""``batch-predict-flow``: predict every image in a folder with the champion, for scheduled runs.

Deployed as ``batch-predict-flow/folder`` (prefect.yaml); each run writes a CSV and one MLflow run
tagged ``classiflow.kind=predict`` with the counts and class distribution (tasks/predict.py).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, runtime

from classiflow.config import load_params
from classiflow.layout import project_root
from tasks.predict import batch_predict


@flow(name="batch-predict-flow")
def batch_predict_flow(
    folder: str, model: str | None = None, out: str | None = None, params_file: str = "params.yaml"
) -> dict:
    """``folder`` is walked recursively; ``model`` is a registry reference (default ``@champion``) or a
    directory; ``out`` defaults to ``predictions/<folder>-<UTC time>.csv`` in the project."""
    params = load_params(params_file)
    if out is None and runtime.flow_run.name:
        stamp = runtime.flow_run.name
        out = str(project_root() / "predictions" / f"{Path(folder).resolve().name}-{stamp}.csv")
    return batch_predict(folder, params, model, out)


if __name__ == "__main__":
    batch_predict_flow.serve(name="folder", parameters={"folder": "incoming"})
