"""Few labels as a setting (``data.label_fraction``): a stratified share of the train split keeps its labels,
the rest becomes the ``unlabelled`` split, which only the pretrain stage reads. Validation and test stay whole,
so every arm of a label-efficiency comparison is scored on the same images.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

from classiflow.errors import ClassiflowError

UNLABELLED = "unlabelled"


def label_subset(picks: dict, sources: dict, classes: list[str], fraction: float, seed: int) -> dict:
    """Keep the labels of a stratified ``fraction`` of train (at least one image per class); the rest becomes
    the ``unlabelled`` split. Validation and test are untouched."""
    if fraction >= 1.0:
        return picks
    name, rows = picks["train"]
    y = sources[name].labels[rows]
    counts = np.bincount(y)
    keep = max(int(round(len(y) * fraction)), int((counts > 0).sum()))
    for c in np.flatnonzero(counts):
        if counts[c] * fraction < 0.5 or counts[c] < 2:
            raise ClassiflowError(
                f"data.label_fraction {fraction:g} leaves class {classes[c]!r} with no labelled image "
                f"({counts[c]} in train); raise it"
            )
    labelled, hidden = train_test_split(np.arange(len(y)), train_size=keep, stratify=y, random_state=seed)
    return picks | {"train": (name, rows[np.sort(labelled)]), UNLABELLED: (name, rows[np.sort(hidden)])}
