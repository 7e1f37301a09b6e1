"""CBAM, the Convolutional Block Attention Module (Woo et al., ECCV 2018).

It is the one attention option of the conv models: cheap (a small MLP and one 7x7 conv per block), drop-in
after any block, and it leaves the block's output shape unchanged, so the models insert it without other changes.
"""

from __future__ import annotations

import torch
from torch import nn

from classiflow.errors import ClassiflowError

ATTENTIONS = ("none", "cbam")


class ChannelAttention(nn.Module):
    """Which channels matter: avg- and max-pooled descriptors share one MLP C -> C/r -> C (paper eq. 2)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 1)  # narrow blocks (LeNet's 6 maps) would otherwise get 0 units
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3))))
        return x * gate[:, :, None, None]


class SpatialAttention(nn.Module):
    """Where to look: channel-wise avg and max maps, a 7x7 conv, sigmoid (paper eq. 3; the paper's f has no BN)."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(maps))


class CBAM(nn.Module):
    """Channel then spatial attention: the paper found this order better than parallel or spatial-first."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


def check_attention(attention: str, reduction: int) -> None:
    """Models call this in their constructors so that a bad params.yaml fails before any training."""
    if attention not in ATTENTIONS:
        raise ClassiflowError(f"model.attention {attention!r}: unknown (available: {', '.join(ATTENTIONS)})")
    if isinstance(reduction, bool) or not isinstance(reduction, int) or reduction < 1:
        raise ClassiflowError(f"model.cbam_reduction {reduction!r}: must be a positive integer")


def attention_after(channels: int, attention: str, reduction: int) -> list[nn.Module]:
    """[CBAM] or []: an empty list (not nn.Identity) keeps the Sequential indices, so old checkpoints still load."""
    return [CBAM(channels, reduction)] if attention == "cbam" else []
