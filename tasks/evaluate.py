"""Evaluate task: test-split metrics and the confusion matrix, in MLflow and ``metrics/``."""

from __future__ import annotations

import mlflow
from prefect import task

from classiflow.config import Params
from classiflow.layout import Layout
from classiflow.stages import evaluate as evaluate_stage
from tasks.tracking import log_to_pipeline, run_logger, stage_run

HEADLINE = ("accuracy", "macro_precision", "macro_recall", "macro_f1", "test_loss")


@task(name="evaluate")
def evaluate(root: str, params: Params, pipeline_run_id: str | None = None) -> dict:
    layout = Layout.at(root)
    with stage_run("evaluate", layout, params, pipeline_run_id, kind="deep") as pipeline:
        metrics = evaluate_stage.run(layout, params)
        headline = {f"test_{k}" if not k.startswith("test_") else k: metrics[k] for k in HEADLINE}
        views = {f"test_{k}": metrics[k] for k in ("accuracy_plain", "accuracy_tta") if metrics[k] is not None}
        per_class = {
            f"{name}_{m}": v for name, vals in metrics["per_class"].items() for m, v in vals.items() if m != "support"
        }
        mlflow.log_metrics(headline | views | per_class)
        mlflow.set_tags(
            {"data_hash": metrics["data_hash"], "tta": "flip" if metrics["tta"]["used"] else "none",
             "tta_reason": metrics["tta"]["reason"]}
        )  # fmt: skip
        for path in (layout.eval_metrics, layout.confusion_matrix_png, layout.confusion_matrix_csv, layout.per_class):
            mlflow.log_artifact(str(path))
        log_to_pipeline(pipeline, metrics=headline | views)
    run_logger().info(
        "evaluate: test accuracy %.4f, macro F1 %.4f on %d images",
        metrics["accuracy"],
        metrics["macro_f1"],
        metrics["test_size"],
    )
    return metrics
