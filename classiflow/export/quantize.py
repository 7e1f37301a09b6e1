"""int8 ONNX files made with ONNX Runtime's quantization tools, from the verified fp32 ONNX file.

Why ONNX Runtime rather than ``torch.ao``: resnet20 at 32x32 on this project's 2-core AVX2 (no VNNI) EPYC,
one thread each, CPU time (the box was busy, wall times were noise), batch-1 ms / batch-256 img/s:
eager fp32 5.5 / 344, ``torch.ao`` FX static int8 (x86) 4.2 / 727, ORT fp32 1.4 / 776, ORT static QDQ int8
1.0 / 1393. ORT static int8 is the fastest, and it is one self-contained file (388 kB against 1.1 MB fp32)
that any ONNX runtime loads, while a ``torch.ao`` model only runs in PyTorch with the fbgemm/x86 engine,
and that API is deprecated in favour of torchao.

Static: QDQ format (the layout ORT fuses into QLinearConv and other runtimes understand), per-channel int8
weights, uint8 activations with MinMax ranges from a calibration sample of training images, after
``quant_pre_process`` (shape inference and graph folding first, as ORT recommends).

The stem stays in float: every node with no weight layer before it, that is the input normalisation and the
first Conv/Gemm/MatMul (twice in a flip-TTA file, which runs the network on both views). With ORT's defaults
the default fastnet predicted nearly one class (CIFAR-10: 38% against 74% in fp32). The raw pixels are exact
in uint8, but the *normalised* image was rounded again, to a grid that does not line up with pixel levels,
and fastnet's first layer, a frozen whitening conv with filter gains from 0.3 to 40, amplified that rounding
above the signal of its high-frequency channels. Other stems amplify it less, yet it cost them too (resnet8
lost points, simplecnn a tenth of its agreement; docs/benchmarks.md). With the stem in float the first
rounding happens after the first layer, which is a few percent of the work, so the file keeps int8's speed.
The second cause, on grayscale digits (10% accuracy), was fastnet's batch norm behind a max pool, which no
converter folds: see ``classiflow.models.fastnet.ConvGroup``. Percentile or entropy calibration, quantizing
only Conv/Gemm, S8S8 and 7-bit weights each moved logit SQNR by about 1 dB and fixed neither.
``reduce_range`` (7-bit weights, ORT's advice against u8s8 saturation on non-VNNI AVX2) was worse here, and
S8S8 gave the same SQNR as U8S8, so saturation is not a cause; it is off.

Dynamic: weights of MatMul/Gemm only, activations quantized at run time, like ``torch.ao``'s
``quantize_dynamic`` on Linear. For conv nets that is just the classifier head: the file barely shrinks and
nothing gets faster (resnet20: 1.3 ms / 736 img/s, as fp32). ORT can also quantize Conv dynamically
(ConvInteger), but that ran ~10x slower than fp32 here, so it is not used; the mode is for ViT's MatMuls.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from classiflow.errors import ClassiflowError
from classiflow.export.convert import INPUT_NAME

CALIBRATION_BATCH = 32
DYNAMIC_OPS = ["MatMul", "Gemm", "Attention"]
WEIGHT_OPS = ("Conv", "Gemm", "MatMul")


@contextlib.contextmanager
def _preprocessed(src: Path) -> Iterator[Path]:
    """ORT's pre-processing with ONNX's own shape inference only. ORT's symbolic shape inference fails on a
    flip-TTA graph and on CBAM's pooled-attention branches, and on failing it writes
    ``sym_shape_infer_temp.onnx`` and its weights into the working directory, the user's project; the graphs
    it would produce here have the same nodes."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    tmp = src.with_name(f".{src.stem}.pre.onnx")
    try:
        quant_pre_process(str(src), str(tmp), skip_symbolic_shape=True)
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def stem_nodes(path: Path) -> list[str]:
    """Names of the nodes with no weight layer before them, first weight layers included: the input
    normalisation and every first layer (a TTA file runs the network twice, so it has two)."""
    after_weight: dict[str, bool] = {}
    names = []
    for node in onnx.load(str(path), load_external_data=False).graph.node:  # topologically sorted
        behind = any(after_weight.get(name, False) for name in node.input)
        if not behind:
            names.append(node.name)
        for name in node.output:
            after_weight[name] = behind or node.op_type in WEIGHT_OPS
    return names


class _DropOrtAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "onnxruntime" not in record.pathname


@contextlib.contextmanager
def _quiet_ort_logging() -> Iterator[None]:
    """ORT's quantizer logs advice straight to the root logger; the stage reports its own numbers instead."""
    root, quiet, ort = logging.getLogger(), _DropOrtAdvice(), logging.getLogger("onnxruntime")
    level = ort.level
    root.addFilter(quiet)
    ort.setLevel(logging.ERROR)  # its shape inference logs guesses about symbolic batch sizes through its own loggers
    try:
        yield
    finally:
        root.removeFilter(quiet)
        ort.setLevel(level)


def _fail(dst: Path, err: BaseException) -> ClassiflowError:
    dst.unlink(missing_ok=True)
    line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return ClassiflowError(f"{dst.name}: int8 quantization failed ({line})")


def quantize_dynamic(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    try:
        with _quiet_ort_logging(), _preprocessed(src) as pre:
            ort_quantize_dynamic(pre, dst, weight_type=QuantType.QInt8, op_types_to_quantize=DYNAMIC_OPS)
    except Exception as err:  # noqa: BLE001 - whatever the quantizer trips on, there is no usable file
        raise _fail(dst, err) from None


def _reader(pixels: np.ndarray, batch: int):
    """ORT's CalibrationDataReader over float32 N,C,H,W pixels, in fixed-size batches."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([pixels[i : i + batch] for i in range(0, len(pixels), batch)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            chunk = next(self._batches, None)
            return None if chunk is None else {INPUT_NAME: chunk}

    return Reader()


def quantize_static(src: Path, dst: Path, calibration: np.ndarray, float_stem: bool = True, **options) -> None:
    """``calibration``: float32 N,C,H,W raw pixels (0-255) from the training split, never the test split.

    MinMax calibration keeps only per-batch minima and maxima, so memory does not grow with activations.
    ORT's ``CalibMaxIntermediateOutputs`` is not used: in 1.32 it discards the batches it should fold in.
    ``float_stem`` and ``options`` (passed to ORT's ``quantize_static``) exist for the int8 benchmark, which
    measures the alternatives; the stage uses the defaults.
    """
    from onnxruntime.quantization import QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    reader = _reader(np.ascontiguousarray(calibration, dtype=np.float32), CALIBRATION_BATCH)
    try:
        with _quiet_ort_logging(), _preprocessed(src) as pre:
            settings = {
                "quant_format": QuantFormat.QDQ,
                "per_channel": True,
                "activation_type": QuantType.QUInt8,
                "weight_type": QuantType.QInt8,
                "nodes_to_exclude": stem_nodes(pre) if float_stem else [],
            }
            ort_quantize_static(pre, dst, reader, **(settings | options))
    except Exception as err:  # noqa: BLE001 - whatever the quantizer trips on, there is no usable file
        raise _fail(dst, err) from None
