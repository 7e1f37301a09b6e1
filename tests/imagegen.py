"""Tiny, learnable image-folder data sets generated on the fly (nothing is downloaded or committed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "stripes")


def draw(kind: str, size: int, rng: np.random.Generator, gray: bool) -> Image.Image:
    bg = tuple(int(v) for v in rng.integers(0, 60, 3))
    fg = tuple(int(v) for v in rng.integers(150, 256, 3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    m = size // 5
    x0, y0 = (int(v) for v in rng.integers(0, m + 1, 2))
    x1, y1 = size - 1 - int(rng.integers(0, m + 1)), size - 1 - int(rng.integers(0, m + 1))
    if kind == "circle":
        d.ellipse([x0, y0, x1, y1], fill=fg)
    elif kind == "square":
        d.rectangle([x0, y0, x1, y1], fill=fg)
    else:
        for x in range(int(rng.integers(0, 3)), size, 4):
            d.line([x, 0, x, size], fill=fg, width=2)
    return img.convert("L") if gray else img


def write_image_folder(
    root: Path,
    per_class: int = 20,
    splits: dict[str, int] | None = None,
    gray: bool = False,
    size: int = 24,
    classes: tuple[str, ...] = CLASSES,
    seed: int = 0,
    fmt: str = "PNG",
) -> Path:
    """``root/<class>/*.png`` or, with ``splits={"train": 20, "test": 6}``, ``root/<split>/<class>/``."""
    rng = np.random.default_rng(seed)
    layout = splits or {"": per_class}
    ext = {"PNG": "png", "JPEG": "jpg", "BMP": "bmp"}[fmt]
    for split, count in layout.items():
        for cls in classes:
            folder = root / split / cls if split else root / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                side = size + int(rng.integers(-4, 5))
                draw(cls, side, rng, gray).save(folder / f"{i:04d}.{ext}", format=fmt)
    return root
