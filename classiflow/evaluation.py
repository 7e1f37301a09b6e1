"""Test-split metrics and their reports: scikit-learn metrics, CSV for DVC, a labelled heat map."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Protocol

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from classiflow.atomic import atomic_path, write_text


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    labels = list(range(len(classes)))
    p, r, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    mp, mr, mf1, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_precision": float(mp),
        "macro_recall": float(mr),
        "macro_f1": float(mf1),
        "test_size": int(len(y_true)),
        "per_class": {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, c in enumerate(classes)
        },
    }


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    return confusion_matrix(y_true, y_pred, labels=list(range(n_classes)))


def _csv(rows: list[list]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def write_predictions_csv(path: Path, y_true, y_pred, classes: list[str]) -> None:
    """One row per test image: DVC's ``confusion`` template builds the matrix from these."""
    rows = [["actual", "predicted"]] + [[classes[t], classes[p]] for t, p in zip(y_true, y_pred, strict=True)]
    write_text(path, _csv(rows))


def write_confusion_csv(path: Path, matrix: np.ndarray, classes: list[str]) -> None:
    rows = [["actual \\ predicted", *classes]] + [[c, *map(int, matrix[i])] for i, c in enumerate(classes)]
    write_text(path, _csv(rows))


def write_per_class_csv(path: Path, metrics: dict) -> None:
    rows = [["class", "precision", "recall", "f1", "support"]]
    for c, m in metrics["per_class"].items():
        rows.append([c, f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}", m["support"]])
    write_text(path, _csv(rows))


def plot_confusion(path: Path, matrix: np.ndarray, classes: list[str], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    size = max(5.0, 0.55 * n + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    row_sums = matrix.sum(axis=1, keepdims=True).clip(min=1)
    im = ax.imshow(matrix / row_sums, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of actual class")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                share = matrix[i, j] / row_sums[i, 0]
                ax.text(
                    j,
                    i,
                    int(matrix[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if share > 0.5 else "black",
                )
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


class ReportPaths(Protocol):
    predictions: Path
    confusion_matrix_csv: Path
    confusion_matrix_png: Path
    per_class: Path


def score_and_report(
    paths: ReportPaths, y_true: np.ndarray, y_pred: np.ndarray, classes: list[str], title: str
) -> tuple[dict, np.ndarray]:
    """Metrics plus every report file, the same for the CNN and the classical baseline."""
    metrics = classification_metrics(y_true, y_pred, classes)
    matrix = confusion(y_true, y_pred, len(classes))
    write_predictions_csv(paths.predictions, y_true, y_pred, classes)
    write_confusion_csv(paths.confusion_matrix_csv, matrix, classes)
    write_per_class_csv(paths.per_class, metrics)
    plot_confusion(paths.confusion_matrix_png, matrix, classes, f"{title}: test accuracy {metrics['accuracy']:.2%}")
    return metrics, matrix
