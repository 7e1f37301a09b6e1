"""Checks on the test split that decide whether an exported file may be kept.

They compare against the eager PyTorch logits of the same images, not against labels alone: an fp32 export
must compute the same function, and an int8 one may differ only within the configured margins. A failure
names the file and the numbers, because the fix (a looser margin, more calibration images, another format)
depends on by how much it failed.

Agreement is counted on the images PyTorch decides: those whose top two softmax probabilities are at least
``tie_margin`` apart. On a near-tie PyTorch's own class is arbitrary (a perturbation the size of int8's
rounding tips it either way), and a briefly trained model has many: the default 2-epoch fastnet on CIFAR-10
has them on 10.8% of the test images; int8 flipped 1.8% of all its predictions, nearly all of them ties,
while its accuracy moved by 0.16 points, and it agreed on 99.9% of the decided images. A broken file
disagrees on decided images as well (the collapsed fastnet file: 41%). Agreement on every image is reported
beside it.
"""

from __future__ import annotations

import numpy as np

from classiflow.errors import ClassiflowError


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean()) if len(labels) else 0.0


def check_fp32(name: str, reference: np.ndarray, logits: np.ndarray, atol: float) -> float:
    """The largest absolute logit difference, if it is within ``atol`` times the logits' scale.

    The scale is the largest reference logit, floored at 1: float32 keeps about 7 digits, so a model
    whose logits reach 1e9 (a diverged run) differs by ~100 between two correct runtimes.
    """
    if logits.shape != reference.shape:
        raise ClassiflowError(f"{name}: logits of shape {logits.shape}, PyTorch gives {reference.shape}")
    diff = float(np.abs(logits - reference).max()) if reference.size else 0.0
    scale = max(1.0, float(np.abs(reference).max())) if reference.size else 1.0
    if not diff <= atol * scale:  # also catches NaN
        scaled = f" x the largest logit {scale:.3g}" if scale > 1 else ""
        raise ClassiflowError(
            f"{name}: max abs logit difference {diff:.3g} from PyTorch on {len(reference)} test images "
            f"exceeds export.atol {atol:g}{scaled}"
        )
    return diff


def decided(reference: np.ndarray, tie_margin: float) -> np.ndarray:
    """Mask of the images whose top two softmax probabilities are at least ``tie_margin`` apart."""
    if reference.shape[1] < 2:
        return np.ones(len(reference), dtype=bool)
    shifted = reference - reference.max(1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(1, keepdims=True)
    top2 = np.sort(probs, 1)[:, -2:]
    return (top2[:, 1] - top2[:, 0]) >= tie_margin


class Int8CheckFailed(ClassiflowError):
    """An int8 file that runs but costs too much; ``measured`` keeps the numbers for the report."""

    def __init__(self, message: str, measured: dict[str, float]):
        super().__init__(message)
        self.measured = measured


def check_int8(
    name: str,
    reference: np.ndarray,
    logits: np.ndarray,
    labels: np.ndarray,
    max_drop: float,
    min_agreement: float,
    tie_margin: float,
) -> dict[str, float]:
    """Test accuracy, its drop in points from PyTorch's, and the share of images given the same class."""
    if logits.shape != reference.shape:
        raise ClassiflowError(f"{name}: logits of shape {logits.shape}, PyTorch gives {reference.shape}")
    fp32, int8 = accuracy(reference, labels), accuracy(logits, labels)
    # from counts: 5 of 1,000 images is exactly 0.5 points, not 0.5000000000000004 > 0.5
    lost = int((reference.argmax(1) == labels).sum()) - int((logits.argmax(1) == labels).sum())
    same = logits.argmax(1) == reference.argmax(1)
    clear = decided(reference, tie_margin)
    measured = {
        "accuracy": int8,
        "accuracy_drop_points": 100.0 * lost / len(labels) if len(labels) else 0.0,
        "agreement": float(same.mean()) if len(same) else 1.0,
        "decided_agreement": float(same[clear].mean()) if clear.any() else 1.0,
        "decided_images": int(clear.sum()),
    }
    if measured["accuracy_drop_points"] > max_drop:
        raise Int8CheckFailed(
            f"{name}: test accuracy {100 * int8:.2f}% vs {100 * fp32:.2f}% in PyTorch, a drop of "
            f"{measured['accuracy_drop_points']:.2f} points > export.int8_max_accuracy_drop {max_drop:g}",
            measured,
        )
    if measured["decided_agreement"] < min_agreement:
        raise Int8CheckFailed(
            f"{name}: predicts PyTorch's class on {100 * measured['decided_agreement']:.2f}% of the "
            f"{measured['decided_images']} test images PyTorch decides (top two >= {tie_margin:g} apart) "
            f"< export.int8_min_agreement {100 * min_agreement:g}%",
            measured,
        )
    return measured
