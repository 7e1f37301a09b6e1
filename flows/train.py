"""``train-flow``: every stage of ``classiflow.pipeline.STAGES``, in the table's order.

It runs the same stage functions as the DVC stages, in its own working directory
(``runs/<flow run name>`` by default) so that flow runs never disturb the DVC workspace.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, runtime

from classiflow.config import load_params
from classiflow.layout import project_root
from classiflow.recipes import load_recipe
from classiflow.tracking.runs import log_to_pipeline, mark_failed, start_pipeline_run
from classiflow.tracking.store import setup
from tasks.stages import TASKS


@flow(name="train-flow")
def train_flow(
    params_file: str = "params.yaml",
    overrides: dict[str, Any] | None = None,
    workdir: str | None = None,
    recipe: str | None = None,
    tags: dict[str, str] | None = None,
) -> dict:
    """Run the whole pipeline; ``recipe`` names recipes/<name>.yaml, ``overrides`` takes dotted
    keys on top of it, e.g. ``{"train.epochs": 2}``; ``tags`` go on the pipeline's MLflow run (a sweep's)."""
    params = load_params(params_file, (load_recipe(recipe) if recipe else {}) | (overrides or {}))
    run_name = runtime.flow_run.name or "local"
    root = str(Path(workdir) if workdir else project_root() / "runs" / run_name)
    experiment = setup(params)
    pipeline = start_pipeline_run(experiment, params, entry="prefect", name=f"{params.model.name}-{run_name}")
    log_to_pipeline(pipeline, tags={"prefect_flow_run_id": runtime.flow_run.id or "", "workdir": root} | (tags or {}))
    try:
        out = {name: task(root, params, pipeline) for name, task in TASKS.items()}
    except BaseException:
        mark_failed(pipeline)
        raise
    return {
        "pipeline_run_id": pipeline,
        "workdir": root,
        "data_hash": out["prepare"]["data_hash"],
        "best_val_accuracy": out["train"]["best_val_accuracy"],
        "test_accuracy": out["evaluate"]["accuracy"],
        "baseline_test_accuracy": out["baseline"]["accuracy"],
        "pruned_test_accuracy": out["prune"]["test_accuracy_after"],
        "onnx_latency_ms": onnx["latency_ms_median"] if (onnx := out["export"]["trained"].get("onnx")) else None,
        **out["register"],
    }


if __name__ == "__main__":
    train_flow.serve(name="local")
