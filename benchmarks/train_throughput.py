"""Train-stage throughput against a bare PyTorch loop on the same prepared arrays.

Both train the SimpleCNN with the same optimizer, batch size and data for the same number
of epochs, alternating so that machine noise hits both; the pipeline must reach >= 0.9x the
bare loop. Also times loading the prepared arrays. Writes a section of docs/benchmarks.md.

    python benchmarks/train_throughput.py [--epochs 1] [--batch-size 32] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import machine, prepared_cifar10, write_section  # noqa: E402
from classiflow.config import TrainParams, parse_params  # noqa: E402
from classiflow.data.prepared import PreparedData, load_prepared  # noqa: E402
from classiflow.models import build_model  # noqa: E402
from classiflow.recipes import load_recipe  # noqa: E402
from classiflow.training import fit  # noqa: E402


def synthetic() -> PreparedData:
    rng = np.random.default_rng(0)
    images = {s: rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8) for s, n in (("train", 45000), ("val", 5000))}
    labels = {s: rng.integers(0, 10, len(x)).astype(np.int64) for s, x in images.items()}
    meta = {
        "classes": [str(i) for i in range(10)],
        "channels": 3,
        "image_size": 32,
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
        "data_hash": "synthetic",
        "dataset": "synthetic",
    }
    return PreparedData(meta, images, labels)


def bare_loop(data: PreparedData, cfg: TrainParams) -> float:
    """What a user would write by hand: tensors in memory, randperm batches, SGD."""
    torch.manual_seed(cfg.seed)
    model = build_model("simplecnn", 3, 10, 32)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    x = torch.from_numpy(data.images["train"]).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(data.labels["train"])
    mean = torch.tensor(data.meta["mean"]).view(1, 3, 1, 1) * 255
    std = torch.tensor(data.meta["std"]).view(1, 3, 1, 1) * 255
    model.train()
    start = time.perf_counter()
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(y))
        for i in range(0, len(y), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            loss = F.cross_entropy(model((x[idx].float() - mean) / std), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return len(y) * cfg.epochs / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = ap.parse_args()

    prepared = prepared_cifar10()
    if prepared is not None:
        t0 = time.perf_counter()
        data = load_prepared(prepared, ("train", "val"))
        load_s = time.perf_counter() - t0
        source = "CIFAR-10 (cifar10-jpg.tar.gz), 45,000 train images"
    else:
        data, load_s, source = synthetic(), float("nan"), "synthetic uint8 arrays (shared data absent), 45,000 images"
    run = {"train.epochs": args.epochs, "train.batch_size": args.batch_size, "train.device": "cpu"}
    run["train.scheduler"] = "none"
    cfg = parse_params({}, overrides=load_recipe("article", REPO) | run).train  # the article's optimiser
    bare, pipe, stage_wall = [], [], []
    for _ in range(args.repeats):
        bare.append(bare_loop(data, cfg))
        t0 = time.perf_counter()
        result = fit(build_model("simplecnn", 3, 10, 32), data, cfg)
        stage_wall.append(time.perf_counter() - t0)
        pipe.append(result.images_per_second)
        print(f"bare {bare[-1]:.0f} img/s, pipeline {pipe[-1]:.0f} img/s", flush=True)
    b, p = statistics.median(bare), statistics.median(pipe)
    wall_rate = len(data.labels["train"]) * cfg.epochs / statistics.median(stage_wall)
    table = f"""## Train-stage throughput vs a bare PyTorch loop

`python benchmarks/train_throughput.py --epochs {args.epochs} --batch-size {args.batch_size} --repeats {args.repeats}`
on {machine()}. Data: {source}. SimpleCNN, SGD (momentum 0.9), batch {args.batch_size},
{args.epochs} epoch(s) per measurement, median of {args.repeats} alternating runs.

| measurement | value |
|---|---|
| load prepared train+val arrays (50,000 images) | {load_s:.3f} s |
| bare PyTorch loop | {b:,.0f} images/s |
| pipeline train loop (`classiflow.training.fit`) | {p:,.0f} images/s |
| pipeline / bare | **{p / b:.2f}x** (bar: >= 0.90x) |
| pipeline incl. per-epoch validation and best-weights copy | {wall_rate:,.0f} images/s |
"""
    print(table)
    if not args.no_write:
        write_section("train_throughput", table)


if __name__ == "__main__":
    main()
