"""``train-flow``: download -> prepare -> augment -> train -> evaluate -> prune -> export -> baseline -> compare
-> register.

It runs the same task code as the DVC stages, in its own working directory
(``runs/<flow run name>`` by default) so that flow runs never disturb the DVC workspace.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, runtime

from classiflow.config import load_params
from classiflow.layout import project_root
from classiflow.recipes import load_recipe
from tasks.augment import augment
from tasks.baseline import baseline, compare
from tasks.data import download, prepare
from tasks.evaluate import evaluate
from tasks.export import export
from tasks.prune import prune
from tasks.registry import register
from tasks.tracking import log_to_pipeline, mark_failed, setup, start_pipeline_run
from tasks.train import train


@flow(name="train-flow")
def train_flow(
    params_file: str = "params.yaml",
    overrides: dict[str, Any] | None = None,
    workdir: str | None = None,
    recipe: str | None = None,
) -> dict:
    """Run the whole pipeline; ``recipe`` names recipes/<name>.yaml, ``overrides`` takes dotted
    keys on top of it, e.g. ``{"train.epochs": 2}``."""
    params = load_params(params_file, (load_recipe(recipe) if recipe else {}) | (overrides or {}))
    run_name = runtime.flow_run.name or "local"
    root = str(Path(workdir) if workdir else project_root() / "runs" / run_name)
    experiment = setup(params)
    pipeline = start_pipeline_run(experiment, params, entry="prefect", name=f"{params.model.name}-{run_name}")
    log_to_pipeline(pipeline, tags={"prefect_flow_run_id": runtime.flow_run.id or "", "workdir": root})
    try:
        download(root, params, pipeline)
        meta = prepare(root, params, pipeline)
        augment(root, params, pipeline)
        summary = train(root, params, pipeline)
        metrics = evaluate(root, params, pipeline)
        pruned = prune(root, params, pipeline)
        exported = export(root, params, pipeline)
        classical = baseline(root, params, pipeline)
        compare(root, params, pipeline)
        registration = register(root, params, pipeline)
    except BaseException:
        mark_failed(pipeline)
        raise
    return {
        "pipeline_run_id": pipeline,
        "workdir": root,
        "data_hash": meta["data_hash"],
        "best_val_accuracy": summary["best_val_accuracy"],
        "test_accuracy": metrics["accuracy"],
        "baseline_test_accuracy": classical["accuracy"],
        "pruned_test_accuracy": pruned["test_accuracy_after"],
        "onnx_latency_ms": exported["trained"]["onnx"]["latency_ms_median"] if "onnx" in exported["trained"] else None,
        **registration,
    }


if __name__ == "__main__":
    train_flow.serve(name="local")
