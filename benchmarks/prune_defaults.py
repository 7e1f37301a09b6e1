"""Structured pruning settings on the default CIFAR-10 model: accuracy lost against ONNX Runtime batch-1 speed-up.

The base is the committed defaults trained on the shared JPEG copy (the `quick` recipe's project in
benchmarks/.cache/recipes/quick-s42, trained first when missing). Each setting is a throw-away
project in benchmarks/.cache/prune/<setting> that links the base's data and model and runs the real
`classiflow prune` and `classiflow export` stages (the prune stage's accuracy gate opened so that
every setting is exported). The speed-up is ONNX Runtime's batch-1 latency (2 threads: every core
here) of the exported trained model over the pruned one, the two files timed in turn, ROUNDS times
CALLS calls each, median of the rounds' medians: one export stage's own figure varied 1.34-1.66x
for the same pruned shapes.

    python benchmarks/prune_defaults.py 0.5:1:2:0.05 0.4:1:2:0.2   # amount:steps:finetune_epochs:finetune_lr
    python benchmarks/prune_defaults.py --remeasure --doc        # time the saved files again, write the doc
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

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import CACHE, machine, prepared_cifar10, write_section  # noqa: E402

WORK = CACHE / "prune"
RESULTS = WORK / "results.json"
BASE = CACHE / "recipes" / "quick-s42"
CLI = str(Path(sys.executable).parent / "classiflow")
ROUNDS, CALLS = 7, 500
LINKED = ("data/prepared", "data/augmented", "models/model.pt", "metrics/evaluate.json", "metrics/train.json")


def base_project() -> Path:
    """The defaults trained once (through benchmarks/recipes.py, whose `quick` recipe is the defaults)."""
    if not (BASE / "metrics" / "evaluate.json").exists():
        from benchmarks.recipes import run_one

        run_one("quick", 42, prepared_cifar10())
    return BASE


def _parse(setting: str) -> dict:
    amount, steps, epochs, lr = setting.split(":")
    return {"amount": float(amount), "steps": int(steps), "finetune_epochs": int(epochs), "finetune_lr": float(lr)}


def run_one(setting: str, base: Path) -> dict:
    prune = _parse(setting)
    root = WORK / setting.replace(":", "_")
    shutil.rmtree(root, ignore_errors=True)
    for rel in LINKED:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).symlink_to(base / rel)
    params = yaml.safe_load((base / "params.yaml").read_text())
    params["prune"].update(prune, method="structured", sweep=[], max_accuracy_drop=100.0)
    params["export"].update(formats=["onnx"], int8="none", latency_repeats=20, threads=2)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    with open(root / "stages.log", "w") as log:
        start = time.perf_counter()
        subprocess.run([CLI, "prune"], cwd=root, env=env, check=True, stdout=log, stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - start
        subprocess.run([CLI, "export"], cwd=root, env=env, check=True, stdout=log, stderr=subprocess.STDOUT)
    pruned = json.loads((root / "metrics" / "prune.json").read_text())
    ort = ort_latency(root)
    return {
        **prune,
        "setting": setting,
        "accuracy_before": pruned["test_accuracy_before"],
        "accuracy_after": pruned["test_accuracy_after"],
        "drop_points": pruned["accuracy_drop_points"],
        "params_before": pruned["params_before"],
        "params_after": pruned["params_after"],
        "eager_1thread_speedup": pruned["speedup"],
        "ort_ms_before": ort[0],
        "ort_ms_after": ort[1],
        "ort_speedup": ort[0] / ort[1],
        "prune_stage_seconds": seconds,
        "date": dt.date.today().isoformat(),
    }


def ort_latency(root: Path) -> tuple[float, float]:
    """Median batch-1 ms of the trained and the pruned ONNX files, timed in alternating rounds."""
    import numpy as np

    from classiflow.export import runtime

    export = root / "models" / "export"
    predict = [runtime.onnxruntime(export / name, 2) for name in ("model.onnx", "pruned.onnx")]
    image = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    rounds: list[list[float]] = [[], []]
    for _ in range(ROUNDS):
        for i, run in enumerate(predict):
            rounds[i].append(runtime.measure(run, image, CALLS, batch=1)["latency_ms_median"])
    return statistics.median(rounds[0]), statistics.median(rounds[1])


def remeasure(result: dict) -> dict:
    before, after = ort_latency(WORK / result["setting"].replace(":", "_"))
    return result | {"ort_ms_before": before, "ort_ms_after": after, "ort_speedup": before / after}


def table(results: list[dict]) -> str:
    lines = [
        "| amount | steps | fine-tune epochs/step | fine-tune lr | test accuracy | points lost | parameters "
        "| ORT batch-1 ms (2 threads) | ORT speed-up | eager 1-thread speed-up | prune stage |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(results, key=lambda r: (r["amount"], r["steps"], r["finetune_epochs"], r["finetune_lr"])):
        lines.append(
            f"| {r['amount']:.2f} | {r['steps']} | {r['finetune_epochs']} | {r['finetune_lr']:g} "
            f"| {100 * r['accuracy_after']:.2f}% | {r['drop_points']:+.2f} | {r['params_after']:,} "
            f"| {r['ort_ms_before']:.3f} -> {r['ort_ms_after']:.3f} | {r['ort_speedup']:.2f}x "
            f"| {r['eager_1thread_speedup']:.2f}x | {r['prune_stage_seconds']:.0f} s |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("settings", nargs="*", help="amount:steps:finetune_epochs:finetune_lr")
    ap.add_argument("--remeasure", action="store_true", help="time the saved ONNX files of every result again")
    ap.add_argument("--doc", action="store_true", help="write the accumulated results to docs/benchmarks.md")
    args = ap.parse_args()
    if prepared_cifar10() is None:
        sys.exit("no ../shared/datasets/cifar10-jpg.tar.gz: nothing to measure")
    WORK.mkdir(parents=True, exist_ok=True)
    base = base_project() if args.settings else BASE
    for setting in args.settings:
        result = run_one(setting, base)
        old = [r for r in (json.loads(RESULTS.read_text()) if RESULTS.exists() else []) if r["setting"] != setting]
        RESULTS.write_text(json.dumps([*old, result], indent=1))
        print(json.dumps(result), flush=True)
    if args.remeasure:
        RESULTS.write_text(json.dumps([remeasure(r) for r in json.loads(RESULTS.read_text())], indent=1))
    if args.doc:
        results = json.loads(RESULTS.read_text())
        body = (
            f"Machine: {machine()}. The committed defaults (FastNet w16, 2 epochs; test accuracy "
            f"{100 * results[0]['accuracy_before']:.2f}% with flip TTA, {results[0]['params_before']:,} parameters) "
            "pruned by `classiflow prune` (structured, L1 magnitude, fine-tuned with the train section's optimiser, "
            "cosine from the fine-tune lr) and exported by `classiflow export`. ORT speed-up: ONNX Runtime batch-1 "
            f"latency at 2 threads, trained over pruned file, timed in turn, median of {ROUNDS} rounds of {CALLS} "
            "calls; eager 1-thread: the prune stage's own figure. Every setting in one session, one after another.\n\n"
            + table(results)
            + "\n\n`python benchmarks/prune_defaults.py amount:steps:epochs:lr ...`, then `--doc`."
        )
        title = "## Structured pruning settings on the defaults (`benchmarks/prune_defaults.py`)"
        write_section("prune-defaults", f"{title}\n\n{body}")
        print(body)


if __name__ == "__main__":
    main()
