"""CIFAR-style ResNets (He et al. 2016, section 4.2): depth 6n+2 with three stages of n basic blocks.

These are the small-image ResNets (a 3x3 stem, no stem pooling, 16/32/64 channels), not the ImageNet ones,
whose 7x7 stride-2 stem and max-pool would shrink a 32x32 image to 8x8 before the first block.
Registered as resnet8 / resnet20 / resnet56 (n = 1, 3, 9; about 78k / 272k / 856k parameters at width 16;
the paper reports 8.75% and 6.97% CIFAR-10 error for 20 and 56 layers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from classiflow.errors import ClassiflowError
from classiflow.models.cbam import CBAM, check_attention


def _conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0) -> nn.Conv2d:
    """Bias-free (the BN after it has one) with the paper's Kaiming-normal init; CBAM keeps its own init."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


class BasicBlock(nn.Module):
    """The source's residual block: conv3x3-BN-ReLU-conv3x3-BN, added to the shortcut, then ReLU.

    The shortcut is a 1x1 conv + BN projection where channels or stride change (the paper's CIFAR models use
    zero-padding there instead, option A; the projection costs ~1% more parameters), identity otherwise.
    CBAM, when asked for, gates the residual branch before the addition, as in the CBAM paper (fig. 3), so the
    identity path stays untouched.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, attention: str, cbam_reduction: int):
        super().__init__()
        self.conv1 = _conv(in_channels, out_channels, 3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv(out_channels, out_channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.attention = CBAM(out_channels, cbam_reduction) if attention == "cbam" else nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                _conv(in_channels, out_channels, 1, stride=stride), nn.BatchNorm2d(out_channels)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.attention(self.bn2(self.conv2(out)))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem conv (width channels), stages of width, 2*width, 4*width (stride 2 into stages 2 and 3), GAP, linear.

    Convs get the paper's Kaiming-normal init (fan_out mode, as torchvision). The last BN of each block is NOT
    zero-initialised: the paper does not, and a zero gamma would starve a CBAM on that branch of gradient at first.
    Any image size works: padding keeps the 3x3 convs shape-safe and the global average pool absorbs the rest.
    """

    def __init__(
        self,
        depth: int,
        in_channels: int = 3,
        num_classes: int = 10,
        image_size: int = 32,
        attention: str = "none",
        cbam_reduction: int = 16,
        width: int = 16,
    ):
        super().__init__()
        check_attention(attention, cbam_reduction)
        if (depth - 2) % 6 or depth < 8:
            raise ClassiflowError(f"resnet depth {depth}: must be 6n+2 with n >= 1 (8, 20, 32, 44, 56, ...)")
        if image_size < 1:
            raise ClassiflowError(f"model.name 'resnet{depth}': image size {image_size} must be positive")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(_conv(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        blocks: list[nn.Module] = []
        channels = width
        for stage, out_channels in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(channels, out_channels, stride, attention, cbam_reduction))
                channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
