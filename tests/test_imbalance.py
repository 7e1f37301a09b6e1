"""Imbalanced classes: loss weights, the class-balanced epoch draw, balanced accuracy and model selection by it."""

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score

from classiflow.config import parse_params
from classiflow.errors import ClassiflowError
from classiflow.models import build_model
from classiflow.training import fit
from classiflow.training.imbalance import class_weights, epoch_order
from classiflow.training.loop import balanced_accuracy
from tests.conftest import shrunk_train
from tests.test_models_training import _toy_data

CLASSES = ["ok", "short", "open"]
LABELS = np.array([0] * 90 + [1] * 8 + [2] * 2)


def test_balanced_weights_are_n_over_k_times_the_class_count():
    weights = class_weights("balanced", LABELS, CLASSES)
    assert weights.tolist() == pytest.approx([100 / (3 * 90), 100 / (3 * 8), 100 / (3 * 2)])
    assert class_weights("none", LABELS, CLASSES) is None


def test_named_weights_leave_the_other_classes_at_one_and_refuse_unknown_classes():
    assert class_weights({"short": 4.0}, LABELS, CLASSES).tolist() == [1.0, 4.0, 1.0]
    with pytest.raises(ClassiflowError, match=r"unknown class shrt \(the data's classes: ok, short, open\)"):
        class_weights({"shrt": 4.0}, LABELS, CLASSES)


def test_a_class_missing_from_train_keeps_weight_one():
    weights = class_weights("balanced", np.array([0, 0, 0, 1]), CLASSES)
    assert weights[2] == 1.0 and weights[1] > weights[0]


def test_the_balanced_draw_makes_every_class_about_equally_common_and_is_seeded():
    labels = torch.from_numpy(np.repeat(LABELS, 100))  # 10,000 images, 2% in the rarest class
    order = epoch_order(labels, "balanced", torch.Generator().manual_seed(0))
    shares = torch.bincount(labels[order], minlength=3).double() / len(order)
    assert len(order) == len(labels) and shares.tolist() == pytest.approx([1 / 3] * 3, abs=0.02)
    again = epoch_order(labels, "balanced", torch.Generator().manual_seed(0))
    assert torch.equal(order, again)
    plain = epoch_order(labels, "random", torch.Generator().manual_seed(0))
    assert torch.equal(plain.sort().values, torch.arange(len(labels)))  # a permutation: each image once


def test_balanced_accuracy_matches_scikit_learn():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 4, 500), rng.integers(0, 4, 500)
    p[:200] = y[:200]
    assert balanced_accuracy(torch.from_numpy(p), torch.from_numpy(y)) == pytest.approx(balanced_accuracy_score(y, p))


def test_weights_must_be_positive_and_the_sampler_known():
    with pytest.raises(ClassiflowError, match="train.class_weights"):
        parse_params({"train": {"class_weights": {"short": 0}}})
    with pytest.raises(ClassiflowError, match="train.sampler"):
        parse_params({"train": {"sampler": "oversample"}})
    assert parse_params({"train": {"class_weights": {"short": 3}}}).train.class_weights == {"short": 3.0}


def _imbalanced_toy():
    """The toy task with the 'bottom' class cut to 1 in 8 of train."""
    data = _toy_data(n=480)
    keep = np.flatnonzero((data.labels["train"] == 0) | (np.arange(len(data.labels["train"])) % 16 == 1))
    data.images["train"], data.labels["train"] = data.images["train"][keep], data.labels["train"][keep]
    return data


def _balanced_scores(**setting) -> tuple[list[float], object]:
    data = _imbalanced_toy()
    assert np.bincount(data.labels["train"]).tolist() == [80, 10]
    model = build_model("simplecnn", 1, 2, 16)
    cfg = shrunk_train(epochs=4, batch_size=16, lr=0.05, select_by="val_balanced_accuracy", **setting)
    result = fit(model, data, cfg)
    return [h["val_balanced_accuracy"] for h in result.history], result


@pytest.mark.parametrize("setting", [{"sampler": "balanced"}, {"class_weights": "balanced"}])
def test_balanced_training_finds_the_rare_class_that_plain_training_misses(setting):
    plain, _ = _balanced_scores()
    scores, result = _balanced_scores(**setting)
    assert max(plain) == 0.5  # plain training answers 'top' for everything (seeded, 4 epochs)
    assert max(scores) >= 0.9
    assert result.best_epoch == 1 + int(np.argmax(scores))  # kept by train.select_by
    assert result.best_val_accuracy == result.history[result.best_epoch - 1]["val_accuracy"]
