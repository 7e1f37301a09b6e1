"""A network built for time-to-accuracy, after airbench94 (Keller Jordan's CIFAR-10 speedrun).

Reference: https://github.com/KellerJordan/cifar10-airbench (airbench94.py); this is a re-implementation of its
architecture, not its training recipe (label smoothing, Nesterov SGD, lookahead, TTA are the training loop's).
Each choice below trades generality for fewer steps to a given accuracy: a fixed data-derived whitening layer,
identity-initialised convs, BatchNorm without a learned scale, and pooling right after the first conv of a group.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from classiflow.errors import ClassiflowError
from classiflow.models.cbam import attention_after, check_attention

WHITEN_KERNEL = 2
WHITEN_EPS = 5e-4


class _Conv(nn.Conv2d):
    """Default init, then a dirac (identity) kernel on the first min(out, in) filters.

    Starting each layer close to identity lets a deep plain (non-residual) stack train from the first step.
    """

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        nn.init.dirac_(self.weight[: min(self.out_channels, self.in_channels)])


class _BatchNorm(nn.BatchNorm2d):
    """Gamma frozen at 1 (the next conv can rescale), tiny eps, fast-moving statistics for short runs.

    momentum 0.4 in PyTorch's convention (weight of the new batch) is airbench's 0.6 (weight of the old value).
    """

    def __init__(self, channels: int):
        super().__init__(channels, eps=1e-12, momentum=0.4)
        self.weight.requires_grad_(False)


def _halve(x: torch.Tensor) -> torch.Tensor:
    """2x2 max-pool that floors odd sizes like airbench, but passes a 1-pixel side through instead of emptying it."""
    h, w = x.shape[-2:]
    kernel = (min(2, h), min(2, w))
    return F.max_pool2d(x, kernel) if kernel != (1, 1) else x


class ConvGroup(nn.Module):
    """conv3x3 -> pool -> BN -> GELU -> conv3x3 -> BN -> GELU: pooling before the first BN saves 3/4 of its work.

    In eval mode the first BN runs before the pool instead, which computes the same function: with gamma frozen
    at 1, eval-mode BN is a per-channel increasing affine map, and those commute with max pooling exactly (even
    in floating point, rounding being monotonic). Next to its conv, the BN folds into the conv's weights on
    export, so an int8 file quantizes a normalised tensor. Behind a pool it stayed a separate op, and int8
    rounded the raw conv output with one scale for all channels, whose spreads differed by a factor of up to
    60,000 (MNIST digits: BN variances 0.7 to 2.7e9), which zeroed every channel but the widest: 10% accuracy.
    """

    eval_norm_first = True  # benchmarks/int8.py sets False to measure the export without it

    def __init__(self, in_channels: int, out_channels: int, attention: str, cbam_reduction: int):
        super().__init__()
        self.conv1 = _Conv(in_channels, out_channels, 3, padding="same", bias=False)
        self.norm1 = _BatchNorm(out_channels)
        self.conv2 = _Conv(out_channels, out_channels, 3, padding="same", bias=False)
        self.norm2 = _BatchNorm(out_channels)
        self.attention = nn.Sequential(*attention_after(out_channels, attention, cbam_reduction))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        norm_first = self.eval_norm_first and not self.training
        x = F.gelu(_halve(self.norm1(x)) if norm_first else self.norm1(_halve(x)))
        x = F.gelu(self.norm2(self.conv2(x)))
        return self.attention(x)


class FastNet(nn.Module):
    """2x2 whitening conv (frozen weight, trainable bias), GELU, ConvGroups of width w, 4w, 4w, global max pool,
    bias-free linear scaled by 1/9 (airbench's scaling factor: small logits early, a temperature in effect).

    Call data_init with a few thousand training images before training; without it the whitening layer is a
    plain identity-like conv and the model trains markedly slower. Inputs of any size >= 2 work: the pools never
    shrink a map below 1x1 and the final pool is global (at 32x32 it equals airbench's MaxPool2d(3) on 3x3).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        image_size: int = 32,
        attention: str = "none",
        cbam_reduction: int = 16,
        width: int = 64,
    ):
        super().__init__()
        check_attention(attention, cbam_reduction)
        if image_size < WHITEN_KERNEL:
            raise ClassiflowError(f"model.name 'fastnet': image size {image_size} < the 2x2 whitening kernel")
        whiten_width = 2 * in_channels * WHITEN_KERNEL**2
        self.whiten = _Conv(in_channels, whiten_width, WHITEN_KERNEL, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        widths = (width, 4 * width, 4 * width)
        self.groups = nn.Sequential(
            ConvGroup(whiten_width, widths[0], attention, cbam_reduction),
            ConvGroup(widths[0], widths[1], attention, cbam_reduction),
            ConvGroup(widths[1], widths[2], attention, cbam_reduction),
        )
        self.head = nn.Linear(widths[2], num_classes, bias=False)
        self.scale = 1 / 9

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.groups(F.gelu(self.whiten(x)))
        return self.head(x.amax(dim=(2, 3))) * self.scale

    @torch.no_grad()
    def data_init(self, images: torch.Tensor) -> None:
        """Set the whitening filters from the 2x2 patch statistics of normalised training images (N, C, H, W).

        The filters are the eigenvectors of the (uncentred) patch covariance scaled by 1/sqrt(eigenvalue + eps),
        so the layer's outputs are decorrelated with unit variance, plus their negatives so that the GELU after it
        loses no information. Computed in float64 on the CPU, in chunks, so it works for any device and dtype.
        A layer whose filters were pruned keeps them: the next conv was fine-tuned on that subset.
        """
        weight = self.whiten.weight
        channels = weight.shape[1]
        if images.ndim != 4 or images.shape[1] != channels:
            raise ValueError(f"data_init wants N, {channels}, H, W images, got shape {tuple(images.shape)}")
        dim = channels * WHITEN_KERNEL**2
        if weight.shape[0] != 2 * dim:
            return
        cov = torch.zeros(dim, dim, dtype=torch.float64)
        count = 0
        for chunk in images.split(512):
            patches = F.unfold(chunk.float(), WHITEN_KERNEL).transpose(1, 2).reshape(-1, dim)  # rows: (C, kh, kw)
            cov += (patches.T @ patches).double().cpu()
            count += len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov / count)  # ascending
        eigenvalues, eigenvectors = eigenvalues.flip(0).clamp_min(0), eigenvectors.flip(1)
        filters = eigenvectors.T / torch.sqrt(eigenvalues + WHITEN_EPS)[:, None]
        filters = filters.reshape(dim, channels, WHITEN_KERNEL, WHITEN_KERNEL)
        weight.copy_(torch.cat([filters, -filters]).to(weight))
