"""SimCLR's two views of a batch, made on the whole batch at once (no per-image Python calls).

Each image gets its own random parameters, drawn from one seeded generator (so a resumed run draws the same):
a random resized crop with an optional mirror, both done by one ``grid_sample`` with a per-image affine grid;
colour jitter with probability ``jitter_p`` (brightness, contrast, saturation and hue factors per image, in
that order; hue is a rotation of the chroma plane in YIQ space, which needs no HSV round trip); grayscale
with probability ``grayscale_p``; and an optional Gaussian blur with a per-image sigma. Colour operations are
skipped for one-channel images. Pixels stay in 0-255 floats; the caller normalises.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from classiflow.pretrain.params import PretrainParams

RATIO = (3 / 4, 4 / 3)
LUMA = (0.299, 0.587, 0.114)
RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


def crop_grids(n: int, size: tuple[int, int], cfg: PretrainParams, g: torch.Generator) -> torch.Tensor:
    """Affine sampling grids (N, H, W, 2) of random resized crops (area share in ``crop_scale``, aspect ratio
    3/4-4/3), mirrored with probability 0.5 when ``flip``."""
    area = _uniform(n, *cfg.crop_scale, g)
    ratio = torch.exp(_uniform(n, math.log(RATIO[0]), math.log(RATIO[1]), g))
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = (area / w).clamp(max=1.0)  # a crop wider than the image keeps its area (torchvision would redraw it)
    w = area / h
    cx, cy = (2 * torch.rand(n, generator=g) - 1) * (1 - w), (2 * torch.rand(n, generator=g) - 1) * (1 - h)
    mirror = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0) if cfg.flip else torch.ones(n)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * mirror, cx, h, cy
    return F.affine_grid(theta, [n, 1, *size], align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (x * x.new_tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)


def _per_image(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return values.to(x.device, x.dtype).view(-1, 1, 1, 1)


def colour_jitter(x: torch.Tensor, cfg: PretrainParams, g: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation (factors in 1 +- 0.8 s) and hue (+- 0.2 s turns) on RGB 0-255 images,
    each image jittered with probability ``jitter_p`` (the others get factors of 1 and no hue shift)."""
    n, s = x.shape[0], cfg.jitter
    on = (torch.rand(n, generator=g) < cfg.jitter_p).float()

    def factor(spread: float) -> torch.Tensor:
        return 1 + on * _uniform(n, -spread, spread, g).clamp(min=-0.999)

    brightness, contrast, saturation = factor(0.8 * s), factor(0.8 * s), factor(0.8 * s)
    hue = on * _uniform(n, -0.2 * s, 0.2 * s, g)
    x = (x * _per_image(brightness, x)).clamp(0, 255)
    mean = _gray(x).mean(dim=(2, 3), keepdim=True)
    x = ((x - mean) * _per_image(contrast, x) + mean).clamp(0, 255)
    gray = _gray(x)
    x = ((x - gray) * _per_image(saturation, x) + gray).clamp(0, 255)
    return rotate_hue(x, hue).clamp(0, 255)


def rotate_hue(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate each image's chroma (I, Q) by ``turns`` of a full circle; luma is kept."""
    to_yiq = x.new_tensor(RGB_TO_YIQ)
    yiq = torch.einsum("ij,njhw->nihw", to_yiq, x)
    angle = 2 * math.pi * turns.to(x.device, x.dtype)
    cos, sin = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], dim=1)
    return torch.einsum("ij,njhw->nihw", torch.linalg.inv(to_yiq), yiq)


def gaussian_blur(x: torch.Tensor, apply: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur the images where ``apply`` with their own sigma: one grouped convolution per axis, kernel ~10% of the
    image side (odd)."""
    n, c, h, w = x.shape
    k = max(3, (min(h, w) // 10) | 1)
    offsets = torch.arange(k, dtype=x.dtype, device=x.device) - k // 2
    sigma = sigma.to(x.device, x.dtype).clamp(min=1e-3)
    kernel = torch.exp(-(offsets.view(1, -1) ** 2) / (2 * sigma.view(-1, 1) ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)
    identity = (offsets == 0).to(x.dtype).expand(n, k)
    kernel = torch.where(apply.to(x.device).view(-1, 1), kernel, identity).repeat_interleave(c, 0)
    flat = x.reshape(1, n * c, h, w)
    flat = F.conv2d(F.pad(flat, (k // 2, k // 2, 0, 0), mode="reflect"), kernel.view(n * c, 1, 1, k), groups=n * c)
    flat = F.conv2d(F.pad(flat, (0, 0, k // 2, k // 2), mode="reflect"), kernel.view(n * c, 1, k, 1), groups=n * c)
    return flat.view(n, c, h, w)


def view(images: torch.Tensor, cfg: PretrainParams, g: torch.Generator) -> torch.Tensor:
    """One augmented view of uint8 (or 0-255 float) N,C,H,W ``images``, as float32 0-255."""
    x = images.float()
    n, c = x.shape[:2]
    x = F.grid_sample(x, crop_grids(n, x.shape[2:], cfg, g).to(x.device), mode="bilinear", align_corners=False)
    if c == 3:
        x = colour_jitter(x, cfg, g)
        gray = (torch.rand(n, generator=g) < cfg.grayscale_p).to(x.device).view(-1, 1, 1, 1)
        x = torch.where(gray, _gray(x).expand_as(x), x)
    if cfg.blur_p > 0:
        apply = torch.rand(n, generator=g) < cfg.blur_p
        x = gaussian_blur(x, apply, _uniform(n, 0.1, 2.0, g))
    return x


def two_views(images: torch.Tensor, cfg: PretrainParams, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent views of every image (the positives of NT-Xent)."""
    return view(images, cfg, g), view(images, cfg, g)
