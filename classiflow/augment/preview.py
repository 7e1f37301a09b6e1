"""A grid of augmented training images, each titled with its class, for eyeballing a policy."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from classiflow.atomic import atomic_path


def write_preview(path: str | Path, images: np.ndarray, labels: np.ndarray, classes: list[str], title: str) -> None:
    """Write ``images`` (N,H,W,C uint8, C = 1 or 3) as a titled PNG grid at ``path``, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    cols = min(8, max(n, 1))
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.5 * rows + 0.5), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        image = images[i]
        if image.shape[-1] == 1:
            ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        else:
            ax.imshow(image, interpolation="nearest")
        ax.set_title(str(classes[int(labels[i])]), fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
