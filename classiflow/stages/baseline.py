"""Baseline stage: a classical model (SIFT bag of words or HOG, then an SVM) on the prepared data.

It fits on train + val: its hyperparameters come from ``params.yaml`` and nothing is
selected on a validation score, so holding val out would only throw images away (for
CIFAR-10 the two together are the standard 50,000-image training set). The codebook and
the SVM never see a test image, and every reported score is on the test split.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from classiflow.atomic import write_json
from classiflow.baseline.compare import comparison_row, model_name
from classiflow.baseline.features import extract, fit_codebook
from classiflow.baseline.model import BaselineModel, check_labels, fit_classifier, save_model
from classiflow.baseline.params import BaselineParams
from classiflow.baseline.paths import baseline_paths
from classiflow.config import Params
from classiflow.data.prepared import PreparedData, load_prepared
from classiflow.errors import ClassiflowError
from classiflow.evaluation import score_and_report
from classiflow.layout import Layout, project_root
from classiflow.stages.result import NO_REPORT, Report, StageResult

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


def training_set(data: PreparedData, params: BaselineParams) -> tuple[np.ndarray, np.ndarray]:
    """Train + val, optionally cut to ``max_train`` images with the class shares kept."""
    images = np.concatenate([data.images["train"], data.images["val"]])
    labels = np.concatenate([data.labels["train"], data.labels["val"]])
    check_labels(labels)
    if params.max_train is None or params.max_train >= len(labels):
        return images, labels
    try:
        keep, _ = train_test_split(
            np.arange(len(labels)), train_size=params.max_train, stratify=labels, random_state=params.seed
        )
    except ValueError:
        raise ClassiflowError(
            f"baseline.max_train {params.max_train}: no stratified sample of that size from {len(labels)} "
            f"images in {len(np.unique(labels))} classes; change it or set it to null"
        ) from None
    keep = np.sort(keep)
    return images[keep], labels[keep]


def run(layout: Layout, params: Params, report: Report = NO_REPORT) -> StageResult:
    """The stage: :func:`fit_baseline` with ``params.baseline``, features cached in the project."""
    result = fit_baseline(layout, params.baseline, project_root() / FEATURE_CACHE)
    paths = result["paths"]
    return StageResult(
        {k: v for k, v in result.items() if k != "confusion_matrix"},
        metrics={k: float(result[k]) for k in SCALARS},
        tags={"data_hash": result["data_hash"], "features_cached": str(result["features_cached"])},
        artifacts={paths[k]: "baseline" for k in ("metrics", "confusion_matrix_png", "confusion_matrix_csv",
                                                  "confusion_normalized_csv", "per_class", "model")},
        pipeline_metrics={"baseline_test_accuracy": result["accuracy"], "baseline_macro_f1": result["macro_f1"]},
        summary=[
            f"baseline: {model_name(params.baseline)} test accuracy {result['accuracy']:.4f}, macro F1 "
            f"{result['macro_f1']:.4f} (features {result['feature_seconds']:.1f} s, fit {result['fit_seconds']:.1f} s, "
            f"{result['zero_histogram_images']} zero histograms)"
        ],
    )  # fmt: skip


def _save(path: Path, params: BaselineParams, data: PreparedData, x_train: np.ndarray, codebook, pipeline) -> int:
    """The fitted model with what it was trained on (classes, image shape, data hash); its size in bytes."""
    model = BaselineModel(
        params=params,
        classes=list(data.classes),
        codebook=codebook,
        pipeline=pipeline,
        image_shape=tuple(int(s) for s in x_train.shape[1:]),
        data_hash=data.data_hash,
        info={"train_size": int(len(x_train)), "dataset": data.meta.get("dataset")},
    )
    return save_model(path, model)


def fit_baseline(layout: Layout, params: BaselineParams, cache_dir: str | Path | None = None) -> dict:
    """Fit, score on the test split, write the model and reports; return metrics and paths.

    ``cache_dir`` holds extracted features between runs (None: no cache).
    """
    paths = baseline_paths(layout)
    data = load_prepared(layout.prepared, ("train", "val", "test"))
    x_train, y_train = training_set(data, params)
    x_test, y_test = data.images["test"], data.labels["test"]
    classes = data.classes

    codebook, codebook_seconds = fit_codebook(x_train, params, cache_dir)
    train_feats = extract(x_train, params, codebook, cache_dir, "train features")
    test_feats = extract(x_test, params, codebook, cache_dir, "test features")

    started = time.perf_counter()
    pipeline = fit_classifier(train_feats.matrix, y_train, params)
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    y_pred = pipeline.predict(test_feats.matrix)
    predict_seconds = time.perf_counter() - started

    model_bytes = _save(paths.model, params, data, x_train, codebook, pipeline)

    title = f"{model_name(params)} on {data.meta.get('dataset', 'data')}"
    metrics, matrix = score_and_report(paths, y_test, y_pred, classes, title)

    n_test = max(1, len(y_test))
    feature_seconds = codebook_seconds + train_feats.seconds + test_feats.seconds
    metrics.update(
        {
            "features": params.features,
            "classifier": params.classifier,
            "train_size": int(len(y_train)),
            "feature_dim": int(train_feats.matrix.shape[1]),
            "feature_seconds": round(feature_seconds, 3),
            "codebook_seconds": round(codebook_seconds, 3),
            "features_cached": bool(train_feats.cached and test_feats.cached),
            "fit_seconds": round(fit_seconds, 3),
            "train_seconds": round(codebook_seconds + train_feats.seconds + fit_seconds, 3),
            "predict_ms_per_image": round(1000 * predict_seconds / n_test, 4),
            "inference_ms_per_image": round(1000 * (test_feats.seconds + predict_seconds) / n_test, 4),
            "model_bytes": int(model_bytes),
            "zero_histogram_images": train_feats.zero_count + test_feats.zero_count,
            "zero_histogram_test_images": test_feats.zero_count,
        }
    )
    write_json(paths.metrics, metrics)
    return {
        **metrics,
        "data_hash": data.data_hash,
        "confusion_matrix": matrix.tolist(),
        "paths": paths.as_dict(),
        "params": params.model_dump(),
        "comparison_row": comparison_row(model_name(params), metrics),
    }
