"""Classical baseline and comparison tasks: same prepared data, same experiment, tagged ``classical``."""

from __future__ import annotations

import mlflow
from prefect import task

from classiflow.config import Params
from classiflow.layout import Layout, project_root
from classiflow.stages import baseline as baseline_stage
from classiflow.stages import compare as compare_stage
from tasks.tracking import log_to_pipeline, run_logger, stage_run

FEATURE_CACHE = ".cache/baseline-features"
SCALARS = (
    "accuracy",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "feature_seconds",
    "codebook_seconds",
    "fit_seconds",
    "train_seconds",
    "predict_ms_per_image",
    "inference_ms_per_image",
    "model_bytes",
    "zero_histogram_images",
    "zero_histogram_test_images",
    "feature_dim",
    "train_size",
)


@task(name="baseline")
def baseline(root: str, params: Params, pipeline_run_id: str | None = None) -> dict:
    layout = Layout.at(root)
    with stage_run("baseline", layout, params, pipeline_run_id, kind="classical") as pipeline:
        mlflow.log_params({f"baseline.{k}": v for k, v in params.baseline.model_dump().items()})
        result = baseline_stage.run(layout, params.baseline, project_root() / FEATURE_CACHE)
        mlflow.log_metrics({k: float(result[k]) for k in SCALARS})
        mlflow.set_tags({"data_hash": result["data_hash"], "features_cached": str(result["features_cached"])})
        for key in ("metrics", "confusion_matrix_png", "confusion_matrix_csv", "per_class", "model"):
            mlflow.log_artifact(result["paths"][key], "baseline")
        log_to_pipeline(
            pipeline, metrics={"baseline_test_accuracy": result["accuracy"], "baseline_macro_f1": result["macro_f1"]}
        )
    run_logger().info(
        "baseline: %s test accuracy %.4f, macro F1 %.4f (features %.1f s, fit %.1f s, %d zero histograms)",
        baseline_stage.model_name(params.baseline),
        result["accuracy"],
        result["macro_f1"],
        result["feature_seconds"],
        result["fit_seconds"],
        result["zero_histogram_images"],
    )
    return {k: v for k, v in result.items() if k != "confusion_matrix"}


@task(name="compare")
def compare(root: str, params: Params, pipeline_run_id: str | None = None) -> dict:
    layout = Layout.at(root)
    with stage_run("compare", layout, params, pipeline_run_id):
        result = compare_stage.run(layout, params)
        mlflow.log_artifact(result["markdown"])
        mlflow.log_artifact(result["plot"])
        mlflow.log_table({k: [row[k] for row in result["rows"]] for k in result["rows"][0]}, "comparison.json")
    for row in result["rows"]:
        run_logger().info("compare: %-28s %-9s accuracy %.4f", row["model"], row["kind"], row["accuracy"])
    return result
