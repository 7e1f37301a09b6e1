"""Download and prepare tasks."""

from __future__ import annotations

import mlflow
from prefect import task

from classiflow.config import Params
from classiflow.layout import Layout
from classiflow.stages import download as download_stage
from classiflow.stages import prepare as prepare_stage
from tasks.tracking import log_to_pipeline, run_logger, stage_run


@task(name="download", retries=2, retry_delay_seconds=10)
def download(root: str, params: Params, pipeline_run_id: str | None = None) -> dict:
    layout = Layout.at(root)
    with stage_run("download", layout, params, pipeline_run_id) as pipeline:
        manifest = download_stage.run(layout, params)
        mlflow.log_params({"data.source": params.data.source, "data.sha256": params.data.sha256})
        mlflow.set_tags({"source_kind": manifest["kind"], "source_sha256": manifest.get("sha256") or ""})
        mlflow.log_dict(manifest, "manifest.json")
        log_to_pipeline(pipeline, tags={"dataset": manifest["name"]})
    run_logger().info("download: %s %s into %s", manifest["kind"], manifest["source"], layout.raw)
    return manifest


@task(name="prepare")
def prepare(root: str, params: Params, pipeline_run_id: str | None = None) -> dict:
    layout = Layout.at(root)
    with stage_run("prepare", layout, params, pipeline_run_id) as pipeline:
        meta = prepare_stage.run(layout, params)
        mlflow.log_params({k: v for k, v in params.flat().items() if k.startswith("data.")})
        mlflow.log_metrics(
            {f"{k}_size": v for k, v in meta["sizes"].items()} | {"skipped_files": meta["skipped_count"]}
        )
        mlflow.set_tag("data_hash", meta["data_hash"])
        mlflow.log_dict(meta, "meta.json")
        log_to_pipeline(pipeline, tags={"data_hash": meta["data_hash"], "dataset": meta["dataset"]})
    sizes = ", ".join(f"{k} {v}" for k, v in meta["sizes"].items())
    run_logger().info(
        "prepare: %d classes, %s, %dx%dx%d; %d file(s) skipped; data hash %s",
        len(meta["classes"]),
        sizes,
        meta["image_size"],
        meta["image_size"],
        meta["channels"],
        meta["skipped_count"],
        meta["data_hash"][:12],
    )
    return meta
