"""Static int8 of the zoo test's short-trained fastnet at ONNX opset 18 (GELU as Div, Erf, Add, Mul) and 20 (one
Gelu op), with the alternatives that were tried, on the whole CIFAR-10 test split.

The model is trained as tests/test_real_zoo.py trains it (width 16, 200 steps of 64 images from 3,000 training
images, one thread) and checked on 10,000 test images with 512 calibration images. Writes a section of
docs/benchmarks.md.

    python benchmarks/int8_opset.py [--no-write]
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import tests.real_images as real_images  # noqa: E402
import tests.test_real_zoo as zoo  # noqa: E402
from benchmarks.common import machine, write_section  # noqa: E402
from classiflow.export import quantize, runtime  # noqa: E402
from classiflow.export.convert import example_input, to_onnx  # noqa: E402
from classiflow.tensors import WithPreprocessing  # noqa: E402

GELU_PARTS = ("Div", "Erf", "Add")


def _gelu_nodes(path: Path) -> list[str]:
    """Opset 18's GELU nodes: Div, Erf, Add and its two Muls (the exporter names them gelu* and node_Mul_*)."""
    return [
        n.name for n in onnx.load(str(path)).graph.node
        if n.op_type in GELU_PARTS
        or (n.op_type == "Mul" and ("gelu" in n.name.lower() or n.name.startswith("node_Mul_")))
    ]  # fmt: skip


def main() -> None:
    from onnxruntime.quantization import CalibrationMethod

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="opset-") as tmp:
        tmp = Path(tmp)
        data = zoo._prepared(real_images.cifar_subset(tmp, test_per_class=1000), tmp / "cifar", 32)
        test, labels, train = data.images["test"], data.labels["test"], data.images["train"]
        calibration = runtime.pixels(train[np.sort(np.random.default_rng(0).choice(len(train), 512, replace=False))])
        module = WithPreprocessing(
            zoo._train("fastnet", data, zoo.STEPS["cifar10"]), data.meta["mean"], data.meta["std"]
        )
        for opset in (18, 20):
            to_onnx(module.eval(), example_input(3, 32), tmp / f"m{opset}.onnx", opset)
        reference = runtime.logits(runtime.onnxruntime(tmp / "m18.onnx", 1), test, 500)
        fp32_speed = runtime.measure(runtime.onnxruntime(tmp / "m18.onnx", 1), test[:512], 3, 256)["images_per_second"]
        right = reference.argmax(1) == labels
        stem = quantize.stem_nodes(tmp / "m18.onnx")
        variants = [
            ("opset 18 (before)", 18, {}),
            ("opset 18, the GELU nodes kept in float", 18, {"nodes_to_exclude": stem + _gelu_nodes(tmp / "m18.onnx")}),
            ("opset 18, percentile 99.999 calibration", 18,
             {"calibrate_method": CalibrationMethod.Percentile, "extra_options": {"CalibPercentile": 99.999}}),
            ("opset 18, only Conv/Gemm quantized", 18, {"op_types_to_quantize": ["Conv", "Gemm", "MatMul"]}),
            ("**opset 20 (now the default, `export.opset`)**", 20, {}),
        ]  # fmt: skip
        rows = []
        for label, opset, options in variants:
            quantize.quantize_static(tmp / f"m{opset}.onnx", tmp / "q.onnx", calibration, **options)
            counts = collections.Counter(n.op_type for n in onnx.load(str(tmp / "q.onnx")).graph.node)
            predict = runtime.onnxruntime(tmp / "q.onnx", 1)
            logits = runtime.logits(predict, test, 500)
            hit = logits.argmax(1) == labels
            sqnr = 10 * np.log10((reference**2).sum() / ((logits - reference) ** 2).sum())
            speed = runtime.measure(predict, test[:512], 3, 256)["images_per_second"]
            lost, agree = 100 * (right.mean() - hit.mean()), (logits.argmax(1) == reference.argmax(1)).mean()
            flips = f"{(hit & ~right).sum()} / {(right & ~hit).sum()}"
            quantized, db = counts["QuantizeLinear"], f"{sqnr:.1f} dB"
            rows.append(f"| {label} | {lost:.2f} | {agree:.2%} | {flips} | {db} | {quantized} | {speed:,.0f} |")
            print(rows[-1], flush=True)
    markdown = f"""### Opset 20: GELU as one node (`benchmarks/int8_opset.py`)

`python benchmarks/int8_opset.py` on {machine()}, one thread: the zoo test's fastnet (width 16, 200 steps of 64
images, {right.mean():.2%} fp32) on the {len(labels):,} CIFAR-10 test images, 512 calibration images; fp32 ONNX
{fp32_speed:,.0f} img/s at batch 256.

| fastnet int8 | points lost | agreement | flips right / wrong | logit SQNR | QuantizeLinear | batch-256 img/s |
|---|---:|---:|---:|---:|---:|---:|
{chr(10).join(rows)}
"""
    print(markdown)
    if not args.no_write:
        write_section("int8-opset", markdown)


if __name__ == "__main__":
    main()
