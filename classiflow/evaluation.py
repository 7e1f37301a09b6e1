"""Test-split metrics and their reports: scikit-learn metrics, CSV for DVC, a labelled heat map."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Protocol

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, precision_recall_fscore_support

from classiflow.atomic import atomic_path, write_text


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    labels = list(range(len(classes)))
    p, r, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    mp, mr, mf1, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)) if len(y_true) else 0.0,
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


def row_normalized(matrix: np.ndarray) -> np.ndarray:
    """Each actual class's row as shares of that class (its recall on the diagonal); empty rows stay 0."""
    return matrix / matrix.sum(axis=1, keepdims=True).clip(min=1)


def write_confusion_csv(path: Path, matrix: np.ndarray, classes: list[str]) -> None:
    rows = [["actual \\ predicted", *classes]] + [[c, *map(int, matrix[i])] for i, c in enumerate(classes)]
    write_text(path, _csv(rows))


def write_normalized_confusion_csv(path: Path, matrix: np.ndarray, classes: list[str]) -> None:
    shares = row_normalized(matrix)
    rows = [["actual \\ predicted", *classes]] + [[c, *(f"{v:.4f}" for v in shares[i])] for i, c in enumerate(classes)]
    write_text(path, _csv(rows))


def write_per_class_csv(path: Path, metrics: dict) -> None:
    rows = [["class", "precision", "recall", "f1", "support"]]
    for c, m in metrics["per_class"].items():
        rows.append([c, f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}", m["support"]])
    write_text(path, _csv(rows))


def _panel(ax, values: np.ndarray, text: np.ndarray, classes: list[str], title: str, vmax: float) -> object:
    n = len(classes)
    im = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=vmax)
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                light = values[i, j] > 0.5 * vmax
                ax.text(j, i, text[i, j], ha="center", va="center", fontsize=7, color="white" if light else "black")
    return im


def plot_confusion(path: Path, matrix: np.ndarray, classes: list[str], title: str) -> None:
    """Raw counts beside the row-normalised matrix (each actual class's shares: recall on the diagonal), which
    is the one to read when the classes are imbalanced."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(5.0, 0.55 * len(classes) + 2.5)
    fig, (raw, norm) = plt.subplots(1, 2, figsize=(2 * size + 2, size))
    shares = row_normalized(matrix)
    counts = matrix.astype(int).astype(str)
    im = _panel(raw, matrix, counts, classes, "counts", float(max(matrix.max(), 1)))
    fig.colorbar(im, ax=raw, fraction=0.046, pad=0.04, label="images")
    im = _panel(norm, shares, np.vectorize(lambda v: f"{100 * v:.0f}")(shares), classes, "% of actual class", 1.0)
    fig.colorbar(im, ax=norm, fraction=0.046, pad=0.04, label="share of actual class")
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


class ReportPaths(Protocol):
    predictions: Path
    confusion_matrix_csv: Path
    confusion_normalized_csv: Path
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
    write_normalized_confusion_csv(paths.confusion_normalized_csv, matrix, classes)
    write_per_class_csv(paths.per_class, metrics)
    plot_confusion(paths.confusion_matrix_png, matrix, classes, f"{title}: test accuracy {metrics['accuracy']:.2%}")
    return metrics, matrix
