"""Benchmark the classical baseline: accuracy, feature throughput and timings.

Data sets go through the pipeline's own download and prepare code:

- ``digits``: scikit-learn's 1,797 real 8x8 handwritten digits (UCI optdigits), written as
  PNG files and prepared at 32x32. A small stand-in for MNIST, not MNIST itself.
- ``cifar10``: the archive in ``../shared/datasets`` (or ``--archive``), or an already
  prepared directory given with ``--prepared``.

Usage::

    python benchmarks/baseline.py --dataset digits --out reports/bench_digits.md
    python benchmarks/baseline.py --dataset cifar10 --out bench_cifar.md      # ~7 min on 2 cores
    python benchmarks/baseline.py --dataset cifar10 --only hog --hog-max-train 0  # ~9 min

Timings are wall-clock on whatever else the machine runs: read them as approximate.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, write_section  # noqa: E402
from classiflow.atomic import write_text  # noqa: E402
from classiflow.baseline.features import extract  # noqa: E402
from classiflow.baseline.model import load_model  # noqa: E402
from classiflow.baseline.params import BaselineParams  # noqa: E402
from classiflow.config import DataParams  # noqa: E402
from classiflow.data.download import download  # noqa: E402
from classiflow.data.prepare import prepare  # noqa: E402
from classiflow.data.prepared import load_prepared  # noqa: E402
from classiflow.errors import ClassiflowError  # noqa: E402
from classiflow.layout import Layout  # noqa: E402
from classiflow.stages import baseline as stage  # noqa: E402

CIFAR_ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpg.tar.gz"
CIFAR_SHA256 = "d34c68f61cca57aa9144c8f25bda427abb9921bd642d5857a2fc1a6b4416f965"

WARMUP_IMAGES = 64
CONFIGS = {
    "dense SIFT BoVW + linear SVM": {"features": "dense_sift"},
    "HOG + PCA + RBF SVM": {"features": "hog", "scale": True, "pca": 128, "classifier": "rbf_svc", "C": 5.0},
}


def digits_workspace(work: Path) -> Layout:
    from PIL import Image
    from sklearn.datasets import load_digits

    layout = Layout.at(work / "digits")
    if (layout.prepared / "meta.json").exists():
        return layout
    digits = load_digits()
    with tempfile.TemporaryDirectory(prefix="digits-png-") as tmp:
        for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
            path = Path(tmp) / "digits" / str(label) / f"{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((image * (255 / 16)).round().astype(np.uint8), mode="L").save(path)
        download(str(Path(tmp) / "digits"), layout.raw)
    prepare(layout.raw, layout.prepared, DataParams(source="digits", image_size=32))
    return layout


def cifar_workspace(work: Path, archive: Path, prepared: Path | None) -> Layout:
    layout = Layout.at(work / "cifar10")
    if prepared is not None:
        layout.prepared.parent.mkdir(parents=True, exist_ok=True)
        if layout.prepared.is_symlink() or layout.prepared.exists():
            if layout.prepared.resolve() != prepared.resolve():
                raise ClassiflowError(f"{layout.prepared} already holds other data; use another --workdir")
        else:
            layout.prepared.symlink_to(prepared.resolve(), target_is_directory=True)
        return layout
    if (layout.prepared / "meta.json").exists():
        return layout
    if not archive.exists():
        raise ClassiflowError(f"{archive}: not found; pass --archive or --prepared")
    download(str(archive), layout.raw, CIFAR_SHA256)
    prepare(layout.raw, layout.prepared, DataParams(source=str(archive), image_size=32))
    return layout


def throughput(images: np.ndarray, params: BaselineParams, codebook, n_jobs: int) -> float:
    """Images per second of uncached feature extraction (SIFT + encoding, or HOG)."""
    started = time.perf_counter()
    extract(images, params.model_copy(update={"n_jobs": n_jobs}), codebook, None, f"throughput n_jobs={n_jobs}")
    return len(images) / (time.perf_counter() - started)


def bench(layout: Layout, name: str, params: BaselineParams, n_throughput: int) -> dict:
    started = time.perf_counter()
    summary = stage.fit_baseline(layout, params, cache_dir=None)
    wall = time.perf_counter() - started
    model = load_model(stage.baseline_paths(layout).model)
    test = load_prepared(layout.prepared, ("test",)).images["test"][:n_throughput]
    throughput(test[:WARMUP_IMAGES], params, model.codebook, -1)  # start the worker processes
    single = throughput(test, params, model.codebook, 1)
    parallel = throughput(test, params, model.codebook, -1)
    return {
        "name": name,
        "summary": summary,
        "wall": wall,
        "single": single,
        "parallel": parallel,
        "n_throughput": len(test),
        "params": params.model_dump(exclude_defaults=True),
    }


def table(dataset: str, rows: list[dict]) -> str:
    lines = [
        f"### {dataset} (test split, {rows[0]['summary']['test_size']} images)",
        "",
        "| model | train images | accuracy | macro F1 | zero histograms | feature img/s, 1 process | "
        f"feature img/s, {os.cpu_count()} cores | features (s) | SVM fit (s) | predict (ms/img) | "
        "inference incl. features (ms/img) | model size | stage wall (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        s = r["summary"]
        lines.append(
            f"| {r['name']} | {s['train_size']} | {s['accuracy']:.2%} | {s['macro_f1']:.4f} | "
            f"{s['zero_histogram_images']} | {r['single']:.0f} | {r['parallel']:.0f} | "
            f"{s['feature_seconds']:.1f} | {s['fit_seconds']:.1f} | {s['predict_ms_per_image']:.3f} | "
            f"{s['inference_ms_per_image']:.3f} | {s['model_bytes'] / 1e6:.1f} MB | {r['wall']:.0f} |"
        )
    lines.append("")
    for r in rows:
        lines.append(f"- {r['name']}: BaselineParams defaults plus {r['params'] or 'nothing'}")
    lines.append("")
    lines.append(
        f"Throughput measured on {rows[0]['n_throughput']} test images, uncached. "
        "Features and inference use all cores; the SVM fit and predict are single-process."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=["digits", "cifar10"], action="append")
    parser.add_argument("--prepared", type=Path, help="an already prepared CIFAR-10 directory")
    parser.add_argument("--archive", type=Path, default=CIFAR_ARCHIVE)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "classiflow-baseline-bench")
    parser.add_argument("--max-train", type=int, help="subsample training images for every model")
    parser.add_argument(
        "--hog-max-train",
        type=int,
        default=30_000,
        help="training images for the RBF SVM on HOG, 0 for all (its fit grows ~quadratically)",
    )
    parser.add_argument("--throughput-images", type=int, default=2000)
    parser.add_argument("--only", choices=["sift", "hog"], help="benchmark one model")
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    parser.add_argument("--doc", action="store_true", help="also write the 'baseline' section of docs/benchmarks.md")
    args = parser.parse_args(argv)

    report = [f"## Classical baseline benchmark ({machine()}; timings approximate)", ""]
    for dataset in args.dataset or ["digits"]:
        layout = (
            digits_workspace(args.workdir)
            if dataset == "digits"
            else cifar_workspace(args.workdir, args.archive, args.prepared)
        )
        rows = []
        for name, overrides in CONFIGS.items():
            hog = overrides["features"] == "hog"
            if args.only and args.only != ("hog" if hog else "sift"):
                continue
            max_train = args.max_train
            if hog and args.hog_max_train:
                max_train = min(filter(None, [max_train, args.hog_max_train]))
            params = BaselineParams(**overrides, max_train=max_train)
            print(f"{dataset}: {name} ...", file=sys.stderr, flush=True)
            rows.append(bench(layout, name, params, args.throughput_images))
            print(f"  accuracy {rows[-1]['summary']['accuracy']:.4f}", file=sys.stderr, flush=True)
        report.append(table(dataset, rows))
    text = "\n".join(report)
    print(text)
    if args.out:
        write_text(args.out, text)
    if args.doc:
        write_section("baseline", text)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ClassiflowError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
