"""The single source of configuration: ``params.yaml``, validated before any work starts.

Every stage reads the same file through :func:`load_params`, so a typo or a wrong type
fails in one line naming the key instead of deep inside a stage. The defaults below are the default
recipe, equal to the committed ``params.yaml`` (a test holds them equal); ``recipes/*.yaml`` name only
what differs from them.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from classiflow.baseline.params import BaselineParams
from classiflow.errors import ClassiflowError
from classiflow.export.params import ExportParams
from classiflow.pretrain.params import PretrainParams
from classiflow.prune.params import PruneParams
from classiflow.sweep.params import SweepParams

BUILTIN_DATASETS = ("cifar10", "mnist", "fashion_mnist")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class DataParams(_Section):
    source: str = Field("cifar10", min_length=1)
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    image_size: int = Field(32, ge=8, le=1024)
    resize: Literal["squash", "letterbox", "center_crop"] = "squash"  # non-square images (classiflow.data.resize)
    channels: Literal["auto", 1, 3] = "auto"
    val_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0.0, lt=0.5)
    seed: int = 42
    strict: bool = False
    # keep each group of images in one split (classiflow.data.groups): a regular expression on the file's path
    # in the data set (first capture group = the group) or a CSV of file,group rows
    group_by: str | None = Field(None, min_length=1)
    # few labels: a stratified share of train keeps its labels (the rest is the "unlabelled" split, for pretrain)
    label_fraction: float = Field(1.0, gt=0.0, le=1.0)
    label_seed: int = 0


class ModelParams(_Section):
    name: str = "fastnet"
    attention: Literal["none", "cbam"] = "none"
    cbam_reduction: int = Field(16, ge=1)
    width: int | None = Field(16, ge=1)  # base width; null keeps the architecture's own
    # initial weights: a .safetensors/.pth file, local-dir:<folder>, hf-hub:<id> (classiflow.models.pretrained),
    # or "pretrain": the encoder the pretrain stage learnt
    pretrained: str | None = Field(None, min_length=1)
    pretrained_sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    allow_download: bool = False  # hf-hub ids: fetch when not cached (else the hub is off for the stage)

    @field_validator("pretrained")
    @classmethod
    def _known_source(cls, value: str | None) -> str | None:
        if value and ":" in value.split("/")[0] and not value.startswith(("hf-hub:", "local-dir:")):
            raise ValueError("expected a file path, local-dir:<folder> or hf-hub:<id>")
        return value


class AugmentParams(_Section):
    policy: Literal["custom", "none"] = "custom"  # none switches every transform off
    # horizontal, p=0.5 (batched); auto: decided by the augment stage from the data (classiflow.augment.flip)
    flip: bool | Literal["auto"] = "auto"
    translate: int = Field(2, ge=0)  # pad-and-random-crop by up to N pixels (batched)
    rotation: float = Field(0.0, ge=0.0, le=180.0)  # degrees; the article uses 15
    color_jitter: float = Field(0.0, ge=0.0, le=1.0)  # brightness/contrast/saturation strength
    auto: Literal["none", "trivial", "randaugment"] = "none"
    erasing: float = Field(0.0, ge=0.0, le=1.0)  # probability of random erasing (cutout)
    mix: Literal["none", "mixup", "cutmix"] = "none"
    mix_alpha: float = Field(1.0, gt=0.0)
    copies: int = Field(0, ge=0)  # >0: materialise N augmented copies of the train split on disk
    preview: int = Field(32, ge=1, le=256)  # images in the preview grid
    seed: int = 42


class TrainParams(_Section):
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(1.5, gt=0.0)
    momentum: float = Field(0.85, ge=0.0, lt=1.0)  # sgd; under onecycle with momentum_cycle, its value at the peak rate
    # onecycle and sgd: momentum rises to this value where the rate is low (start and end), as OneCycle's authors
    # do; null keeps train.momentum fixed all run (as airbench does)
    momentum_cycle: float | None = Field(0.95, gt=0.0, lt=1.0)
    nesterov: bool = True
    weight_decay: float = Field(0.0013, ge=0.0)  # on weights only, never on norm gains or biases
    bias_lr_scale: float = Field(16.0, gt=0.0)  # lr multiplier for norm and bias parameters
    epochs: int = Field(2, ge=1)
    # at least this many optimiser steps: a small data set runs more epochs, so that a recipe tuned on
    # CIFAR-10's 45,000 images does not stop after a few dozen steps on 4,000
    min_steps: int = Field(150, ge=0)
    batch_size: int = Field(512, ge=1)
    scheduler: Literal["none", "step", "cosine", "onecycle"] = "onecycle"
    step_size: int = Field(5, ge=1)  # step: epochs between decays
    gamma: float = Field(0.1, gt=0.0, le=1.0)
    warmup_epochs: float = Field(0.25, ge=0.0)  # cosine: linear warm-up; onecycle: rise (fraction if < 1)
    label_smoothing: float = Field(0.2, ge=0.0, lt=1.0)
    # imbalanced classes (classiflow.training.imbalance): loss weight per class (balanced: n / (k n_c); a
    # mapping names some classes, the rest weigh 1), and the epoch's draw (balanced: every class equally likely)
    class_weights: Literal["none", "balanced"] | dict[str, Annotated[float, Field(gt=0.0)]] = "none"
    sampler: Literal["random", "balanced"] = "random"
    select_by: Literal["val_accuracy", "val_balanced_accuracy"] = "val_accuracy"  # which epoch's weights to keep
    freeze_epochs: int = Field(0, ge=0)  # train only the head for the first N epochs (a linear probe), then all
    backbone_lr_scale: float = Field(1.0, gt=0.0)  # lr multiplier for everything but the head
    grad_clip: float | None = Field(None, gt=0.0)  # max global gradient norm
    ema: float | None = Field(None, gt=0.0, lt=1.0)  # decay of an exponential moving average of weights
    lookahead: int | None = Field(None, ge=1)  # every N steps pull the weights to their slow average (airbench: 5)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "fp32"  # autocast (fp16 on CUDA only)
    channels_last: bool = True
    compile: bool = False  # torch.compile the model
    early_stopping: int | None = Field(None, ge=1)  # stop after N epochs without a better val accuracy
    resume: bool = True  # continue from models/last.pt when it matches these params and data
    seed: int = 42
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    # data-parallel training (classiflow.training.distributed): processes per node, started through torchrun;
    # batch_size stays the global batch. Several nodes meet at rendezvous (host:port, c10d); the other nodes run
    # `classiflow train-agent`. micro_batches: the global batch in N parts, each normalised on its own (gradient
    # accumulation); null is one per process, and a run gives the same weights with any number of processes
    processes: int = Field(1, ge=1)
    nodes: int = Field(1, ge=1)
    rendezvous: str | None = Field(None, pattern=r"^[^\s:]+:\d+$")
    micro_batches: int | None = Field(None, ge=1)

    @property
    def world_size(self) -> int:
        """Training processes in all: per node times nodes."""
        return self.processes * self.nodes

    @property
    def micro_batch_count(self) -> int:
        """Parts of each global batch: ``micro_batches``, or one per process."""
        return self.micro_batches or self.world_size

    @model_validator(mode="after")
    def _momentum_cycles_upward(self) -> TrainParams:
        if self.scheduler == "onecycle" and self.momentum_cycle is not None and self.momentum_cycle < self.momentum:
            raise ValueError(
                f"train.momentum_cycle {self.momentum_cycle} is below train.momentum {self.momentum}: the cycle "
                "raises momentum where the rate is low; set it higher or null (momentum fixed)"
            )
        return self

    @model_validator(mode="after")
    def _world_fits(self) -> TrainParams:
        world = self.world_size
        if self.nodes > 1 and self.rendezvous is None:
            raise ValueError("train.nodes > 1 needs train.rendezvous (host:port of the first node)")
        if self.micro_batches is not None and self.micro_batches % world:
            raise ValueError(f"train.micro_batches {self.micro_batches} is not a multiple of the {world} processes")
        if self.micro_batch_count > self.batch_size:
            raise ValueError(f"train.batch_size {self.batch_size} has fewer images than micro-batches")
        return self


class EvaluateParams(_Section):
    batch_size: int = Field(512, ge=1)
    # flip TTA (average the logits of each image and its mirror): auto chooses it on the validation split,
    # and only for a model trained with flips; the deployed files compute the same predictions
    tta: bool | Literal["auto"] = "auto"
    # with TTA, also two copies shifted diagonally by N pixels and their mirrors (6 views, 3x the inference): 0 off
    tta_shift: int = Field(0, ge=0, le=4)
    # temperature scaling fitted on validation (classiflow.calibration); served probabilities use it
    calibrate: bool = True
    explain: bool = True  # a Grad-CAM gallery of test mistakes and correct answers (classiflow.explain)
    # operating points (classiflow.operating): the class a part may pass as, and per-class thresholds chosen on
    # validation (min_recall: every defect class caught at threshold_target; max_false_alarm: at most that share
    # of normal images flagged); serve and predict then answer a class or "uncertain"
    normal_class: str | None = Field(None, min_length=1)
    threshold_policy: Literal["none", "min_recall", "max_false_alarm"] = "none"
    threshold_target: float = Field(0.99, gt=0.0, lt=1.0)


class RegisterParams(_Section):
    model_name: str | None = None
    alias: str = "challenger"

    @field_validator("alias")
    @classmethod
    def _alias_is_not_champion(cls, value: str) -> str:
        if value == "champion":
            raise ValueError("'champion' is set only by `classiflow promote`")
        return value


class PromoteParams(_Section):
    """The gate `classiflow promote` applies before moving @champion."""

    # not_worse: promote unless significantly less accurate; better: only when significantly more accurate
    policy: Literal["not_worse", "better"] = "not_worse"
    alpha: float = Field(0.05, gt=0.0, lt=1.0)  # significance level of McNemar's test
    max_latency_ms: float | None = Field(None, gt=0.0)  # ONNX Runtime batch-1 median budget, or null


class TrackingParams(_Section):
    experiment: str = Field("classiflow", min_length=1)


class ServeParams(_Section):
    """`classiflow serve`: where it listens, which model, micro-batching and the limits on what clients send."""

    host: str = Field("127.0.0.1", min_length=1)  # 0.0.0.0 only behind a proxy or with a token
    port: int = Field(8000, ge=1, le=65535)
    model: str | None = None  # models:/<name>@<alias>, models:/<name>/<version>, <name>@<alias> or a directory
    top_k: int = Field(5, ge=1, le=1000)
    max_batch: int = Field(32, ge=1, le=4096)  # images per model call
    max_wait_ms: float = Field(2.0, ge=0.0, le=1000.0)  # how long a batch waits for more requests
    poll_seconds: float = Field(0.0, ge=0.0)  # > 0: reload when the alias moves; 0: only POST /reload
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    max_batch_images: int = Field(64, ge=1, le=4096)
    max_pixels: int = Field(50_000_000, ge=1, le=64_000_000)  # per decoded image; refuses decompression bombs
    threads: int | None = Field(None, ge=1)  # ONNX Runtime intra-op threads; null: its default (every core)
    prefer: Literal["onnx", "torchscript"] = "onnx"


class Params(_Section):
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    augment: AugmentParams = AugmentParams()
    pretrain: PretrainParams = PretrainParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    prune: PruneParams = PruneParams()
    export: ExportParams = ExportParams()
    registry: RegisterParams = Field(RegisterParams(), alias="register")
    promote: PromoteParams = PromoteParams()
    baseline: BaselineParams = BaselineParams()
    tracking: TrackingParams = TrackingParams()
    serve: ServeParams = ServeParams()
    sweep: SweepParams = SweepParams()

    def flat(self) -> dict[str, Any]:
        """Dotted keys, the shape MLflow params and ``dvc exp run -S`` use."""
        out: dict[str, Any] = {}
        for section, values in self.model_dump(by_alias=True).items():
            for key, value in values.items():
                out[f"{section}.{key}"] = value
        return out


def _format_error(source: str, err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            parts.append(f"{key}: unknown key")
        else:
            parts.append(f"{key}: {e['msg']} (got {e.get('input')!r})")
    return f"{source}: " + "; ".join(parts)


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Apply ``{"train.epochs": 2}``-style overrides, as ``dvc exp run -S`` would."""
    merged = copy.deepcopy(raw)
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if not key:
            raise ClassiflowError(f"override {dotted!r}: expected 'section.key'")
        node = merged.setdefault(section, {})
        if not isinstance(node, dict):
            raise ClassiflowError(f"override {dotted!r}: {section!r} is not a section")
        node[key] = value
    return merged


def parse_params(raw: Any, source: str = "params", overrides: dict | None = None) -> Params:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ClassiflowError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(apply_overrides(raw, overrides))
    except ValidationError as err:
        raise ClassiflowError(_format_error(source, err)) from None


def load_params(path: str | Path = "params.yaml", overrides: dict | None = None) -> Params:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ClassiflowError(f"{path}: not found (run from the project root)") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ClassiflowError(f"{path}: not valid YAML: {err}".replace("\n", " ")) from None
    return parse_params(raw, str(path), overrides)
