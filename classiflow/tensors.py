"""Turning prepared uint8 arrays into normalised model input, and batched inference."""

from __future__ import annotations

import numpy as np
import torch
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


@torch.inference_mode()
def predict_views(
    model: nn.Module,
    images: torch.Tensor,
    normalizer: Normalizer,
    device: torch.device,
    batch_size: int = 512,
    mirrored: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits of a whole N,C,H,W uint8 tensor, in order, on the CPU; with ``mirrored`` also those of
    every image's horizontal mirror, so that plain and flip-TTA accuracy come from one pass.

    Large images go in smaller batches (:data:`BATCH_VALUES`): 1,024 images at 224x224 would need gigabytes of
    activations. The logits are copied into tensors made once, not kept batch by batch: small tensors kept from
    every batch would pin the allocator's heaps, each as large as a batch's activations."""
    model.eval()
    batch_size = max(1, min(batch_size, BATCH_VALUES // max(images[0].numel(), 1))) if len(images) else batch_size
    plain = flipped = None
    for start in range(0, len(images), batch_size):
        xb = normalizer(images[start : start + batch_size].contiguous().to(device, non_blocking=True))
        logits = model(with_mirrors(xb) if mirrored else xb).float().cpu()
        if plain is None:
            plain = torch.empty(len(images), *logits.shape[1:])
            flipped = torch.empty_like(plain) if mirrored else None
        plain[start : start + len(xb)] = logits[: len(xb)]
        if mirrored:
            flipped[start : start + len(xb)] = logits[len(xb) :]
    if plain is None:
        plain = torch.zeros(0)
        flipped = torch.zeros(0) if mirrored else None
    return plain, flipped


def with_mirrors(x: torch.Tensor) -> torch.Tensor:
    """``x`` followed by its horizontal mirrors: both views in one batch, one copy of the network in an export."""
    return torch.cat([x, x.flip(-1)])


def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    normalizer: Normalizer,
    device: torch.device,
    batch_size: int = 512,
    tta: bool = False,
) -> torch.Tensor:
    """Logits for a whole N,C,H,W uint8 tensor; with ``tta``, :func:`mirror_average` of both views."""
    plain, mirrored = predict_views(model, images, normalizer, device, batch_size, mirrored=tta)
    return mirror_average(plain, mirrored) if tta else plain


class WithPreprocessing(nn.Module):
    """A trained network that takes raw pixel values (0-255, N,C,H,W) as deployed models do.

    With ``tta`` it computes the flip test-time augmentation the evaluate stage chose, so an exported or
    registered file predicts exactly what evaluate scored (and what the registry and the gate rely on).
    """

    def __init__(self, net: nn.Module, mean: list[float], std: list[float], tta: bool = False):
        super().__init__()
        self.normalizer = Normalizer(mean, std)
        self.net = net
        self.tta = tta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.normalizer(x)
        if not self.tta:
            return self.net(z)
        logits = self.net(with_mirrors(z))
        return mirror_average(logits[: z.shape[0]], logits[z.shape[0] :])
