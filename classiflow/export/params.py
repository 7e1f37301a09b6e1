"""Parameters of the export stage, validated like every other ``params.yaml`` section.

The checks are tight because an exported file is what gets deployed: fp32 files must reproduce the PyTorch
logits to ``atol``, and an int8 file may cost at most half an accuracy point and must give PyTorch's class on
99% of the test images PyTorch decides (see ``classiflow.export.verify``). Only the trained model's fp32 ONNX
file is required (serving runs it); any other file that fails its check is left out and reported, unless
``strict`` asks for the stage to fail instead.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ExportParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    formats: list[Literal["torchscript", "onnx"]] = Field(default_factory=lambda: ["torchscript", "onnx"], min_length=1)
    int8: Literal["none", "dynamic", "static", "both"] = "both"
    calibration_images: int = Field(512, ge=1, le=100_000)
    # 20 has a single Gelu op; at 18 GELU is four (Div, Erf, Add, Mul) that static int8 rounds one by one
    # (fastnet: logit SQNR 31.8 dB against 36.5 dB, docs/benchmarks.md); ONNX Runtime 1.2x runs up to 23.
    opset: int = Field(20, ge=18, le=23)
    atol: float = Field(1e-4, gt=0.0)
    int8_max_accuracy_drop: float = Field(0.5, ge=0.0, le=100.0)
    int8_min_agreement: float = Field(0.99, ge=0.0, le=1.0)
    # images whose top two PyTorch probabilities are closer than this are near-ties, left out of the agreement
    int8_tie_margin: float = Field(0.05, ge=0.0, lt=1.0)
    # true: a failed check of an optional file (TorchScript, int8, the pruned model's files) fails the stage
    strict: bool = False
    latency_repeats: int = Field(100, ge=1, le=100_000)
    throughput_batch: int = Field(256, ge=1, le=65_536)
    # None: every core this process may use, as a deployment would; tests pin it to 1.
    threads: int | None = Field(None, ge=1, le=1024)

    @model_validator(mode="after")
    def _int8_needs_onnx(self) -> ExportParams:
        self.formats = list(dict.fromkeys(self.formats))
        if self.int8 != "none" and "onnx" not in self.formats:
            raise ValueError(f"int8 {self.int8!r} quantizes the ONNX file; add 'onnx' to formats or set int8: none")
        return self

    @property
    def int8_modes(self) -> tuple[str, ...]:
        return {"none": (), "dynamic": ("dynamic",), "static": ("static",), "both": ("dynamic", "static")}[self.int8]
