"""Where the train step's time goes: torch.profiler over the real `fit` of a recipe, per phase and operator.

Runs `classiflow.training.fit` with the recipe's model, optimiser, precision and augmentation on the
shared CIFAR-10 copy (one epoch of the 45,000 train images, or the first --images; validation on the
whole val split), once to warm up, twice unprofiled for the throughput (the faster run counts, as
the ceiling's best round does), once under torch.profiler. The loop marks its phases
(`classiflow.batch`, `.forward`, `.backward`, `.optimizer`, `.validate`);
each operator's self time goes to the phase that ran it and, in the forward and backward passes, to
a kind of operator.
Effective GFLOP/s (images/s x forward+backward FLOPs per image) is set against a 3x3 conv
forward+backward ceiling measured in the same run at the recipe's precision.

    python benchmarks/profile_step.py quick fast quick+compile [--images 8192]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import CACHE, REPO, cpu_class, machine, prepared_cifar10, write_section  # noqa: E402
from classiflow.augment import build_augment, load_policy  # noqa: E402
from classiflow.config import parse_params  # noqa: E402
from classiflow.cpu import usable_cores  # noqa: E402
from classiflow.data.prepared import PreparedData, load_prepared  # noqa: E402
from classiflow.models import build_model  # noqa: E402
from classiflow.recipes import load_recipe  # noqa: E402
from classiflow.training import fit  # noqa: E402
from classiflow.training.device import autocast, resolve_precision  # noqa: E402
from classiflow.training.loop import Inputs  # noqa: E402

POLICY = CACHE / "recipes" / "quick-s42" / "data" / "augmented"  # the defaults' resolved augmentation
CEILING_ROUNDS = 7
PLAIN_RUNS = 2
PHASES = ("batch", "forward", "backward", "optimizer", "validate")
KINDS = (  # first match wins; operator names as the profiler reports them
    ("convolution", ("conv",)),
    ("batch norm", ("batch_norm",)),
    ("activation", ("gelu", "relu", "silu")),
    ("pooling", ("max_pool", "amax", "avg_pool", "adaptive")),
    ("linear + loss", ("addmm", "mm", "linear", "log_softmax", "nll_loss", "cross_entropy")),
    ("dtype and layout copies", ("copy_", "to_copy", "contiguous", "clone")),
)


def kind(name: str) -> str:
    lowered = name.lower()
    return next((k for k, keys in KINDS if any(key in lowered for key in keys)), "other")


def subset(data: PreparedData, images: int | None) -> PreparedData:
    keep = {"train": images, "val": None, "test": 0}
    return PreparedData(
        data.meta,
        {s: data.images[s][:n] for s, n in keep.items()},
        {s: data.labels[s][:n] for s, n in keep.items()},
    )


def conv_ceiling(precision: str, device: torch.device) -> float:
    """GFLOP/s of a 3x3 conv (256 x 64 -> 64 channels, 32x32, channels_last) forward + backward on all cores."""
    x = torch.randn(256, 64, 32, 32).to(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(64, 64, 3, 3).to(memory_format=torch.channels_last).requires_grad_()

    def once():
        with autocast(device, precision):
            y = F.conv2d(x, w, padding=1)
        y.float().sum().backward()

    once()
    best = float("inf")
    for _ in range(CEILING_ROUNDS):  # the best round: one slow round (another process, a clock dip) is noise
        start = time.perf_counter()
        for _ in range(3):
            once()
        best = min(best, (time.perf_counter() - start) / 3)
    return 3 * 2 * 256 * 64 * 64 * 9 * 32 * 32 / best / 1e9


def flops_per_image(spec: dict) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(**spec)
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(2, 3, 32, 32)).sum().backward()
    return counter.get_total_flops() / 2


def attribute(prof) -> tuple[dict, dict, dict]:
    """Self time (s) per phase, per (phase, kind) and per operator of the forward and backward passes."""
    phase_time, kind_time, op_time = defaultdict(float), defaultdict(float), defaultdict(float)
    for event in prof.events():
        if event.name.startswith("classiflow."):
            continue
        parent, phase = event.cpu_parent, "outside the phases"
        while parent is not None:
            if parent.name.startswith("classiflow."):
                phase = parent.name.removeprefix("classiflow.")
                break
            parent = parent.cpu_parent
        seconds = event.self_cpu_time_total / 1e6
        phase_time[phase] += seconds
        if phase in ("forward", "backward"):
            kind_time[(phase, kind(event.name))] += seconds
            op_time[event.name] += seconds
    return phase_time, kind_time, op_time


def _top(op_time: dict, steps: int, n: int = 8) -> dict:
    return {k: 1000 * v / steps for k, v in sorted(op_time.items(), key=lambda kv: -kv[1])[:n]}


def run(recipe: str, data: PreparedData) -> dict:
    name, _, variant = recipe.partition("+")  # quick+compile: the recipe with train.compile on
    overrides = load_recipe(name, REPO) | {"train.epochs": 1, "train.min_steps": 0, "train.device": "cpu"}
    overrides |= {"train.compile": True} if variant == "compile" else {}
    params = parse_params({}, overrides=overrides)
    cfg, meta = params.train, data.meta
    spec = {"name": params.model.name, "in_channels": 3, "num_classes": 10, "image_size": 32}
    spec["width"] = params.model.width
    policy = load_policy(POLICY, params.augment, meta["data_hash"])
    inputs = Inputs(augment=build_augment(policy, 10, channels=3, image_size=32), augment_seed=params.augment.seed)
    fit(build_model(**spec), data, cfg, inputs=inputs)  # warm-up: allocator, oneDNN primitives
    plain = [fit(build_model(**spec), data, cfg, inputs=inputs).images_per_second for _ in range(PLAIN_RUNS)]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        profiled = fit(build_model(**spec), data, cfg, inputs=inputs)
    phase_time, kind_time, op_time = attribute(prof)
    steps = len(data.labels["train"]) // cfg.batch_size
    precision = resolve_precision(torch.device("cpu"), cfg.precision)
    return {
        "recipe": recipe,
        "model": f"{spec['name']} w{spec['width']}",
        "batch_size": cfg.batch_size,
        "precision": precision,
        "steps": steps,
        "train_images": len(data.labels["train"]),
        "images_per_second": max(plain),  # the best run, as for the ceiling
        "unprofiled_runs": plain,
        "profiled_images_per_second": profiled.images_per_second,
        "flops_per_image": flops_per_image(spec),
        "conv_ceiling_gflops": conv_ceiling(precision, torch.device("cpu")),
        "phase_ms_per_step": {k: 1000 * v / steps for k, v in phase_time.items()},
        "kind_ms_per_step": {f"{p}/{k}": 1000 * v / steps for (p, k), v in kind_time.items()},
        "top_ops_ms_per_step": _top(op_time, steps),
    }


def section(results: list[dict]) -> str:
    recipes, images = " ".join(r["recipe"] for r in results), results[0]["train_images"]
    parts = [
        f"Machine: {machine()}, {usable_cores()} threads. `python benchmarks/profile_step.py {recipes}`: the real "
        f"`fit` on {images:,} CIFAR-10 train images (one epoch, validation on the 5,000 val images), the "
        "recipe's augmentation; self time of every operator under torch.profiler, "
        "per step, attributed to the loop phase that ran it. The profiler slows the loop (images/s below), so shares "
        "matter more than the absolute milliseconds. Ceiling: 3x3 conv 64->64 channels at 32x32, batch 256, "
        "channels_last, forward+backward at the recipe's precision, measured in the same run."
    ]
    for r in results:
        gflops = r["images_per_second"] * r["flops_per_image"] / 1e9
        total = sum(r["phase_ms_per_step"].values())
        parts.append(
            f"### {r['recipe']}: {r['model']}, batch {r['batch_size']}, {r['precision']}\n\n"
            f"{r['images_per_second']:,.0f} images/s unprofiled (runs: "
            f"{', '.join(f'{x:,.0f}' for x in r['unprofiled_runs'])}; "
            f"{r['profiled_images_per_second']:,.0f} profiled); "
            f"{r['flops_per_image'] / 1e6:.1f} MFLOP per image forward+backward, so **{gflops:.0f} GFLOP/s, "
            f"{gflops / r['conv_ceiling_gflops']:.0%} of the conv ceiling** ({r['conv_ceiling_gflops']:.0f} GFLOP/s)."
        )
        rows = ["| phase | ms/step | share |", "|---|---:|---:|"]
        for phase in (*PHASES, "outside the phases"):
            ms = r["phase_ms_per_step"].get(phase, 0.0)
            rows.append(f"| {phase} | {ms:.1f} | {ms / total:.0%} |")
        parts.append("\n".join(rows))
        rows = ["| forward + backward | forward ms/step | backward ms/step | share of the step |"]
        rows.append("|---|---:|---:|---:|")
        for name in (*(k for k, _ in KINDS), "other"):
            f, b = (r["kind_ms_per_step"].get(f"{p}/{name}", 0.0) for p in ("forward", "backward"))
            rows.append(f"| {name} | {f:.1f} | {b:.1f} | {(f + b) / total:.0%} |")
        parts.append("\n".join(rows))
        parts.append("Heaviest operators (self ms/step, forward and backward): " + ", ".join(
            f"`{k}` {v:.1f}" for k, v in r["top_ops_ms_per_step"].items()
        ) + ".")  # fmt: skip
    return "\n\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipes", nargs="+")
    ap.add_argument("--images", type=int, default=None, help="train on the first N train images (default: all)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = ap.parse_args()
    prepared = prepared_cifar10()
    if prepared is None or not POLICY.exists():
        sys.exit("needs ../shared/datasets/cifar10-jpg.tar.gz and `python benchmarks/recipes.py quick` run once")
    data = subset(load_prepared(prepared), args.images)
    results = [run(recipe, data) for recipe in args.recipes]
    (CACHE / "profile_step.json").write_text(json.dumps(results, indent=1))
    body = section(results)
    print(body)
    if not args.no_write:
        machine_class = cpu_class()
        title = f"## Where the train step's time goes on {machine_class} (`benchmarks/profile_step.py`)"
        write_section(f"profile-{machine_class}", f"{title}\n\n{body}")


if __name__ == "__main__":
    main()
