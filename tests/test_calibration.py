"""Temperature scaling and expected calibration error, and the temperature reaching served probabilities."""

import numpy as np
import pytest
import torch

from classiflow.calibration import calibrate, expected_calibration_error, fit_temperature, reliability
from classiflow.serving.model import LoadedModel


def _sampled(n=20_000, k=5, seed=0):
    """Logits and labels drawn from softmax(logits): calibrated at T = 1 by construction."""
    g = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(n, k, generator=g)
    labels = torch.multinomial(torch.softmax(logits, 1), 1, generator=g).squeeze(1)
    return logits, labels


@pytest.mark.parametrize("scale", [0.5, 1.0, 3.0])
def test_the_fitted_temperature_undoes_a_known_over_or_under_confidence(scale):
    logits, labels = _sampled()
    assert fit_temperature(logits * scale, labels) == pytest.approx(scale, rel=0.08)


def test_scaling_lowers_the_ece_of_an_over_confident_model_on_held_out_data():
    val, test = _sampled(seed=1), _sampled(seed=2)
    out = calibrate((val[0] * 3, val[1]), (test[0] * 3, test[1]), enabled=True)
    assert out["ece_before"] > 0.1 and out["ece_after"] < 0.02 and out["nll_after"] < out["nll_before"]
    off = calibrate((val[0] * 3, val[1]), (test[0] * 3, test[1]), enabled=False)
    assert off["temperature"] == 1.0 and off["ece_after"] == off["ece_before"]
    assert out["note"] is None and off["note"] is None


def test_a_separated_validation_split_pins_the_temperature_at_its_bound_and_says_so():
    """Every validation image right: the NLL keeps falling as T shrinks (seen on DeepPCB's 173-image val)."""
    val_logits, val_labels = _sampled(seed=3)
    val_labels = val_logits.argmax(1)
    test = _sampled(seed=4)
    out = calibrate((val_logits, val_labels), test, enabled=True)
    assert out["temperature"] == 0.05 and "sits at its bound 0.05" in out["note"]


def test_ece_by_hand():
    probs = torch.tensor([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.55, 0.45]])
    labels = torch.tensor([0, 1, 0, 0])
    rows = reliability(probs, labels, bins=10)
    assert sum(r["count"] for r in rows) == 4
    # bin 0.9-1.0: confidence 0.95, accuracy 0.5; bin 0.5-0.6: confidence 0.55, accuracy 1.0
    assert expected_calibration_error(rows) == pytest.approx(0.5 * 0.45 + 0.5 * 0.45)


def test_a_probability_of_one_lands_in_the_last_bin():
    rows = reliability(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), bins=15)
    assert rows[-1]["count"] == 1 and rows[-1]["accuracy"] == 1.0


def test_served_probabilities_are_the_softmax_over_the_temperature():
    logits = np.array([[2.0, 0.0, -1.0]], dtype=np.float32)
    model = LoadedModel("m", "1", ["a", "b", "c"], 4, 1, "onnxruntime", temperature=2.0,
                        run_logits=lambda pixels: np.repeat(logits, len(pixels), 0))  # fmt: skip
    probs = model.predict(np.zeros((2, 4, 4, 1), np.uint8))
    expected = torch.softmax(torch.from_numpy(logits) / 2.0, 1).numpy()
    np.testing.assert_allclose(probs, np.repeat(expected, 2, 0), rtol=1e-5)
