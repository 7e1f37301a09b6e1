"""Parameters of the pretrain stage (SimCLR), validated like every other ``params.yaml`` section.

The defaults follow SimCLR's CIFAR-10 setting scaled to a CPU: two views per image (random resized crop with
flip, colour jitter of strength 0.5 applied with p 0.8, grayscale with p 0.2, no blur at 32x32), a 2-layer
projection head to 128 dimensions, NT-Xent at temperature 0.2, AdamW (or SGD, LARS) with a cosine schedule.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MIN_CONTRASTIVE_BATCH = 64  # below it each image has too few negatives; the stage warns


class PretrainParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["none", "simclr"] = "none"
    epochs: int = Field(20, ge=1, le=10_000)
    batch_size: int = Field(256, ge=2, le=65_536)
    # adamw; sgd (momentum, Nesterov); lars (timm's, SimCLR's large-batch choice: each decayed weight's step scaled
    # by its norm over its gradient's, norms and biases excluded)
    optimizer: Literal["adamw", "sgd", "lars"] = "adamw"
    lr: float = Field(2e-3, gt=0.0, le=10.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)  # sgd and lars
    weight_decay: float = Field(1e-4, ge=0.0, le=1.0)
    warmup_epochs: float = Field(1.0, ge=0.0)
    temperature: float = Field(0.2, gt=0.0, le=10.0)
    projection_dim: int = Field(128, ge=2, le=8192)
    hidden_dim: int = Field(512, ge=2, le=16_384)
    crop_scale: tuple[float, float] = (0.2, 1.0)
    flip: bool = True
    jitter: float = Field(0.5, ge=0.0, le=1.0)  # strength s: brightness/contrast/saturation 0.8 s, hue 0.2 s
    jitter_p: float = Field(0.8, ge=0.0, le=1.0)
    grayscale_p: float = Field(0.2, ge=0.0, le=1.0)
    blur_p: float = Field(0.0, ge=0.0, le=1.0)  # Gaussian blur, sigma 0.1-2.0 (SimCLR uses it on ImageNet)
    knn_k: int = Field(20, ge=1, le=1000)  # the validation kNN monitor (cosine, similarity-weighted vote)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "fp32"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    channels_last: bool = True
    seed: int = 0
    resume: bool = True

    @model_validator(mode="after")
    def _crop_scale_is_a_range(self) -> PretrainParams:
        low, high = self.crop_scale
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"crop_scale must be 0 < low <= high <= 1, got {list(self.crop_scale)}")
        return self
