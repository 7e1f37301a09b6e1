"""A small Vision Transformer (Dosovitskiy et al. 2021) sized for 32x32 images.

Patch size 4 rather than the paper's 16: a 32x32 image then gives 8x8 = 64 tokens instead of 4, which is what
lets a transformer see spatial structure at CIFAR resolution. Without the huge pre-training of the paper it
needs strong augmentation and long training to match the ResNets; it is here as the attention-only baseline.
"""

from __future__ import annotations

import torch
from torch import nn

from classiflow.errors import ClassiflowError


class ViT(nn.Module):
    """Conv patch embedding, class token, learned position embeddings, pre-norm encoder, LayerNorm, linear head.

    width is the token dimension (192 by default, ViT-Tiny's); heads = width // 64 (at least 1) keeps the
    64-dimensional heads of the paper. There is no attention option: the model already is attention, and
    CBAM's conv-map gating does not apply to tokens. Position embeddings are sized for image_size, so the model
    takes only that size.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        image_size: int = 32,
        width: int = 192,
        depth: int = 6,
        patch_size: int = 4,
        mlp_ratio: int = 2,
        dropout: float = 0.0,
    ):
        super().__init__()
        if image_size < patch_size or image_size % patch_size:
            raise ClassiflowError(
                f"model.name 'vit': image size {image_size} must be a positive multiple of the patch size {patch_size}"
            )
        heads = max(1, width // 64)
        if width % heads:
            raise ClassiflowError(
                f"model.width: vit width {width} must divide by its {heads} heads (width // 64); use a multiple of 64"
            )
        self.image_size = image_size
        num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, width, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, width))
        layer = nn.TransformerEncoderLayer(
            width,
            heads,
            dim_feedforward=mlp_ratio * width,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        # enable_nested_tensor only helps with padding masks, which fixed-size images never have (and it warns).
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # N, patches, width
        tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1) + self.pos_embed
        return self.head(self.norm(self.encoder(tokens))[:, 0])
