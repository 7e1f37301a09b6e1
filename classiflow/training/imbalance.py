"""Training on imbalanced classes: per-class loss weights and a class-balanced epoch order.

A line that photographs 95% good parts and 5% defects of several kinds trains a model that is right 95% of the
time by never finding a defect. Two standard remedies, usable alone or together: weight each class's loss
(``train.class_weights``: ``balanced`` gives ``n / (k * n_c)``, scikit-learn's formula) or draw each epoch's
images so that every class is equally likely (``train.sampler: balanced``, with replacement, as PyTorch's
``WeightedRandomSampler`` does, but from the run's own seeded generator so that a resumed run draws the same).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight

from classiflow.errors import ClassiflowError

ClassWeights = str | dict[str, float]


def check_class_weights(setting: ClassWeights, classes: list[str]) -> None:
    """An explicit ``{class: weight}`` may name only classes the data has (the rest keep weight 1)."""
    if isinstance(setting, dict):
        unknown = sorted(set(setting) - set(classes))
        if unknown:
            raise ClassiflowError(
                f"train.class_weights: unknown class{'es' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                f"(the data's classes: {', '.join(classes)})"
            )


def class_weights(setting: ClassWeights, labels: np.ndarray, classes: list[str]) -> torch.Tensor | None:
    """The loss weight of each class index, or None for an unweighted loss (``none``)."""
    check_class_weights(setting, classes)
    if setting == "none":
        return None
    if isinstance(setting, dict):
        return torch.tensor([float(setting.get(c, 1.0)) for c in classes], dtype=torch.float32)
    present = np.unique(labels)
    weights = np.ones(len(classes))
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return torch.from_numpy(weights).float()


def epoch_order(labels: torch.Tensor, sampler: str, generator: torch.Generator) -> torch.Tensor:
    """The indices one epoch visits: a permutation (``random``) or as many draws, each class equally likely
    (``balanced``: an image of a class with n_c images is drawn with probability 1 / (k n_c))."""
    n = len(labels)
    if sampler == "random":
        return torch.randperm(n, generator=generator)
    counts = torch.bincount(labels.cpu())
    weights = 1.0 / counts.clamp(min=1).double()[labels.cpu()]
    return torch.multinomial(weights, n, replacement=True, generator=generator)
