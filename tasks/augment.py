"""Augment task: record the augmentation policy, preview it, and materialise copies if asked."""

from __future__ import annotations

import mlflow
from prefect import task

from classiflow.config import Params
from classiflow.layout import Layout
from classiflow.stages import augment as augment_stage
from tasks.tracking import run_logger, stage_run


@task(name="augment")
def augment(root: str, params: Params, pipeline_run_id: str | None = None) -> dict:
    layout = Layout.at(root)
    with stage_run("augment", layout, params, pipeline_run_id):
        summary = augment_stage.run(layout, params)
        mlflow.log_params({k: v for k, v in params.flat().items() if k.startswith("augment.")})
        mlflow.log_metric("augment_images_per_second", summary["images_per_second"])
        mlflow.log_param("augment.flip_resolved", summary["flip"]["flip"])
        mlflow.set_tag("augment.flip_reason", summary["flip"]["reason"])
        mlflow.log_artifact(str(layout.augment_policy))
        mlflow.log_artifact(str(layout.augment_preview))
    transforms = ", ".join(summary["transforms"]) or "none"
    run_logger().info("augment: %s; %d materialised copies", transforms, summary["copies"])
    return summary
