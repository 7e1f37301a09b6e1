"""Turning prepared uint8 arrays into normalised model input, and batched inference."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def to_nchw(images: np.ndarray) -> torch.Tensor:
    """N,H,W,C uint8 array -> contiguous N,C,H,W uint8 tensor (converted once, indexed per batch)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


class Normalizer(nn.Module):
    """uint8 batch -> float, scaled by the prepared data's per-channel mean/std."""

    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) * self.inv_std


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    normalizer: Normalizer,
    device: torch.device,
    batch_size: int = 512,
    tta: bool = False,
) -> torch.Tensor:
    """Logits for a whole N,C,H,W uint8 tensor, in order, on the CPU.

    With ``tta`` the logits of each image and its horizontal mirror are averaged: a free
    accuracy gain for models trained with flips.
    """
    model.eval()
    outs = []
    for start in range(0, len(images), batch_size):
        xb = normalizer(images[start : start + batch_size].to(device, non_blocking=True))
        logits = model(xb).float()
        if tta:
            logits = (logits + model(xb.flip(-1)).float()) / 2
        outs.append(logits.cpu())
    return torch.cat(outs) if outs else torch.zeros(0)


class WithPreprocessing(nn.Module):
    """A trained network that takes raw pixel values (0-255, N,C,H,W) as deployed models do."""

    def __init__(self, net: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.normalizer = Normalizer(mean, std)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalizer(x))
