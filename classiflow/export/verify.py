"""Checks on the test split that decide whether an exported file may be kept.

They compare against the eager PyTorch logits of the same images, not against labels alone: an fp32 export
must compute the same function, and an int8 one may differ only within the configured margins. A failure
names the file and the numbers, because the fix (a looser margin, more calibration images, another format)
depends on by how much it failed.
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


def check_int8(
    name: str,
    reference: np.ndarray,
    logits: np.ndarray,
    labels: np.ndarray,
    max_drop: float,
    min_agreement: float,
) -> dict[str, float]:
    """Test accuracy, its drop in points from PyTorch's, and the share of images given the same class."""
    if logits.shape != reference.shape:
        raise ClassiflowError(f"{name}: logits of shape {logits.shape}, PyTorch gives {reference.shape}")
    fp32, int8 = accuracy(reference, labels), accuracy(logits, labels)
    drop = 100.0 * (fp32 - int8)
    agreement = float((logits.argmax(1) == reference.argmax(1)).mean()) if len(labels) else 1.0
    if drop > max_drop:
        raise ClassiflowError(
            f"{name}: test accuracy {100 * int8:.2f}% vs {100 * fp32:.2f}% in PyTorch, a drop of {drop:.2f} "
            f"points > export.int8_max_accuracy_drop {max_drop:g}"
        )
    if agreement < min_agreement:
        raise ClassiflowError(
            f"{name}: predicts PyTorch's class on {100 * agreement:.2f}% of {len(labels)} test images "
            f"< export.int8_min_agreement {100 * min_agreement:g}%"
        )
    return {"accuracy": int8, "accuracy_drop_points": drop, "agreement": agreement}
