"""The SimpleCNN of the source article: two conv/pool blocks and a three-layer classifier head."""

from __future__ import annotations

import torch
from torch import nn


class SimpleCNN(nn.Module):
    """conv 3->16, conv 16->32 (3x3, padding 1, 2x2 max-pool after each), fc 32*s/4*s/4 -> 120 -> 84.

    The article fixes 3 channels and 32x32 inputs; channels and size come from the data here.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        side = image_size // 2 // 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * side * side, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
