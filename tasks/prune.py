"""Prune task: the pruned model's trade-off (accuracy, size, latency) and the sparsity sweep in MLflow."""

from __future__ import annotations

import itertools

import mlflow
from prefect import task

from classiflow.config import Params
from classiflow.layout import Layout
from classiflow.stages import prune as prune_stage
from tasks.tracking import log_to_pipeline, run_logger, stage_run

HEADLINE = ("test_accuracy_after", "accuracy_drop_points", "speedup", "params_after", "sparsity")


@task(name="prune")
def prune(root: str, params: Params, pipeline_run_id: str | None = None) -> dict:
    layout = Layout.at(root)
    log = run_logger()
    step = itertools.count(1)

    def on_epoch_end(stats: dict) -> None:
        metrics = {f"finetune_{k}": v for k, v in stats.items() if k in ("train_loss", "val_loss", "val_accuracy")}
        mlflow.log_metrics(metrics, step=next(step))
        log.info("prune: fine-tune epoch %d, val accuracy %.4f", stats["epoch"], stats["val_accuracy"])

    with stage_run("prune", layout, params, pipeline_run_id, kind="deep") as pipeline:
        mlflow.log_params({f"prune.{k}": v for k, v in params.prune.model_dump().items()})
        result = prune_stage.run(layout, params, params.prune, on_epoch_end)
        numbers = {k: v for k, v in result.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        mlflow.log_metrics({k: float(v) for k, v in numbers.items() if k != "amount"})
        mlflow.set_tags(
            {"data_hash": result["data_hash"], "prune.method": result["method"], "prune.status": result["status"],
             "prune.reason": result["reason"]}
        )  # fmt: skip
        mlflow.log_artifact(str(layout.prune_metrics))
        for path in (layout.prune_sweep_csv, layout.prune_sweep_png):
            if path.exists():
                mlflow.log_artifact(str(path))
        log_to_pipeline(pipeline, metrics={f"prune_{k}": result[k] for k in HEADLINE})
    log.info(
        "prune: %s %.2f -> %d parameters (from %d), test accuracy %.4f (%.2f points lost), batch-1 %.2fx faster",
        result["method"],
        result["amount"],
        result["params_after"],
        result["params_before"],
        result["test_accuracy_after"],
        result["accuracy_drop_points"],
        result["speedup"],
    )
    return {k: v for k, v in result.items() if k not in ("steps_history", "sweep")}
