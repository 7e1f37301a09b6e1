import csv

import numpy as np
import pytest

from classiflow.evaluation import (
    classification_metrics,
    confusion,
    plot_confusion,
    write_confusion_csv,
    write_predictions_csv,
)


def test_metrics_on_known_predictions():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0])
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class"]["b"] == {
        "precision": pytest.approx(2 / 3),
        "recall": 1.0,
        "f1": pytest.approx(0.8),
        "support": 2,
    }
    assert m["macro_recall"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert confusion(y_true, y_pred, 3).tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_reports_are_written(tmp_path):
    y_true, y_pred = np.array([0, 1, 1]), np.array([0, 1, 0])
    classes = ["cat", "dog"]
    matrix = confusion(y_true, y_pred, 2)
    write_predictions_csv(tmp_path / "p.csv", y_true, y_pred, classes)
    write_confusion_csv(tmp_path / "cm.csv", matrix, classes)
    plot_confusion(tmp_path / "cm.png", matrix, classes, "t")
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert rows == [
        {"actual": "cat", "predicted": "cat"},
        {"actual": "dog", "predicted": "dog"},
        {"actual": "dog", "predicted": "cat"},
    ]
    grid = list(csv.reader(open(tmp_path / "cm.csv")))
    assert grid[0][1:] == classes and sum(int(v) for r in grid[1:] for v in r[1:]) == 3
    assert (tmp_path / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
