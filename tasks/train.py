"""Train task: fit the configured model and log every epoch to MLflow."""

from __future__ import annotations

import mlflow
from prefect import task

from classiflow.config import Params
from classiflow.layout import Layout
from classiflow.stages import train as train_stage
from tasks.tracking import log_to_pipeline, run_logger, stage_run


@task(name="train")
def train(root: str, params: Params, pipeline_run_id: str | None = None) -> dict:
    layout = Layout.at(root)
    log = run_logger()

    def on_epoch_end(stats: dict) -> None:
        epoch = stats["epoch"]
        mlflow.log_metrics({k: v for k, v in stats.items() if k != "epoch"}, step=epoch)
        log.info(
            "epoch %d: train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.0f img/s",
            epoch,
            stats["train_loss"],
            stats["train_accuracy"],
            stats["val_loss"],
            stats["val_accuracy"],
            stats["images_per_second"],
        )

    with stage_run("train", layout, params, pipeline_run_id, kind="deep") as pipeline:
        mlflow.log_params({k: v for k, v in params.flat().items() if k.startswith(("model.", "train."))})
        summary = train_stage.run(layout, params, on_epoch_end)
        final = {k: v for k, v in summary.items() if isinstance(v, (int, float))}
        mlflow.log_metrics(final)
        mlflow.set_tags({"device": summary["device"], "data_hash": summary["data_hash"]})
        mlflow.log_artifact(str(layout.train_history))
        log_to_pipeline(
            pipeline, metrics={k: final[k] for k in ("best_val_accuracy", "images_per_second", "train_seconds")}
        )
    log.info("train: best val accuracy %.4f at epoch %d", summary["best_val_accuracy"], summary["best_epoch"])
    return summary
