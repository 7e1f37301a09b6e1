"""The SimpleCNN of the source article: two conv/pool blocks and a three-layer classifier head."""

from __future__ import annotations

import torch
from torch import nn

from classiflow.errors import ClassiflowError
from classiflow.models.cbam import attention_after, check_attention


class SimpleCNN(nn.Module):
    """conv 3->16, conv 16->32 (3x3, padding 1, 2x2 max-pool after each), fc 32*s/4*s/4 -> 120 -> 84.

    The article fixes 3 channels and 32x32 inputs; channels and size come from the data here. With
    attention="cbam" a CBAM follows each conv/pool block; without it the layer indices are the article's,
    so checkpoints saved before the option existed still load.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        image_size: int = 32,
        attention: str = "none",
        cbam_reduction: int = 16,
    ):
        super().__init__()
        check_attention(attention, cbam_reduction)
        if image_size < 4:
            raise ClassiflowError(f"model.name 'simplecnn': image size {image_size} < 4 vanishes after two 2x2 pools")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            *attention_after(16, attention, cbam_reduction),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            *attention_after(32, attention, cbam_reduction),
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
