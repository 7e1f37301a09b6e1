"""Recipes on CIFAR-10 (the shared JPEG copy): test accuracy over seeds and the train stage's wall time.

Each run is a throw-away project in benchmarks/.cache/recipes/<recipe>-s<seed> that links the
cached prepared data and runs the real stage commands (`classiflow augment`, `train`,
`evaluate`); the train stage is timed as a whole process, start-up included. Results
accumulate in benchmarks/.cache/recipes/results.json so seeds can be run one at a time (a run
marked `"contended": true` there, because it shared the cores, counts for accuracy only);
--doc writes the table (with the machine's measured conv/matmul ceiling) to docs/benchmarks.md.

    python benchmarks/recipes.py quick --seeds 42 43 44
    python benchmarks/recipes.py --doc
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import CACHE, REPO, machine, require_cifar10, write_section  # noqa: E402
from classiflow.cpu import usable_cores  # noqa: E402
from classiflow.models import build_model  # noqa: E402
from classiflow.recipes import list_recipes, load_recipe  # noqa: E402

WORK = CACHE / "recipes"
RESULTS = WORK / "results.json"
CLI = [str(Path(sys.executable).parent / "classiflow")]


def ceiling() -> dict:
    """fp32 GFLOP/s of a large matmul and of a 3x3 conv (forward) on all cores: what a model could reach."""
    torch.set_num_threads(usable_cores())
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    x, w = torch.randn(256, 64, 32, 32), torch.randn(64, 64, 3, 3)

    def rate(fn, flops):
        fn()
        start = time.perf_counter()
        for _ in range(5):
            fn()
        return 5 * flops / (time.perf_counter() - start) / 1e9

    return {
        "matmul_gflops": rate(lambda: a @ b, 2 * 2048**3),
        "conv_gflops": rate(lambda: torch.nn.functional.conv2d(x, w, padding=1), 2 * 256 * 64 * 64 * 9 * 32 * 32),
    }


def train_flops_per_image(overrides: dict, channels: int = 3, size: int = 32) -> float:
    """Forward + backward FLOPs of one image (CIFAR-10's 32x32x3 unless told), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(overrides["model.name"], channels, 10, size, width=overrides.get("model.width"))
    x = torch.randn(2, channels, size, size)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return counter.get_total_flops() / 2


def run_one(recipe: str, seed: int, prepared: Path) -> dict:
    overrides = load_recipe(recipe, REPO) | {"train.seed": seed, "augment.seed": seed}
    return {"recipe": recipe, "seed": seed, **run_overrides(WORK / f"{recipe}-s{seed}", overrides, prepared)}


def run_overrides(root: Path, overrides: dict, prepared: Path) -> dict:
    """params.yaml with ``overrides`` in a fresh project at ``root``, through the augment, train and evaluate stages."""
    shutil.rmtree(root, ignore_errors=True)
    (root / "data").mkdir(parents=True)
    (root / "data" / "prepared").symlink_to(prepared)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in overrides.items():
        section, name = key.split(".")
        params[section][name] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    log = open(root / "stages.log", "w")  # noqa: SIM115 - kept open across the three stages

    def stage(name: str) -> float:
        start = time.perf_counter()
        subprocess.run([*CLI, name], cwd=root, env=env, check=True, stdout=log, stderr=subprocess.STDOUT)
        return time.perf_counter() - start

    stage("augment")
    wall = stage("train")
    stage("evaluate")
    train = json.loads((root / "metrics" / "train.json").read_text())
    evaluation = json.loads((root / "metrics" / "evaluate.json").read_text())
    meta = json.loads((prepared / "meta.json").read_text())
    return {
        "model": overrides["model.name"],
        "width": overrides.get("model.width"),
        "epochs": overrides["train.epochs"],
        "val_accuracy": train["best_val_accuracy"],
        "test_accuracy": evaluation["accuracy"],
        "train_stage_seconds": wall,
        "train_loop_seconds": train["train_seconds"],
        "images_per_second": train["images_per_second"],
        "train_flops_per_image": train_flops_per_image(overrides, meta["channels"], meta["image_size"]),
        "date": dt.date.today().isoformat(),
    }


def load_results() -> list[dict]:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else []


def table(results: list[dict], ceil: dict) -> str:
    lines = [
        "| recipe | model | epochs | runs | test accuracy (mean ± std) | train stage wall time | images/s "
        "| GFLOP/s | of conv ceiling |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for recipe in list_recipes(REPO):
        rows = [r for r in results if r["recipe"] == recipe]
        if not rows:
            continue
        acc = [100 * r["test_accuracy"] for r in rows]
        timed = [r for r in rows if not r.get("contended")]  # runs that shared the cores are not timed
        wall = [r["train_stage_seconds"] for r in timed]
        ips = statistics.mean(r["images_per_second"] for r in timed)
        gflops = ips * rows[0]["train_flops_per_image"] / 1e9
        sd = f" ± {statistics.stdev(acc):.2f}" if len(acc) > 1 else ""
        wsd = f" ± {statistics.stdev(wall):.0f}" if len(wall) > 1 else ""
        wsd += f" ({len(wall)} timed)" if len(wall) < len(rows) else ""
        width = f" w{rows[0]['width']}" if rows[0]["width"] else ""
        model = f"{rows[0]['model']}{width}"
        lines.append(
            f"| {recipe} | {model} | {rows[0]['epochs']} | {len(rows)} | {statistics.mean(acc):.2f}%{sd} "
            f"| {statistics.mean(wall):.0f} s{wsd} | {ips:,.0f} | {gflops:.0f} | {gflops / ceil['conv_gflops']:.0%} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", nargs="?")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42])
    ap.add_argument("--doc", action="store_true", help="write the accumulated results to docs/benchmarks.md")
    args = ap.parse_args()
    prepared = require_cifar10()
    WORK.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds if args.recipe else []:
        result = run_one(args.recipe, seed, prepared)
        RESULTS.write_text(json.dumps([*load_results(), result], indent=1))
        print(json.dumps(result), flush=True)
    if args.doc:
        ceil = ceiling()
        body = (
            f"Machine: {machine()}. Measured ceiling (fp32, all cores): matmul {ceil['matmul_gflops']:.0f} GFLOP/s, "
            f"3x3 conv {ceil['conv_gflops']:.0f} GFLOP/s. CIFAR-10 from the shared JPEG copy (45,000 train, "
            "5,000 val, 10,000 test). Train stage wall time = the `classiflow train` process, start-up included. "
            "GFLOP/s = images/s x forward+backward FLOPs per image (torch FlopCounterMode). Runs that shared "
            "the cores with other jobs count for accuracy but not for time.\n\n"
            + table(load_results(), ceil)
            + "\n\n`python benchmarks/recipes.py <recipe> --seeds 42 43 44`, then `--doc`."
        )
        write_section("recipes", "## Recipes on CIFAR-10\n\n" + body)
        print(body)


if __name__ == "__main__":
    main()
