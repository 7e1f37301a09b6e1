"""Parameters of the classical baseline, validated like every other ``params.yaml`` section.

The defaults (dense SIFT, 512 words, 2x2 pyramid, linear SVM) are tuned for 32x32 images,
the pipeline's default ``data.image_size``: 99% on upscaled handwritten digits and 55% on
CIFAR-10 in under three minutes on two cores. HOG does best with an RBF SVM on a PCA of
the standardised features (``features: hog, scale: true, pca: 128, classifier: rbf_svc,
C: 5``): 66% on CIFAR-10, but the RBF fit grows about quadratically with ``max_train``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class BaselineParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    features: Literal["dense_sift", "sift", "hog"] = "dense_sift"
    # SIFT: images are upscaled by this factor first; step and size are in upscaled pixels,
    # size being the side of the 4x4-cell descriptor window (VLFeat's convention, not OpenCV's).
    upscale: int = Field(2, ge=1, le=8)
    step: int = Field(4, ge=1, le=64)
    size: int = Field(16, ge=4, le=128)
    codebook_size: int = Field(512, ge=2, le=16384)
    codebook_sample: int = Field(100_000, ge=100, le=5_000_000)
    encoding: Literal["hellinger", "l1", "l2"] = "hellinger"
    spatial_pyramid: bool = True
    hog_orientations: int = Field(9, ge=2, le=36)
    hog_pixels_per_cell: int = Field(4, ge=2, le=64)
    hog_cells_per_block: int = Field(3, ge=1, le=8)
    classifier: Literal["linear_svc", "rbf_svc"] = "linear_svc"
    C: float = Field(0.25, gt=0.0, le=1e6)
    gamma: float | Literal["scale"] = "scale"
    scale: bool = False
    pca: int | None = Field(None, ge=1, le=100_000)
    max_train: int | None = Field(None, ge=2)
    seed: int = 42
    n_jobs: int = Field(-1, ge=-64, le=512)

    @field_validator("gamma")
    @classmethod
    def _gamma_positive(cls, value: float | str) -> float | str:
        if not isinstance(value, str) and value <= 0:
            raise ValueError("must be positive or 'scale'")
        return value

    @field_validator("n_jobs")
    @classmethod
    def _n_jobs_not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("0 runs nothing; use -1 for all cores or a positive count")
        return value

    def feature_fields(self) -> dict:
        """The fields that change the features: the cache key, so a new C reuses them."""
        if self.features == "hog":
            names = ("features", "hog_orientations", "hog_pixels_per_cell", "hog_cells_per_block")
        else:
            names = (
                "features",
                "upscale",
                "step",
                "size",
                "codebook_size",
                "codebook_sample",
                "encoding",
                "spatial_pyramid",
                "seed",
            )
        return {name: getattr(self, name) for name in names}
