"""A deployable model directory (``preprocessing.json`` + ``model.onnx`` or ``model.ts``) ready to predict.

ONNX Runtime is preferred: it needs no PyTorch, so the serving image stays small. TorchScript is the fallback
when there is no ONNX file or ONNX Runtime is missing, and PyTorch is imported only then. A model is returned
only after one dummy batch has gone through it with the right output shape, so the server swaps in nothing that
would fail on its first request.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from classiflow.data.resize import POLICIES
from classiflow.errors import ClassiflowError
from classiflow.layout import SPEC_FILE
from classiflow.operating import UNCERTAIN, OperatingPoint, decide
from classiflow.serving.explainer import unavailable

log = logging.getLogger("classiflow.serving")
DEFAULT_INPUT = "pixels"
UNCERTAIN_ANSWER = "uncertain"
Runner = Callable[[np.ndarray], np.ndarray]  # float32 N,C,S,S raw pixels -> logits N,K


@dataclass
class LoadedModel:
    name: str
    version: str
    classes: list[str]
    image_size: int
    channels: int
    runtime: str  # "onnxruntime" or "torchscript"
    resize: str = "squash"  # how a non-square image is fitted (classiflow.data.resize), as in training
    temperature: float = 1.0  # logits are divided by it before the softmax (classiflow.calibration)
    operating_point: OperatingPoint | None = None  # thresholds chosen on validation (classiflow.operating)
    metrics: dict = field(default_factory=dict)
    spec: dict = field(default_factory=dict)  # the preprocessing.json content
    run_logits: Runner | None = field(default=None, repr=False, compare=False)
    details: dict = field(default_factory=dict)  # file, providers/threads: what /metadata reports
    explain_unavailable: str | None = "not checked"  # why /explain cannot answer here, None when it can
    explainer: Any = field(default=None, repr=False, compare=False)  # built on the first /explain

    def predict(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, S, S, C) images -> float32 (N, K) class probabilities (softmax of the logits over the
        temperature evaluate fitted on validation, so that a probability means what it says)."""
        expected = (self.image_size, self.image_size, self.channels)
        if images.ndim != 4 or images.shape[1:] != expected or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 (N, {', '.join(map(str, expected))}), got {images.dtype} {images.shape}")
        if self.run_logits is None:
            raise RuntimeError(f"model {self.name} version {self.version} has no runtime attached")
        pixels = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)
        return softmax(np.asarray(self.run_logits(pixels)) / self.temperature)

    def decide(self, probabilities: np.ndarray) -> list[str]:
        """The answer per image: a class, or ``uncertain`` when the operating point's thresholds say so."""
        answer = decide(np.asarray(probabilities), self.classes, self.operating_point)
        return [UNCERTAIN_ANSWER if i == UNCERTAIN else self.classes[i] for i in answer]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z.astype(np.float32)


def _read_spec(directory: Path) -> dict:
    path = directory / SPEC_FILE
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ClassiflowError(f"{directory}: no {SPEC_FILE}; expected the export stage's models/export") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ClassiflowError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(spec, dict):
        raise ClassiflowError(f"{path}: expected a JSON object")
    classes = spec.get("classes")
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        raise ClassiflowError(f"{path}: 'classes' must be a list of at least two class names")
    if len(set(classes)) != len(classes):
        raise ClassiflowError(f"{path}: 'classes' has duplicates")
    size = spec.get("image_size")
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 4096:
        raise ClassiflowError(f"{path}: 'image_size' must be an integer from 1 to 4096, got {size!r}")
    if spec.get("channels") not in (1, 3) or isinstance(spec.get("channels"), bool):
        raise ClassiflowError(f"{path}: 'channels' must be 1 or 3, got {spec.get('channels')!r}")
    if spec.get("resize", "squash") not in POLICIES:
        raise ClassiflowError(f"{path}: 'resize' must be one of {', '.join(POLICIES)}, got {spec.get('resize')!r}")
    t = spec.get("temperature", 1.0)
    if isinstance(t, bool) or not isinstance(t, int | float) or not 0.0 < t < 1000.0:
        raise ClassiflowError(f"{path}: 'temperature' must be a positive number, got {t!r}")
    _operating_point(spec, path)
    return spec


def _operating_point(spec: dict, path: Path) -> OperatingPoint | None:
    raw = spec.get("operating_point")
    if raw is None:
        return None
    try:
        point = OperatingPoint.from_dict(raw)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ClassiflowError(f"{path}: 'operating_point' must hold policy, target, normal and thresholds") from None
    unknown = sorted({*point.thresholds, *([point.normal] if point.normal else [])} - set(spec["classes"]))
    if unknown:
        raise ClassiflowError(f"{path}: 'operating_point' names classes the model does not have: {', '.join(unknown)}")
    return point


def _file(directory: Path, spec: dict, kind: str, default: str) -> Path:
    files = spec.get("files")
    name = files.get("trained", {}).get(kind, default) if isinstance(files, dict) else default
    return directory / str(name)


def _onnx_runner(path: Path, input_name: str, threads: int | None) -> tuple[Runner, dict]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # idle intra-op threads spin-wait by default: in a server they would burn the cores the event loop needs
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    try:
        session = ort.InferenceSession(str(path), options, providers=providers or None)
    except Exception as err:  # noqa: BLE001 - ORT raises its own exception types for damaged files
        raise ClassiflowError(f"{path}: ONNX Runtime cannot load it ({_first_line(err)})") from None
    names = [i.name for i in session.get_inputs()]
    if input_name not in names:
        raise ClassiflowError(f"{path}: no input named {input_name!r} (inputs: {', '.join(names)})")

    def run(pixels: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: pixels})[0]

    return run, {"file": path.name, "providers": session.get_providers(), "threads": threads}


def _torchscript_runner(path: Path, threads: int | None) -> tuple[Runner, dict]:
    try:
        import torch
    except ImportError:
        raise ClassiflowError(f"{path.parent}: no usable ONNX model and PyTorch is not installed") from None
    if threads:
        torch.set_num_threads(threads)  # process-wide: the server runs one model at a time
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as err:  # noqa: BLE001 - a damaged file raises RuntimeError or worse
        raise ClassiflowError(f"{path}: PyTorch cannot load it ({_first_line(err)})") from None

    def run(pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(pixels)).float().numpy()

    return run, {"file": path.name, "providers": ["torch-cpu"], "threads": torch.get_num_threads()}


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _onnxruntime_importable() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _runner(directory: Path, spec: dict, threads: int | None, prefer: str) -> tuple[str, Runner, dict]:
    onnx_path = _file(directory, spec, "onnx", "model.onnx")
    ts_path = _file(directory, spec, "torchscript", "model.ts")
    input_name = str((spec.get("input") or {}).get("name", DEFAULT_INPUT))
    onnx_ok = onnx_path.is_file() and _onnxruntime_importable()
    if onnx_path.is_file() and not onnx_ok:
        log.warning("onnxruntime is not installed; falling back to %s", ts_path.name)
    if onnx_ok and not (prefer == "torchscript" and ts_path.is_file()):
        return ("onnxruntime", *_onnx_runner(onnx_path, input_name, threads))
    if ts_path.is_file():
        return ("torchscript", *_torchscript_runner(ts_path, threads))
    raise ClassiflowError(f"{directory}: neither {onnx_path.name} (with onnxruntime) nor {ts_path.name} to serve")


def _check(model: LoadedModel, path: Path) -> None:
    """One dummy batch of two: a wrong input size or class count fails here, not on a client's request."""
    dummy = np.full((2, model.image_size, model.image_size, model.channels), 128, np.uint8)
    try:
        probs = model.predict(dummy)
    except Exception as err:  # noqa: BLE001 - any runtime failure means the directory is not servable
        raise ClassiflowError(
            f"{path}: the {model.runtime} model fails on a {model.channels}x{model.image_size}x{model.image_size} "
            f"input ({_first_line(err)})"
        ) from None
    if probs.shape != (2, len(model.classes)):
        raise ClassiflowError(
            f"{path}: the model outputs {probs.shape[1:]} values per image but preprocessing.json lists "
            f"{len(model.classes)} classes"
        )
    if not np.isfinite(probs).all():
        raise ClassiflowError(f"{path}: the model outputs NaN or infinite values")


def load_model_dir(
    path: Path,
    name: str = "local",
    version: str = "path",
    metrics: dict | None = None,
    threads: int | None = None,
    prefer: Literal["onnx", "torchscript"] = "onnx",
) -> LoadedModel:
    """Load a directory holding preprocessing.json and model.onnx (or model.ts), checked on a dummy batch.

    An MLflow download of a registered version keeps the files under ``extra_files/``: that is looked into too.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise ClassiflowError(f"{directory}: not a directory")
    if not (directory / SPEC_FILE).exists() and (directory / "extra_files" / SPEC_FILE).exists():
        directory = directory / "extra_files"
    spec = _read_spec(directory)
    runtime, run, details = _runner(directory, spec, threads, prefer)
    model = LoadedModel(
        name=name,
        version=str(version),
        classes=list(spec["classes"]),
        image_size=int(spec["image_size"]),
        channels=int(spec["channels"]),
        runtime=runtime,
        resize=spec.get("resize", "squash"),
        temperature=float(spec.get("temperature", 1.0)),
        operating_point=_operating_point(spec, directory / SPEC_FILE),
        metrics=dict(metrics or {}),
        spec=spec,
        run_logits=run,
        details={**details, "directory": str(directory)},
    )
    _check(model, directory)
    model.explain_unavailable = unavailable(directory, spec)
    return model


def describe(model: LoadedModel) -> dict[str, Any]:
    """What /metadata says about the served model."""
    return {
        "name": model.name,
        "version": model.version,
        "classes": model.classes,
        "metrics": model.metrics,
        "runtime": model.runtime,
        "runtime_details": {k: v for k, v in model.details.items() if k != "directory"},
        "architecture": model.spec.get("model"),
        "data_hash": model.spec.get("data_hash"),
        "temperature": model.temperature,
        "operating_point": model.operating_point and model.operating_point.as_dict(),
        "explain": {"available": model.explain_unavailable is None, "detail": model.explain_unavailable},
    }
