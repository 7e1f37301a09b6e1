"""Export task: the verified TorchScript/ONNX/int8 files and their latency table in MLflow."""

from __future__ import annotations

import mlflow
from prefect import task

from classiflow.config import Params
from classiflow.export.report import rejected
from classiflow.layout import Layout
from classiflow.stages import export as export_stage
from tasks.tracking import log_to_pipeline, run_logger, stage_run


def rejection_tags(metrics: dict) -> dict[str, str]:
    """``rejected.<file>`` = why it was left out (MLflow tag values are capped at 5000 characters)."""
    return {f"rejected.{name}": reason[:5000] for name, reason in rejected(metrics).items()}


def flat_metrics(metrics: dict) -> dict[str, float]:
    """``trained/onnx/latency_ms_median``-style keys: one MLflow metric per model, format and figure."""
    out = {}
    for model, formats in metrics.items():
        if not isinstance(formats, dict):
            continue
        for fmt, values in formats.items():
            for key, value in values.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    out[f"{model}/{fmt}/{key}"] = float(value)
    return out


@task(name="export")
def export(root: str, params: Params, pipeline_run_id: str | None = None) -> dict:
    layout = Layout.at(root)
    with stage_run("export", layout, params, pipeline_run_id, kind="deep") as pipeline:
        mlflow.log_params({f"export.{k}": v for k, v in params.export.model_dump().items()})
        metrics = export_stage.run(layout, params, params.export)
        flat = flat_metrics(metrics)
        mlflow.log_metrics(flat)
        mlflow.log_artifact(str(layout.export_report))
        mlflow.log_artifact(str(layout.export_metrics))
        mlflow.set_tags(rejection_tags(metrics) | {"export.tta": metrics["tta"]})
        headline = {k.replace("/", "_"): v for k, v in flat.items() if k.endswith(("latency_ms_median", "accuracy"))}
        log_to_pipeline(pipeline, metrics=headline)
    log = run_logger()
    for model, formats in metrics.items():
        if isinstance(formats, dict):
            for fmt, row in formats.items():
                if row.get("status") == "rejected":
                    continue  # the stage already warned, with the reason
                log.info(
                    "export: %-8s %-18s accuracy %.4f, batch-1 %.3f ms, %.0f img/s",
                    model,
                    fmt,
                    row["accuracy"],
                    row["latency_ms_median"],
                    row["images_per_second"],
                )
    return metrics
