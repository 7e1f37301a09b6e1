"""Augmentation throughput (classiflow.augment) against the SimpleCNN training step it feeds.

Times ``BatchAugment.images`` on the CIFAR-10 train split (45,000 images) in batches of 512:
the batched flip + translate, batched random erasing, per-image rotation and per-image
TrivialAugment, plus a per-image torchvision v2 loop doing the same flip + crop for reference.
Then times a SimpleCNN training step (forward, backward, SGD step) at the same batch size and
derives what each augmentation leaves of the training speed when run in the same process
(1 / (1/train + 1/augment)): below 50% it more than halves training speed. Writes a section
of docs/benchmarks.md, except with --limit or --no-write.

    python benchmarks/augment_throughput.py [--threads 2] [--batch-size 512] [--limit 2048]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, prepared_cifar10, write_section  # noqa: E402
from benchmarks.train_throughput import synthetic  # noqa: E402
from classiflow.augment import build_augment  # noqa: E402
from classiflow.config import AugmentParams  # noqa: E402
from classiflow.data.prepared import load_prepared  # noqa: E402
from classiflow.models import build_model  # noqa: E402
from classiflow.tensors import Normalizer, to_nchw  # noqa: E402

OFF = {"flip": False, "translate": 0}


def rate(fn: Callable[[torch.Tensor], object], x: torch.Tensor, batch_size: int, repeats: int) -> float:
    """Images/s of ``fn`` over all of ``x`` in batches, median of ``repeats`` passes (after a warm-up batch)."""
    fn(x[:batch_size])
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for s in range(0, len(x), batch_size):
            fn(x[s : s + batch_size])
        rates.append(len(x) / (time.perf_counter() - start))
    return statistics.median(rates)


def policy_fn(**fields) -> Callable[[torch.Tensor], torch.Tensor]:
    augment = build_augment(AugmentParams(**{"flip": True, **fields}), 10, channels=3, image_size=32)
    generator = torch.Generator().manual_seed(0)
    return lambda xb: augment.images(xb, generator)


def v2_loop_fn() -> Callable[[torch.Tensor], torch.Tensor]:
    """What a per-image torchvision pipeline does: one v2 call per image, then a stack."""
    transform = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()])
    return lambda xb: torch.stack([transform(img) for img in xb])


def train_step_rate(x: torch.Tensor, y: torch.Tensor, mean, std, batch_size: int, images: int) -> float:
    """Images/s of SimpleCNN forward + backward + SGD step at ``batch_size`` (CPU, fp32)."""
    torch.manual_seed(0)
    model = build_model("simplecnn", 3, 10, 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    normalizer = Normalizer(mean, std)
    model.train()
    x, y = x[:images], y[:images]

    def step(s: int) -> None:
        loss = F.cross_entropy(model(normalizer(x[s : s + batch_size])), y[s : s + batch_size])
        opt.zero_grad()
        loss.backward()
        opt.step()

    step(0)  # warm-up
    start = time.perf_counter()
    for s in range(0, len(x), batch_size):
        step(s)
    return len(x) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=1, help="passes over the data per measurement (median)")
    ap.add_argument("--train-images", type=int, default=10240, help="images for the training-step timing")
    ap.add_argument("--limit", type=int, default=None, help="only the first N train images; writes nothing")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    prepared = prepared_cifar10()
    if prepared is not None:
        data = load_prepared(prepared, ("train",))
        source = "CIFAR-10 (cifar10-jpg.tar.gz) train split"
    else:
        data, source = synthetic(), "synthetic uint8 arrays (shared data absent)"
    x = to_nchw(data.images["train"])
    y = torch.from_numpy(data.labels["train"])
    if args.limit:
        x, y = x[: args.limit], y[: args.limit]
    source += f", {len(x):,} images"
    bs = args.batch_size

    rows: list[tuple[str, float]] = []
    for name, fields in [
        ("batched flip + translate ±4 (default policy)", {}),
        ("batched random erasing p=0.5", {**OFF, "erasing": 0.5}),
        ("per-image rotation ±15°", {**OFF, "rotation": 15.0}),
        ("per-image TrivialAugmentWide", {**OFF, "auto": "trivial"}),
        ("default + rotation 15° + erasing 0.25", {"rotation": 15.0, "erasing": 0.25}),
    ]:
        rows.append((name, rate(policy_fn(**fields), x, bs, args.repeats)))
        print(f"{name}: {rows[-1][1]:,.0f} images/s", flush=True)
    name = "per-image v2 loop: RandomCrop(32, padding=4) + RandomHorizontalFlip (reference)"
    rows.append((name, rate(v2_loop_fn(), x, bs, args.repeats)))
    print(f"{name}: {rows[-1][1]:,.0f} images/s", flush=True)
    train_images = min(args.train_images, len(x))
    train = train_step_rate(x, y, data.meta["mean"], data.meta["std"], bs, train_images)
    print(f"SimpleCNN train step: {train:,.0f} images/s", flush=True)

    lines = []
    for name, aug in rows:
        combined = 1.0 / (1.0 / train + 1.0 / aug)
        lines.append(f"| {name} | {aug:,.0f} | {combined:,.0f} | {combined / train:.0%} |")
    limited = f" --limit {args.limit}" if args.limit else ""
    table = f"""## Augmentation throughput vs the training step

`python benchmarks/augment_throughput.py --threads {args.threads} --batch-size {bs} --repeats {args.repeats}{limited}`
on {machine()}. Data: {source}, uint8 N,C,H,W batches of {bs}, `torch.set_num_threads({args.threads})`.
Training step: SimpleCNN forward + backward + SGD step at batch {bs}, fp32 on the CPU, over
{train_images:,} images: **{train:,.0f} images/s**. "Training with it" is
1 / (1/train + 1/augment), the speed when augmentation runs in the training process before
each step; below 50% it more than halves training speed. Per-image ops run on one intra-op
thread (`classiflow.augment.batch.SINGLE_THREAD_PIXELS`).

| augmentation | augment images/s | training with it, images/s | share of plain training |
|---|---|---|---|
{chr(10).join(lines)}
"""
    print(table)
    if not args.no_write and not args.limit:
        write_section("augment_throughput", table)


if __name__ == "__main__":
    main()
