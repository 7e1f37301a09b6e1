"""Batch prediction recorded in MLflow, so scheduled runs over a folder leave a history.

Each run is its own MLflow run (tag ``classiflow.kind=predict``) in the pipeline's experiment: which
model version predicted, how many images, how many failed, and the class distribution, as metrics
one can chart across scheduled runs (a drifting share shows up as a moving line), plus the CSV and
a bar chart as artifacts.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import tempfile
from pathlib import Path

import mlflow

from classiflow.atomic import atomic_path, write_json
from classiflow.config import Params
from classiflow.errors import ClassiflowError
from classiflow.layout import project_root
from classiflow.serving.batch import IMAGE_SUFFIXES, Summary, collect, predict_files, summarize, write_csv
from classiflow.tracking.refs import resolve
from classiflow.tracking.store import git_commit, setup

KIND_TAG = "classiflow.kind"


def _metric_key(name: str) -> str:
    """MLflow metric names allow letters, digits and ``_-./ ``; a class called ``a+b`` must still log."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name)


def default_out(folder: Path) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return project_root() / "predictions" / f"{folder.resolve().name or 'root'}-{stamp}.csv"


def distribution_chart(summary: Summary, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = list(summary.counts)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(classes) + 2), 3.2))
    ax.bar(range(len(classes)), [summary.counts[c] for c in classes], color="#4c72b0")
    ax.set_xticks(range(len(classes)), classes, rotation=45 if len(classes) > 6 else 0, ha="right")
    ax.set_ylabel("images")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def batch_predict(
    folder: str, params: Params, model: str | None = None, out: str | None = None, batch_size: int = 64
) -> dict:
    """Predict every image under ``folder`` with ``model`` (default ``@champion``), write a CSV, log it."""
    from classiflow.serving.model import load_model_dir

    log = logging.getLogger("classiflow")
    source = Path(folder)
    inputs = collect([source])
    if not inputs.files:
        raise ClassiflowError(f"{folder}: no image files ({' '.join(IMAGE_SUFFIXES)}) in it")
    serve = params.serve
    model = model or serve.model
    path, name, version, metrics = resolve(model, params)
    loaded = load_model_dir(path, name, version, metrics, threads=serve.threads, prefer=serve.prefer)
    rows = predict_files(loaded, inputs.files, batch_size, max_pixels=serve.max_pixels)
    summary = summarize(rows, loaded.classes, len(inputs.skipped))
    csv_path = write_csv(Path(out) if out else default_out(source), rows, loaded.classes)

    experiment = setup(params)
    tags = {KIND_TAG: "predict", "git_commit": git_commit(), "model_name": name, "model_version": version}
    with mlflow.start_run(experiment_id=experiment, run_name=f"predict-{source.resolve().name}", tags=tags) as run:
        mlflow.log_params(
            {
                "model.ref": model or "@champion (default)",
                "model.name": name,
                "model.version": version,
                "model.runtime": loaded.runtime,
                "input.folder": str(source.resolve()),
                "input.files": len(inputs.files),
                "output.csv": str(csv_path.resolve()),
            }
        )
        values = {"images": summary.images, "failed": summary.failed, "skipped": summary.skipped}
        for cls in loaded.classes:
            values[f"count.{_metric_key(cls)}"] = summary.counts[cls]
            values[f"share.{_metric_key(cls)}"] = summary.shares[cls]
        mlflow.log_metrics(values)
        mlflow.log_artifact(str(csv_path))
        with tempfile.TemporaryDirectory() as tmp:  # only the CSV is left where the user asked
            title = f"{name} v{version}: {summary.images} images from {source.resolve().name}"
            distribution_chart(summary, Path(tmp) / "class_distribution.png", title)
            counts = {"images": summary.images, "failed": summary.failed, "counts": summary.counts}
            write_json(Path(tmp) / "class_counts.json", counts)
            mlflow.log_artifacts(tmp)
        if summary.images == 0:
            raise ClassiflowError(f"{folder}: none of {summary.failed} files could be decoded; see {csv_path}")
    if summary.failed:
        log.warning("batch-predict: %d of %d files could not be read (see the error column)", summary.failed, len(rows))
    log.info("batch-predict: %d images with %s v%s -> %s", summary.images, name, version, csv_path)
    return {
        "run_id": run.info.run_id,
        "csv": str(csv_path),
        "model_name": name,
        "model_version": version,
        "images": summary.images,
        "failed": summary.failed,
        "skipped": summary.skipped,
        "counts": summary.counts,
    }
