"""augment.flip auto: mirrored images that look like another class switch flipping off, and the choice travels
from the augment stage to training, evaluation (TTA) and the exported files."""

import numpy as np
import pytest

from classiflow.atomic import read_json, write_json
from classiflow.augment import load_policy
from classiflow.augment.flip import probe_flip, resolve_flip
from classiflow.config import AugmentParams, parse_params
from classiflow.data.prepared import PreparedData
from classiflow.errors import ClassiflowError
from classiflow.layout import Layout
from classiflow.stages import augment as augment_stage
from tests.test_augment import write_prepared


def _bars(n: int, chiral: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class 0 bright on one side, class 1 on the other (chiral: left vs right; symmetric: top vs bottom)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.integers(0, 80, (n, 16, 16, 1)).astype(np.uint8)
    for i, y in enumerate(labels):
        side = slice(0, 8) if y == 0 else slice(8, 16)
        images[i][(slice(None), side) if chiral else (side,)] += 150
    return images, labels


def test_the_probe_gives_the_same_decision_a_chunk_at_a_time(monkeypatch):
    from classiflow.augment import flip

    train, val = _bars(200, True, 0), _bars(60, True, 1)
    whole = probe_flip(*train, *val)
    monkeypatch.setattr(flip, "CHUNK_VALUES", 16 * 16 * 7)  # 7 images per chunk
    monkeypatch.setattr(flip, "MAX_TRAIN", 150)
    chunked, sampled = probe_flip(*train, *val), flip._features(train[0], rows=np.array([5, 9]))
    assert chunked.flip == whole.flip is False
    assert np.array_equal(sampled, flip._features(train[0][[5, 9]]))


def test_mirrored_images_of_another_class_switch_flipping_off():
    decision = probe_flip(*_bars(200, True, 0), *_bars(60, True, 1))
    assert not decision.flip and decision.kept < 0 and "not flipping" in decision.reason
    assert decision.plain_accuracy == 1.0 and decision.chance == 0.5


def test_mirror_symmetric_classes_keep_flipping_on():
    decision = probe_flip(*_bars(200, False, 0), *_bars(60, False, 1))
    assert decision.flip and decision.kept == pytest.approx(1.0) and decision.mirrored_accuracy == 1.0


def test_a_probe_that_cannot_tell_flips_as_for_photos():
    rng = np.random.default_rng(0)
    noise = lambda n: (rng.integers(0, 256, (n, 16, 16, 3)).astype(np.uint8), np.arange(n) % 4)  # noqa: E731
    assert probe_flip(*noise(200), *noise(80)).flip
    assert "too few validation images" in probe_flip(*noise(200), *noise(5)).reason


def test_explicit_flip_and_policy_none_pass_through_unprobed():
    data = PreparedData({}, {}, {})  # never read: nothing is probed
    assert resolve_flip(AugmentParams(flip=False), data)[0].flip is False
    assert resolve_flip(AugmentParams(flip=True), data)[0].flip is True
    cfg, decision = resolve_flip(AugmentParams(policy="none"), data)
    assert cfg.flip is False and decision.reason == "augment.policy is none"


def test_the_stage_writes_the_resolved_flip_that_training_reads(tmp_path):
    write_prepared(tmp_path, n=80)
    layout = Layout.at(tmp_path)
    params_auto = AugmentParams(preview=4)
    summary = augment_stage.run(layout, parse_params({"augment": {"preview": 4}})).value
    policy = read_json(layout.augment_policy)
    assert policy["params"]["flip"] in (True, False) and policy["flip"] == summary["flip"]
    resolved = load_policy(layout.augmented, params_auto, "f" * 64)
    assert resolved.flip is policy["params"]["flip"]
    with pytest.raises(ClassiflowError, match="other augment params or data; rerun the augment stage"):
        load_policy(layout.augmented, params_auto.model_copy(update={"translate": 0}), "f" * 64)
    with pytest.raises(ClassiflowError, match="other augment params or data"):
        load_policy(layout.augmented, params_auto, "0" * 64)
    write_json(layout.augment_policy, policy | {"params": {**policy["params"], "flip": "auto"}})
    with pytest.raises(ClassiflowError, match="other augment params"):
        load_policy(layout.augmented, params_auto.model_copy(update={"flip": not policy["params"]["flip"]}), "f" * 64)
    with pytest.raises(ClassiflowError, match="no policy.json; run the augment stage first"):
        load_policy(tmp_path / "nowhere", params_auto, "f" * 64)
