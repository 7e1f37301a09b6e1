"""LeNet-5 (LeCun et al. 1998) as the source material describes it, with ReLU and max-pooling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from classiflow.errors import ClassiflowError
from classiflow.models.cbam import attention_after, check_attention

LENET_SIZE = 32


def to_lenet_size(x: torch.Tensor) -> torch.Tensor:
    """Fit any input to the fixed 32x32 the architecture is defined on.

    Smaller inputs are zero-padded, centred (28x28 MNIST gets 2 pixels a side, as LeCun did); zero is the
    mean pixel after normalisation, so the border adds no signal. Larger ones are resized (bilinear, antialias),
    since cropping would drop content and padding could not shrink them.
    """
    h, w = x.shape[-2:]
    if h > LENET_SIZE or w > LENET_SIZE:
        return F.interpolate(x, size=(LENET_SIZE, LENET_SIZE), mode="bilinear", antialias=True, align_corners=False)
    if h < LENET_SIZE or w < LENET_SIZE:
        top, left = (LENET_SIZE - h) // 2, (LENET_SIZE - w) // 2
        return F.pad(x, (left, LENET_SIZE - w - left, top, LENET_SIZE - h - top))
    return x


class LeNet5(nn.Module):
    """C1 6@5x5, S2 pool, C3 16@5x5, S4 pool, C5 120, F6 84, output.

    C5 is a 5x5 conv over a 5x5 map, i.e. exactly a fully connected 16*5*5 -> 120 layer, and is written as one.
    The 1998 paper's tanh, trainable subsampling, partial C3 connections and RBF output are replaced, as the
    source does, by ReLU, max-pooling, full connections and a linear layer (trained with cross-entropy).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 32,
        attention: str = "none",
        cbam_reduction: int = 16,
    ):
        super().__init__()
        check_attention(attention, cbam_reduction)
        if image_size < 1:
            raise ClassiflowError(f"model.name 'lenet5': image size {image_size} must be positive")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5),  # C1: 32 -> 28
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # S2: 28 -> 14
            *attention_after(6, attention, cbam_reduction),
            nn.Conv2d(6, 16, kernel_size=5),  # C3: 14 -> 10
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # S4: 10 -> 5
            *attention_after(16, attention, cbam_reduction),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),  # C5
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),  # F6
            nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(to_lenet_size(x)))
