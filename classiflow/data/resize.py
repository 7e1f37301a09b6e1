"""How an image of any shape becomes the square ``image_size`` input: ``data.resize``.

One function for training and serving, so a served photo is fitted exactly as the training images were.
``squash`` stretches (the aspect ratio is lost, nothing is cut off), ``center_crop`` scales the short side
to the size and cuts the long side (timm's and torchvision's evaluation transform), ``letterbox`` scales
the long side to the size and pads the short one (Ultralytics' grey, 114). A square image is resized
the same way by all three.
"""

from __future__ import annotations

from typing import Literal

from PIL import Image

Policy = Literal["squash", "letterbox", "center_crop"]
POLICIES: tuple[str, ...] = ("squash", "letterbox", "center_crop")
LETTERBOX_FILL = 114


def _resize(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    return img.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def fit_square(img: Image.Image, size: int, policy: str = "squash") -> Image.Image:
    """``img`` (RGB) resized to ``size`` x ``size`` by ``policy``."""
    w, h = img.size
    if policy not in POLICIES:
        raise ValueError(f"unknown resize policy {policy!r}; expected one of {', '.join(POLICIES)}")
    if (w, h) == (size, size):
        return img
    if policy == "squash" or w == h:
        return _resize(img, (size, size))
    if policy == "center_crop":
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        return _resize(img.crop((left, top, left + side, top + side)), (size, size))
    scale = size / max(w, h)
    inner = (max(1, round(w * scale)), max(1, round(h * scale)))
    canvas = Image.new(img.mode, (size, size), (LETTERBOX_FILL,) * len(img.getbands()))
    canvas.paste(_resize(img, inner), ((size - inner[0]) // 2, (size - inner[1]) // 2))
    return canvas
