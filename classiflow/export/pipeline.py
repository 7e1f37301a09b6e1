"""Export one model to every configured format, checking each file before timing it.

Files are written straight into the directory given, which the stage makes a temporary sibling of
``models/export`` and renames into place only at the end. A file that fails its check is deleted there
and reported as rejected, with the reason and whatever was measured, so it is never shipped, registered or
served; only a required file (the trained model's fp32 ONNX, which serving runs) or ``export.strict``
turns a failed check into a failed stage.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from classiflow.errors import ClassiflowError
from classiflow.export import runtime
from classiflow.export.convert import example_input, to_onnx, to_torchscript
from classiflow.export.params import ExportParams
from classiflow.export.quantize import quantize_dynamic, quantize_static
from classiflow.export.verify import Int8CheckFailed, accuracy, check_fp32, check_int8

log = logging.getLogger("classiflow.export")
SINGLE_CHECK = 4  # images re-run one at a time: a batch size baked into the file fails here, not in production


@dataclass(frozen=True)
class Source:
    """``module`` takes raw pixels (``WithPreprocessing``); ``path`` is the checkpoint it came from."""

    label: str
    module: nn.Module
    path: Path

    @property
    def stem(self) -> str:
        return "model" if self.label == "trained" else self.label

    def required(self, fmt: str) -> bool:
        return self.label == "trained" and fmt == "onnx"


@dataclass(frozen=True)
class Images:
    test: np.ndarray  # N,H,W,C uint8
    labels: np.ndarray
    calibration: np.ndarray  # float32 N,C,H,W pixels from the training split


def file_names(stem: str, params: ExportParams) -> dict[str, str]:
    names = {}
    if "torchscript" in params.formats:
        names["torchscript"] = f"{stem}.ts"
    if "onnx" in params.formats:
        names["onnx"] = f"{stem}.onnx"
    if "dynamic" in params.int8_modes:
        names["onnx-int8-dynamic"] = f"{stem}.int8-dynamic.onnx"
    if "static" in params.int8_modes:
        names["onnx-int8-static"] = f"{stem}.int8.onnx"
    return names


def _logits(name: str, predict: runtime.Predict, images: np.ndarray, batch: int) -> np.ndarray:
    try:
        return runtime.logits(predict, images, batch)
    except Exception as err:  # noqa: BLE001 - a runtime that cannot run the file is a failed check
        line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ClassiflowError(f"{name}: fails on a batch of {min(batch, len(images))} ({line})") from None


def _check(
    name: str, predict: runtime.Predict, reference: np.ndarray, images: Images, params: ExportParams, int8: bool
) -> dict[str, float]:
    out = _logits(name, predict, images.test, params.throughput_batch)
    singles = _logits(name, predict, images.test[:SINGLE_CHECK], 1)
    if singles.shape != out[:SINGLE_CHECK].shape:
        raise ClassiflowError(f"{name}: one image at a time gives logits of shape {singles.shape[1:]}")
    if int8:
        return check_int8(
            name,
            reference,
            out,
            images.labels,
            params.int8_max_accuracy_drop,
            params.int8_min_agreement,
            params.int8_tie_margin,
        )
    diff = check_fp32(name, reference, out, params.atol)
    diff = max(diff, check_fp32(name, reference[:SINGLE_CHECK], singles, params.atol))
    return {"accuracy": accuracy(out, images.labels), "max_abs_diff": diff}


def _predictor(fmt: str, path: Path, threads: int) -> runtime.Predict:
    try:
        return runtime.torchscript(path) if fmt == "torchscript" else runtime.onnxruntime(path, threads)
    except Exception as err:  # noqa: BLE001 - a file its own runtime cannot load is a failed check
        line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ClassiflowError(f"{path.name}: cannot be loaded ({line})") from None


def _write(fmt: str, source: Source, out_dir: Path, names: dict[str, str], images: Images, opset: int) -> None:
    path = out_dir / names[fmt]
    if fmt.startswith("onnx-int8") and not (out_dir / names["onnx"]).exists():
        raise ClassiflowError(f"{path.name}: not made, since {names['onnx']} was rejected")
    if fmt in ("torchscript", "onnx"):
        example = example_input(images.test.shape[3], images.test.shape[1])
        if fmt == "torchscript":
            to_torchscript(source.module, example, path)
        else:
            to_onnx(source.module, example, path, opset)
    elif fmt == "onnx-int8-dynamic":
        quantize_dynamic(out_dir / names["onnx"], path)
    else:
        quantize_static(out_dir / names["onnx"], path, images.calibration)


def export_model(source: Source, out_dir: Path, params: ExportParams, images: Images, threads: int) -> list[dict]:
    """Write, check and time every format of ``source``; one report row per format, eager PyTorch first."""
    names = file_names(source.stem, params)
    rows = []
    with runtime.torch_threads(threads):
        predict = runtime.eager(source.module)
        reference = runtime.logits(predict, images.test, params.throughput_batch)
        base = runtime.measure(predict, images.test, params.latency_repeats, params.throughput_batch)
        checks = {"accuracy": accuracy(reference, images.labels), "status": "reference"}
        rows.append(_row(source, "pytorch", source.path, checks, base, base))
        for fmt, file_name in names.items():
            path = out_dir / file_name
            try:
                _write(fmt, source, out_dir, names, images, params.opset)
                predict = _predictor(fmt, path, threads)
                checks = _check(file_name, predict, reference, images, params, int8=fmt.startswith("onnx-int8"))
            except ClassiflowError as err:
                if params.strict or source.required(fmt):
                    raise
                path.unlink(missing_ok=True)
                rows.append(_rejected(source, fmt, file_name, err))
                continue
            timing = runtime.measure(predict, images.test, params.latency_repeats, params.throughput_batch)
            rows.append(_row(source, fmt, path, {**checks, "status": "verified"}, timing, base))
    return rows


def _rejected(source: Source, fmt: str, file_name: str, err: ClassiflowError) -> dict:
    log.warning("export: left out %s (export.strict: true fails the stage instead)", err)
    measured = err.measured if isinstance(err, Int8CheckFailed) else {}
    row = {"model": source.label, "format": fmt, "file": file_name, "status": "rejected", "reason": str(err)}
    return row | measured


def _row(source: Source, fmt: str, path: Path, checks: dict, timing: dict, base: dict) -> dict:
    return {
        "model": source.label,
        "format": fmt,
        "file": path.name,
        "bytes": path.stat().st_size,
        **checks,
        **timing,
        "speedup_latency": base["latency_ms_median"] / timing["latency_ms_median"],
        "speedup_throughput": timing["images_per_second"] / base["images_per_second"],
    }
