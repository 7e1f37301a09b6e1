"""Operating points: thresholds chosen on validation, the answer they give, and where that answer goes."""

import json

import numpy as np
import pytest

from classiflow.errors import ClassiflowError
from classiflow.operating import UNCERTAIN, OperatingPoint, choose, decide, met, summarize
from classiflow.promotion import decide as gate

CLASSES = ["ok", "short", "open"]


def _split(n=3000, seed=0, sharp=2.5):
    """Noisy three-class probabilities: each image's own class is favoured, with overlap."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    logits = rng.normal(0, 1, (n, 3))
    logits[np.arange(n), labels] += sharp
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probs, labels


def test_defects_take_precedence_and_nothing_passing_is_uncertain():
    point = OperatingPoint("min_recall", 0.99, "ok", {"ok": 0.5, "short": 0.2, "open": 0.3})
    probs = np.array([
        [0.70, 0.25, 0.05],  # short passes 0.2: a defect although ok is likelier
        [0.45, 0.15, 0.40],  # open passes
        [0.45, 0.15, 0.25],  # nothing passes, ok below 0.5: uncertain
        [0.75, 0.10, 0.15],  # ok
    ])  # fmt: skip
    assert decide(probs, CLASSES, point).tolist() == [1, 2, UNCERTAIN, 0]
    assert decide(probs, CLASSES, None).tolist() == [0, 0, 0, 0]
    selective = OperatingPoint("min_recall", 0.9, None, {"ok": 0.6, "short": 0.5, "open": 0.5})
    assert decide(probs, CLASSES, selective).tolist() == [0, UNCERTAIN, UNCERTAIN, 0]


def test_min_recall_catches_the_target_share_on_validation_and_about_it_on_test():
    val, test = _split(seed=1), _split(seed=2)
    point = choose(*val, CLASSES, "min_recall", 0.99, "ok")
    assert point.thresholds["ok"] == 0.0
    on_val, on_test = summarize(*val, CLASSES, point), summarize(*test, CLASSES, point)
    for c in ("short", "open"):
        assert on_val["per_class"][c]["caught"] >= 0.99
        low, high = on_test["per_class"][c]["caught_ci"]
        assert low <= on_test["per_class"][c]["caught"] <= high and high >= 0.99 > low - 0.02
    assert met(on_val, point) and 0 < on_test["false_alarm"] < 1  # the price of catching 99%


def test_max_false_alarm_bounds_the_flagged_normal_images_on_validation():
    val = _split(seed=3)
    point = choose(*val, CLASSES, "max_false_alarm", 0.05, "ok")
    on_val = summarize(*val, CLASSES, point)
    assert on_val["false_alarm"] <= 0.05 and met(on_val, point)
    with pytest.raises(ClassiflowError, match="needs evaluate.normal_class"):
        choose(*val, CLASSES, "max_false_alarm", 0.05, None)


def test_without_a_normal_class_an_unreachable_recall_says_the_best_reachable():
    val = _split(seed=4, sharp=1.0)  # plain recall far below 99%
    with pytest.raises(ClassiflowError, match=r"no threshold reaches that recall of ok on validation \(best 0\.\d+"):
        choose(*val, CLASSES, "min_recall", 0.99, None)
    point = choose(*val, CLASSES, "min_recall", 0.3, None)
    assert all(row["recall"] >= 0.3 for row in summarize(*val, CLASSES, point)["per_class"].values())


def test_a_normal_class_that_is_not_a_class_is_one_clear_error():
    with pytest.raises(ClassiflowError, match=r"evaluate.normal_class: 'good' is not a class \(classes: ok, short"):
        choose(*_split(), CLASSES, "min_recall", 0.9, "good")


def test_served_answers_use_the_operating_point():
    from classiflow.serving.model import LoadedModel

    point = OperatingPoint("min_recall", 0.99, "ok", {"ok": 0.9, "short": 0.5, "open": 0.5})
    model = LoadedModel("m", "1", CLASSES, 4, 1, "onnxruntime", operating_point=point)
    assert model.decide(np.array([[0.6, 0.2, 0.2], [0.1, 0.8, 0.1], [0.95, 0.03, 0.02]])) == [
        "uncertain",
        "short",
        "ok",
    ]
    assert json.loads(json.dumps(point.as_dict())) == point.as_dict()


def test_the_gate_refuses_a_candidate_that_missed_its_operating_point():
    correct = np.ones(20, bool)
    assert not gate(correct, None, operating_point="missed").promote
    assert "missed its operating point" in gate(correct, None, operating_point="missed").reason
    assert gate(correct, None, operating_point="met").promote and gate(correct, None).promote
