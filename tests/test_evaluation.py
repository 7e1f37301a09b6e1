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


def test_tta_is_chosen_on_validation_and_only_for_flip_trained_models():
    from classiflow.errors import ClassiflowError
    from classiflow.stages.evaluate import choose_tta

    assert choose_tta("auto", True, 0.80, 0.81) == (True, "validation accuracy 81.00% with flip TTA vs 80.00% without")
    assert choose_tta("auto", True, 0.80, 0.80)[0] is False  # no gain, no doubled inference
    assert choose_tta("auto", False, 0.80, None) == (False, "the model was not trained with horizontal flips")
    assert choose_tta(True, True, 0.80, 0.70)[0] is True and choose_tta(False, True, 0.7, 0.9)[0] is False
    with pytest.raises(ClassiflowError, match="trained without horizontal flips"):
        choose_tta(True, False, 0.80, None)


def test_shifted_tta_views_are_the_image_moved_diagonally_and_mirrored():
    import torch

    from classiflow.tensors import TTA

    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).view(2, 3, 5, 6)
    views = TTA(shift=1).inputs(x).view(6, 2, 3, 5, 6)
    assert torch.equal(views[0], x) and torch.equal(views[3], x.flip(-1))
    assert torch.equal(views[1][..., 1:, 1:], x[..., :-1, :-1])  # moved down and right
    assert torch.equal(views[2][..., :-1, :-1], x[..., 1:, 1:])  # moved up and left
    assert torch.equal(views[1][..., 0, 1:], x[..., 1, :-1])  # the edge is reflected, not zero
    assert torch.equal(views[4], views[1].flip(-1)) and torch.equal(views[5], views[2].flip(-1))
    assert TTA().inputs(x).shape[0] == 4 and TTA(2).inputs(x).shape == (12, 3, 5, 6)


def test_tta_weighs_the_unshifted_pair_as_much_as_the_four_shifted_views():
    import torch

    from classiflow.tensors import TTA, mirror_average

    per_view = torch.tensor([[8.0], [16.0], [0.0], [0.0], [0.0], [0.0]]).repeat_interleave(3, 0)  # 6 views x 3
    assert torch.equal(TTA(shift=1).average(per_view, 3), torch.full((3, 1), 4.0))  # 8/4 + 16/8
    logits = torch.randn(8, 5)
    assert torch.equal(TTA().average(logits, 4), mirror_average(logits[:4], logits[4:]))
    assert TTA().name == "flip" and TTA(1).name == "flip+shift1" and TTA(1).views == 6


def test_comparison_shows_plain_and_tta_side_by_side(tmp_path):
    from classiflow.baseline.compare import write_comparison

    rows = [
        {
            "model": "fastnet",
            "kind": "deep",
            "accuracy": 0.7435,
            "accuracy_plain": 0.7357,
            "accuracy_tta": 0.7435,
            "macro_f1": 0.74,
            "train_seconds": 90.0,
            "inference_ms_per_image": 0.1,
            "size_bytes": 500_000,
        },
        {
            "model": "sift",
            "kind": "classical",
            "accuracy": 0.55,
            "accuracy_plain": None,
            "accuracy_tta": None,
            "macro_f1": 0.54,
            "train_seconds": 60.0,
            "inference_ms_per_image": 2.0,
            "size_bytes": 9_000,
        },
    ]
    table = write_comparison(rows, tmp_path)["markdown"].read_text()
    assert "| fastnet | deep | 74.35% | 73.57% / 74.35% |" in table and "| sift | classical | 55.00% | - |" in table
