"""Turning prepared uint8 arrays into normalised model input, and batched inference."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

BATCH_VALUES = 64 * 3 * 224 * 224  # input values per inference batch: 64 images at 224x224, 3,136 at 32x32


def to_nchw(images: np.ndarray) -> torch.Tensor:
    """N,H,W,C uint8 array -> N,C,H,W uint8 tensor: converted once into a contiguous copy, indexed per batch;
    for a memory-mapped split, a view over the mapping (a batch is read when it is indexed)."""
    if isinstance(images, np.memmap):
        return torch.from_numpy(images).permute(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


class Normalizer(nn.Module):
    """uint8 batch -> float, scaled by the prepared data's per-channel mean/std."""

    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) * self.inv_std


def mirror_average(plain: torch.Tensor, mirrored: torch.Tensor) -> torch.Tensor:
    """Flip test-time augmentation: the mean of the logits of an image and of its horizontal mirror."""
    return (plain + mirrored) / 2


@dataclass(frozen=True)
class TTA:
    """Test-time augmentation: each image's logits averaged with its mirror's and, with ``shift``, with those of
    two copies moved diagonally by ``shift`` pixels (reflect-padded) and their mirrors: airbench's six views, half
    the weight on the unshifted pair. The shifted views are worth their 3x inference cost only for a model trained
    with translation."""

    shift: int = 0

    @property
    def name(self) -> str:
        return f"flip+shift{self.shift}" if self.shift else "flip"

    @property
    def views(self) -> int:
        return 6 if self.shift else 2

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Every view of ``x`` in one batch (view-major), so an export holds one copy of the network."""
        views = [x]
        if self.shift:
            s, (h, w) = self.shift, x.shape[-2:]
            padded = F.pad(x, (s, s, s, s), mode="reflect")
            views += [padded[..., :h, :w], padded[..., 2 * s : 2 * s + h, 2 * s : 2 * s + w]]
        return torch.cat([*views, *(v.flip(-1) for v in views)])

    def average(self, logits: torch.Tensor, n: int) -> torch.Tensor:
        """The TTA logits of ``n`` images from the logits of :meth:`inputs`."""
        part = [logits[i * n : (i + 1) * n] for i in range(self.views)]
        if not self.shift:
            return mirror_average(part[0], part[1])
        return mirror_average(part[0], part[3]) / 2 + (part[1] + part[2] + part[4] + part[5]) / 8


def tta_name(tta: TTA | None) -> str:
    return tta.name if tta else "none"


@torch.inference_mode()
def predict_views(
    model: nn.Module,
    images: torch.Tensor,
    normalizer: Normalizer,
    device: torch.device,
    batch_size: int = 512,
    tta: TTA | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits of a whole N,C,H,W uint8 tensor, in order, on the CPU, plain and (with ``tta``) test-time
    augmented, so that plain and TTA accuracy come from one pass.

    Large images go in smaller batches (:data:`BATCH_VALUES`): 1,024 images at 224x224 would need gigabytes of
    activations. The logits are copied into tensors made once, not kept batch by batch: small tensors kept from
    every batch would pin the allocator's heaps, each as large as a batch's activations."""
    model.eval()
    views = tta.views if tta else 1
    if len(images):
        batch_size = max(1, min(batch_size, BATCH_VALUES // max(views * images[0].numel(), 1)))
    plain = augmented = None
    for start in range(0, len(images), batch_size):
        xb = normalizer(images[start : start + batch_size].contiguous().to(device, non_blocking=True))
        logits = model(tta.inputs(xb) if tta else xb).float().cpu()
        if plain is None:
            plain = torch.empty(len(images), *logits.shape[1:])
            augmented = torch.empty_like(plain) if tta else None
        plain[start : start + len(xb)] = logits[: len(xb)]
        if tta:
            augmented[start : start + len(xb)] = tta.average(logits, len(xb))
    if plain is None:
        plain = torch.zeros(0)
        augmented = torch.zeros(0) if tta else None
    return plain, augmented


def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    normalizer: Normalizer,
    device: torch.device,
    batch_size: int = 512,
    tta: TTA | None = None,
) -> torch.Tensor:
    """Logits for a whole N,C,H,W uint8 tensor; with ``tta``, the test-time augmented ones."""
    plain, augmented = predict_views(model, images, normalizer, device, batch_size, tta)
    return augmented if tta else plain


class WithPreprocessing(nn.Module):
    """A trained network that takes raw pixel values (0-255, N,C,H,W) as deployed models do.

    With ``tta`` it computes the test-time augmentation the evaluate stage chose, so an exported or registered
    file predicts exactly what evaluate scored (and what the registry and the gate rely on).
    """

    def __init__(self, net: nn.Module, mean: list[float], std: list[float], tta: TTA | None = None):
        super().__init__()
        self.normalizer = Normalizer(mean, std)
        self.net = net
        self.tta = tta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.normalizer(x)
        if self.tta is None:
            return self.net(z)
        return self.tta.average(self.net(self.tta.inputs(z)), z.shape[0])
