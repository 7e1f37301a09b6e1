"""Data-parallel training on this machine: images/s of 1 and 2 processes at the same global batch, and the weights.

The train stage (committed params, one epoch of the prepared CIFAR-10 train split) runs as: one process with
every core, with and without two micro-batches; one process on one core with two micro-batches (the per-process
baseline, each rank's arithmetic); two processes (torchrun, one core each), whose weights must equal the
one-core run's. Scaling efficiency is the two processes' images/s over twice the one-core process's. Writes a
section of docs/benchmarks.md.

    python benchmarks/distributed.py [--no-write]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import machine, prepared_cifar10, write_section  # noqa: E402
from classiflow.config import load_params  # noqa: E402
from classiflow.layout import Layout  # noqa: E402
from classiflow.stages import augment as augment_stage  # noqa: E402
from classiflow.stages import train as train_stage  # noqa: E402

ONE_CORE = "1 process, 1 core, 2 micro-batches"
TWO = "2 processes (1 core each)"
RUNS = (  # label, train overrides, cores
    ("1 process, all cores, 2 micro-batches", {"micro_batches": 2}, None),
    ("1 process, all cores", {}, None),
    (ONE_CORE, {"micro_batches": 2}, 1),
    (TWO, {"processes": 2}, None),
)


def run(layout: Layout, overrides: dict, cores: int | None) -> dict:
    base = load_params(REPO / "params.yaml")
    params = base.model_copy(update={"train": base.train.model_copy(update={"epochs": 1, "min_steps": 0} | overrides)})
    augment_stage.run(layout, params)
    layout.last_checkpoint.unlink(missing_ok=True)
    every = os.sched_getaffinity(0)
    if cores:
        os.sched_setaffinity(0, set(sorted(every)[:cores]))
    try:
        start = time.perf_counter()
        value = train_stage.run(layout, params).value
        wall = time.perf_counter() - start
    finally:
        os.sched_setaffinity(0, every)
    return value | {"wall": wall, "state": torch.load(layout.model, weights_only=True)["state_dict"]}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / a.abs().max().clamp_min(1e-12)).item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    prepared = prepared_cifar10()
    if prepared is None:
        sys.exit("needs ../shared/datasets/cifar10-jpg.tar.gz")
    with tempfile.TemporaryDirectory(prefix="ddp-") as tmp:
        layout = Layout.at(tmp)
        layout.prepared.parent.mkdir(parents=True)
        layout.prepared.symlink_to(prepared)
        results = {}
        for label, overrides, cores in RUNS:
            results[label] = run(layout, overrides, cores)
            print(label, f"{results[label]['images_per_second']:.0f} img/s", flush=True)
    one_core, two = results[ONE_CORE]["images_per_second"], results[TWO]
    diff = max(_relative(two["state"][k], results[ONE_CORE]["state"][k]) for k in two["state"])
    rows = [
        f"| {label} | {r['images_per_second']:,.0f} | {r['images_per_second'] / one_core:.2f} | "
        f"{r['train_seconds']:.1f} | {r['wall']:.1f} | {r['best_val_accuracy']:.2%} |"
        for label, r in results.items()
    ]
    markdown = f"""## Data-parallel training on the CPU (`benchmarks/distributed.py`)

`python benchmarks/distributed.py` on {machine()}: the train stage with the committed params for one epoch
of the 45,000 CIFAR-10 training images (batch {load_params(REPO / "params.yaml").train.batch_size}, fastnet).
*x 1 core*: images/s over the one-core process's. Scaling efficiency of 2 processes (each on its own core) over
2 x the one-core process: **{two["images_per_second"] / (2 * one_core):.0%}**; against one process on every
core with the same micro-batches: {two["images_per_second"] / results[RUNS[0][0]]["images_per_second"]:.2f}x.
Stage wall time includes torchrun's start and each rank's imports and data loading. The two processes' weights
and batch-norm statistics equal the one-core run's to a relative {diff:.1e} (the largest, per tensor, of
max |a - b| / max |a|).

| run | images/s | x 1 core | train s | stage wall s | val accuracy |
|---|---:|---:|---:|---:|---:|
{chr(10).join(rows)}
"""
    print(markdown)
    if not args.no_write:
        write_section("distributed", markdown)


if __name__ == "__main__":
    main()
