"""Recipes by time budget, found by search: an Optuna study per data set and budget over the quick recipe's knobs.

Each trial is a real run of the augment, train and evaluate stages (`benchmarks/recipes.py`'s throw-away
project) with `train.precision: auto`, on CIFAR-10 (the shared JPEG copy) or, with `--data digits`, on the
tests' 5,000 real MNIST digits (small grayscale images: never mirrored, small rotations searched). The budget is
train-stage seconds, start-up included: a trial's width and batch size fix its speed, measured here on this
machine (a few real training steps per width and batch, until a finished trial at that width and batch gives the
real loop's rate), and its epochs are the most that fit the budget. The seconds outside the loop (start-up,
per-epoch validation) are fitted to the data set's finished trials (a prior until two of them differ). Budgets
are seconds on one kind of CPU, so studies, the docs section and the plot are kept per CPU class (vector unit
and the precision `auto` means there): a Zen 3 day does not extend, or overwrite, a bf16 Xeon day's study. The
study maximises validation accuracy (test accuracy is recorded, never searched on); trials are ranked again by
their measured time, so one that overran its budget is reported where it landed. `--transfer B` starts the study
with the best trial of budget B's study at every width, then TPE goes on. Studies live in SQLite under
benchmarks/.cache/search/<class>, so a study can be extended trial by trial; `--doc` writes the class's table
and the plot of test accuracy against train-stage seconds (docs/recipe_front-<class>.png).

    python benchmarks/recipe_search.py --budget 120 --trials 10
    python benchmarks/recipe_search.py --budget 600 --trials 3 --widths 32 48 64 --transfer 120
    python benchmarks/recipe_search.py --data digits --budget 60 --trials 12
    python benchmarks/recipe_search.py --doc
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    CACHE,
    REPO,
    cpu_class,
    machine,
    require_cifar10,
    require_digits,
    write_section,
)
from benchmarks.recipes import run_overrides  # noqa: E402
from classiflow.cpu import usable_cores  # noqa: E402
from classiflow.models import build_model  # noqa: E402
from classiflow.recipes import load_recipe  # noqa: E402
from classiflow.sweep.params import Dimension, SweepParams  # noqa: E402
from classiflow.sweep.study import open_study, suggest  # noqa: E402
from classiflow.training.device import autocast, resolve_precision  # noqa: E402

CLASS = cpu_class()  # studies, plot and docs section are kept per CPU class
WORK = CACHE / "search" / CLASS
DATA = {"cifar10": require_cifar10, "digits": require_digits}
# beside the quick recipe, what a data set fixes: digits are never mirrored
FIXED = {"cifar10": {}, "digits": {"augment.flip": False, "data.image_size": 28}}
BATCHES = {"cifar10": [256, 512, 1024], "digits": [64, 128, 256]}  # digits: 3,600 train images
LOOP_OVERHEAD = 1.05  # gathering, augmenting and normalising batches: the real loop against bare steps
PLOT = REPO / "docs" / f"recipe_front-{CLASS}.png"
TITLE = {"cifar10": "CIFAR-10", "digits": "MNIST digits (3,600 train)"}


@dataclass(frozen=True)
class TimeModel:
    """Train-stage seconds = ``start_up_s`` + epochs x (train images + ``val_cost`` x validation images) x the
    loop's seconds per image. The defaults are the prior (forward-only validation at a third of a training
    image); :func:`fitted_time_model` replaces them with what the trials measured."""

    start_up_s: float = 10.0
    val_cost: float = 1 / 3

    def epochs_within(self, budget: float, per_image: float, sizes: dict) -> int:
        epoch = per_image * (sizes["train"] + self.val_cost * sizes["val"])
        return max(1, math.floor((budget - self.start_up_s) / epoch))


def fitted_time_model(rows: list[dict], sizes: dict) -> TimeModel:
    """Least squares of the stage's seconds outside the loop on epochs x validation images / loop images per
    second, over finished trials of one data set (at 600 s on CIFAR-10 those seconds were 78-101, far above
    the prior's start-up, so the prior overran the budget at large widths)."""
    x = [r["epochs"] * sizes["val"] / r["images_per_second"] for r in rows]
    if len({round(v, 1) for v in x}) < 2:
        return TimeModel()
    y = [r["train_stage_seconds"] - r["train_loop_seconds"] for r in rows]
    slope, intercept = np.polyfit(x, y, 1)
    return TimeModel(max(float(intercept), 0.0), max(float(slope), 0.0))


def study_name(data: str, budget: int) -> str:
    return f"budget-{budget}" if data == "cifar10" else f"{data}-budget-{budget}"


def study_params(data: str, widths: list[int], seed: int) -> SweepParams:
    """The searched knobs (epochs follow from the budget), ranges around the quick recipe's values, in the
    sweep section's own terms."""
    space = {
        "model.width": Dimension(choices=widths),
        "train.batch_size": Dimension(choices=BATCHES[data]),
        "train.lr": Dimension(low=0.4, high=4.0, log=True),
        "train.label_smoothing": Dimension(low=0.0, high=0.3),
        "train.weight_decay": Dimension(low=3e-4, high=4e-3, log=True),
        "train.momentum": Dimension(low=0.75, high=0.92),
        "augment.translate": Dimension(low=1, high=4),
    }
    if data == "digits":
        space["augment.rotation"] = Dimension(low=0.0, high=15.0)
    return SweepParams(seed=seed, storage=f"sqlite:///{(WORK / 'studies.db').resolve()}", space=space)


def seconds_per_image(width: int, batch: int, meta: dict, steps: int = 6) -> float:
    """Train-step seconds per image of fastnet at ``width`` on the data's images (SGD, channels_last, the
    resolved precision)."""
    torch.manual_seed(0)
    device = torch.device("cpu")
    precision = resolve_precision(device, "auto")
    channels, size, classes = meta["channels"], meta["image_size"], len(meta["classes"])
    model = build_model("fastnet", channels, classes, size, width=width).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    x = torch.randn(batch, channels, size, size).to(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,))

    def step():
        with autocast(device, precision):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step(), step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / (steps * batch)


def loop_seconds_per_image(key: tuple[int, int], finished: list[dict], bare: float) -> float:
    """The real loop's seconds per training image at (width, batch): what earlier trials at that key measured,
    else the ``bare`` steps' seconds times the loop's mean slow-down over earlier trials (``LOOP_OVERHEAD``
    until one recorded it). On the digits at batch 64 the loop ran at 0.5-0.7x the bare steps' rate (per-image
    rotation, per-step costs), so with the bare rate alone such trials overran a 60 s budget by half or more."""
    measured = [r["images_per_second"] for r in finished if (r["model.width"], r["train.batch_size"]) == key]
    if measured:
        return 1 / float(np.mean(measured))
    slowdowns = [
        1 / (r["images_per_second"] * r["bare_seconds_per_image"]) for r in finished if "bare_seconds_per_image" in r
    ]
    return (float(np.mean(slowdowns)) if slowdowns else LOOP_OVERHEAD) * bare


def budget_study(data: str, budget: int, cfg: SweepParams):
    WORK.mkdir(parents=True, exist_ok=True)
    return open_study(cfg, study_name(data, budget), REPO, startup_trials=4)


def transfer(study, data: str, source_budget: int, cfg: SweepParams) -> None:
    """Queue the best settings of the ``source_budget`` study once per width (TPE takes over afterwards)."""
    best = budget_study(data, source_budget, cfg).best_trial.params
    widths = cfg.space["model.width"].choices
    for width in widths:
        study.enqueue_trial(best | {"model.width": width}, skip_if_exists=True)


def run_trial(trial, data: str, budget: int, cfg: SweepParams, prepared: Path, speed: dict) -> float:
    chosen = suggest(trial, cfg)
    meta = json.loads((prepared / "meta.json").read_text())
    key = (chosen["model.width"], chosen["train.batch_size"])
    finished = [r for r in all_trials() if r["data"] == data]
    timing = fitted_time_model(finished, meta["sizes"])
    if key not in speed:
        speed[key] = seconds_per_image(*key, meta)
    epochs = timing.epochs_within(budget, loop_seconds_per_image(key, finished, speed[key]), meta["sizes"])
    overrides = load_recipe("quick", REPO) | FIXED[data] | chosen
    overrides |= {"train.epochs": epochs, "train.min_steps": 0, "train.precision": "auto"}
    result = run_overrides(WORK / f"{study_name(data, budget)}-t{trial.number}", overrides, prepared)
    for name, value in (result | {"bare_seconds_per_image": speed[key]}).items():
        trial.set_user_attr(name, value)
    print(json.dumps({"trial": trial.number, **chosen, **result}), flush=True)
    return result["val_accuracy"]


def all_trials() -> list[dict]:
    import optuna

    db = WORK / "studies.db"
    if not db.exists():
        return []
    storage = f"sqlite:///{db.resolve()}"
    rows = []
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        *prefix, _, budget = summary.study_name.split("-")
        row = {"data": prefix[0] if prefix else "cifar10", "budget": int(budget)}
        for t in study.get_trials(states=[optuna.trial.TrialState.COMPLETE]):
            rows.append({**row, "trial": t.number, **t.params, **t.user_attrs})
    return rows


def front(rows: list[dict]) -> list[dict]:
    """Trials no other trial beats on both validation accuracy and train-stage seconds."""
    return [
        r
        for r in rows
        if not any(
            o["val_accuracy"] >= r["val_accuracy"]
            and o["train_stage_seconds"] <= r["train_stage_seconds"]
            and (o["val_accuracy"], o["train_stage_seconds"]) != (r["val_accuracy"], r["train_stage_seconds"])
            for o in rows
        )
    ]


def plot(rows: list[dict], best: list[dict]) -> None:
    """One panel per data set: test accuracy against train-stage seconds, the front dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = [d for d in DATA if any(r["data"] == d for r in rows)]
    fig, axes = plt.subplots(1, len(datasets), figsize=(7 * len(datasets), 4.5), squeeze=False)
    for ax, data in zip(axes[0], datasets, strict=True):
        for budget in sorted({r["budget"] for r in rows if r["data"] == data}):
            mine = [r for r in rows if (r["data"], r["budget"]) == (data, budget)]
            ax.scatter(
                [r["train_stage_seconds"] for r in mine],
                [100 * r["test_accuracy"] for r in mine],
                label=f"trials, {budget} s budget",
                alpha=0.6,
            )
            ax.axvline(budget, color="grey", linestyle=":", linewidth=1)
        line = sorted((r for r in best if r["data"] == data), key=lambda r: r["train_stage_seconds"])
        ax.plot(
            [r["train_stage_seconds"] for r in line],
            [100 * r["test_accuracy"] for r in line],
            "k--",
            label="front (by validation accuracy)",
        )
        ax.set_xlabel("train-stage seconds (start-up included)")
        ax.set_ylabel(f"{TITLE[data]} test accuracy (%)")
        ax.set_title(f"fastnet recipes found by search, one CPU: {TITLE[data]}")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    PLOT.parent.mkdir(exist_ok=True)
    tmp = PLOT.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(PLOT)


def doc() -> str:
    rows = sorted(all_trials(), key=lambda r: (list(DATA).index(r["data"]), r["train_stage_seconds"]))
    best = [r for data in DATA for r in front([r for r in rows if r["data"] == data])]
    plot(rows, best)
    lines = [
        "| data | budget | trial | width | batch | epochs | lr | smoothing | decay | momentum | translate | rotation "
        "| val | test | train stage s | images/s | front |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['data']} | {r['budget']} | {r['trial']} | {r['model.width']} | {r['train.batch_size']} "
            f"| {r['epochs']} | {r['train.lr']:.2f} | {r['train.label_smoothing']:.2f} "
            f"| {r['train.weight_decay']:.4f} | {r['train.momentum']:.2f} | {r['augment.translate']} "
            f"| {r.get('augment.rotation', 0.0):.1f} | {100 * r['val_accuracy']:.2f}% "
            f"| {100 * r['test_accuracy']:.2f}% | {r['train_stage_seconds']:.0f} | {r['images_per_second']:,.0f} "
            f"| {'yes' if r in best else ''} |"
        )
    return (
        f"Machine: {machine()}, `train.precision: auto` = {resolve_precision(torch.device('cpu'), 'auto')} here. "
        "Every trial is the real augment, train and evaluate stages with the quick recipe's other settings, on "
        "the shared CIFAR-10 copy (45,000 train, 5,000 val, 10,000 test) or the 5,000 MNIST digits of the tests "
        "(3,600 train, 400 val, 1,000 test; no flip, rotation searched); its epochs are the most that fit the "
        "budget at the speed measured for its width and batch, with the seconds outside the loop fitted to the "
        "data set's earlier trials. TPE (seed 0, 4 random trials first) maximises validation accuracy; the front "
        "is the trials of a data set that no other beats on both validation accuracy and train-stage seconds. "
        f"Plot: `docs/{PLOT.name}`.\n\n" + "\n".join(lines)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=sorted(DATA), default="cifar10")
    ap.add_argument("--budget", type=int, help="train-stage seconds per trial")
    ap.add_argument("--trials", type=int, default=0, help="trials to add to the budget's study")
    ap.add_argument("--widths", type=int, nargs="+", default=[16, 24, 32])
    ap.add_argument("--transfer", type=int, help="queue the best trial of this budget's study at every width")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--doc", action="store_true", help="write the trials to docs/benchmarks.md")
    args = ap.parse_args()
    torch.set_num_threads(usable_cores())
    if args.budget and args.trials:
        prepared = DATA[args.data]()
        cfg = study_params(args.data, args.widths, args.seed)
        study = budget_study(args.data, args.budget, cfg)
        if args.transfer:
            transfer(study, args.data, args.transfer, cfg)
        speed: dict = {}
        run = lambda t: run_trial(t, args.data, args.budget, cfg, prepared, speed)  # noqa: E731
        study.optimize(run, n_trials=args.trials)
    if args.doc:
        body = doc()
        title = f"## Recipes found by search on {CLASS} (`benchmarks/recipe_search.py`, {dt.date.today()})"
        write_section(f"recipe-search-{CLASS}", f"{title}\n\n{body}")
        print(body)


if __name__ == "__main__":
    main()
