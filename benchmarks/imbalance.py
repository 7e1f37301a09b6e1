"""Imbalanced defects: plain training against class weights and a class-balanced sampler, at the same budget.

The issue's setting: DeepPCB patches (split by board) with every ``ok`` patch of train kept and 1 in 20 of each
defect class (seeded), so that a defect class has about 50 train images against 1,379 ``ok`` ones; the test
split is left whole (about 470-660 per class), so its accuracy and balanced accuracy both mean something. Each
run is the pipeline's own stage functions (augment, train, evaluate) on one prepared copy; the runs differ only
in ``train.class_weights``, ``train.sampler`` and ``train.select_by``, so they take the same number of steps.
Paired statistics on the test images: McNemar's test on per-image correctness (the promotion gate's test) and a
paired bootstrap interval of the balanced-accuracy difference. Writes the "imbalance" section of
docs/benchmarks.md.

    python benchmarks/imbalance.py [--keep-one-in 20] [--image-size 64] [--runs plain,class-weights,sampler]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import CACHE, machine, write_section  # noqa: E402

ARCHIVE = REPO.parent / "shared" / "datasets" / "deeppcb-patches.tar.gz"
WORK = CACHE / "imbalance"
NORMAL = "ok"
# every run: leak-free validation (a board image's patches, ok and defects, stay together) and the inspection
# operating point chosen on it
COMMON = {
    "data.group_by": r"(\d+)_\d+\.png$",
    "evaluate.normal_class": NORMAL,
    "evaluate.threshold_policy": "min_recall",
    "evaluate.threshold_target": 0.99,
}
BALANCED = {"train.select_by": "val_balanced_accuracy"}
RUNS = {  # label -> overrides of the committed defaults; "full" trains on the whole train split
    "plain": {},
    "class-weights": {"train.class_weights": "balanced"} | BALANCED,
    "sampler": {"train.sampler": "balanced"} | BALANCED,
    "full": {},
}
BOOTSTRAP = 2000


def imbalanced_tree(keep_one_in: int, seed: int = 0) -> tuple[Path, dict[str, int]]:
    """The archive's tree with train cut to every ``ok`` patch and 1 in ``keep_one_in`` of each defect class
    (hard links; test untouched); returns it and the train counts."""
    from classiflow.data.archive import extract

    raw = WORK / "extracted"
    if not raw.exists():
        extract(ARCHIVE, raw)
    source = next(p.parent for p in raw.rglob("train") if (p.parent / "test").is_dir())
    out = WORK / f"tree-1in{keep_one_in}-s{seed}"
    shutil.rmtree(out, ignore_errors=True)
    rng, counts = np.random.default_rng(seed), {}
    for split in ("train", "test"):
        for folder in sorted(p for p in (source / split).iterdir() if p.is_dir()):
            files = sorted(folder.iterdir())
            if split == "train" and folder.name != NORMAL:
                keep = max(1, round(len(files) / keep_one_in))
                files = [files[i] for i in sorted(rng.choice(len(files), keep, replace=False))]
            (out / split / folder.name).mkdir(parents=True)
            for f in files:
                os.link(f, out / split / folder.name / f.name)
            if split == "train":
                counts[folder.name] = len(files)
    return out, counts


def _base(tree: Path, image_size: int) -> Path:
    from classiflow.config import parse_params
    from classiflow.layout import Layout
    from classiflow.stages import download, prepare

    root = WORK / f"base-{tree.name}-{image_size}"
    shutil.rmtree(root, ignore_errors=True)
    layout = Layout.at(root)
    params = parse_params({}, "benchmark", {"data.source": str(tree), "data.image_size": image_size} | COMMON)
    download.run(layout, params)
    prepare.run(layout, params)
    return root


def run_one(label: str, base: Path, tree: Path, image_size: int) -> dict:
    from classiflow.atomic import read_json
    from classiflow.config import load_params
    from classiflow.layout import Layout
    from classiflow.stages import augment, evaluate, train

    root = WORK / label
    shutil.rmtree(root, ignore_errors=True)
    (root / "data").mkdir(parents=True)
    (root / "data" / "prepared").symlink_to(base / "data" / "prepared")
    layout = Layout.at(root)
    data = {"data.source": str(tree), "data.image_size": image_size}
    params = load_params(REPO / "params.yaml", data | COMMON | RUNS[label])
    augment.run(layout, params)
    trained = train.run(layout, params).value
    scored = evaluate.run(layout, params).value
    with open(layout.predictions) as f:
        rows = list(csv.DictReader(f))
    point = scored["operating_point"]
    return {
        "operating_point": {k: point[k] for k in ("thresholds", "val", "test", "met_on_val", "met_on_test")},
        "groups": read_json(layout.prepared / "meta.json")["groups"],
        "label": label,
        "train_seconds": trained["train_seconds"],
        "epochs": trained["epochs_run"],
        "accuracy": scored["accuracy"],
        "balanced_accuracy": scored["balanced_accuracy"],
        "recall": {c: m["recall"] for c, m in scored["per_class"].items()},
        "calibration": read_json(layout.eval_metrics)["calibration"],
        "actual": [r["actual"] for r in rows],
        "predicted": [r["predicted"] for r in rows],
    }


def _balanced(actual: np.ndarray, correct: np.ndarray, classes: list[str]) -> float:
    return float(np.mean([correct[actual == c].mean() for c in classes]))


def paired(plain: dict, other: dict) -> dict:
    """McNemar's test on per-image correctness and a paired bootstrap 95% interval of the balanced-accuracy
    gain (resampling test images within each class, so every resample keeps the class sizes)."""
    from classiflow.promotion import compare, correctness

    actual = np.asarray(plain["actual"])
    a, b = correctness(plain["actual"], plain["predicted"]), correctness(other["actual"], other["predicted"])
    test = compare(b, a)
    classes = sorted(set(plain["actual"]))
    rng, gains = np.random.default_rng(0), []
    members = {c: np.flatnonzero(actual == c) for c in classes}
    for _ in range(BOOTSTRAP):
        pick = np.concatenate([rng.choice(m, len(m)) for m in members.values()])
        gains.append(_balanced(actual[pick], b[pick], classes) - _balanced(actual[pick], a[pick], classes))
    low, high = np.percentile(gains, [2.5, 97.5])
    return {"p_value": test.p_value, "b": test.b, "c": test.c, "gain_low": low, "gain_high": high}


def _imbalance_rows(rows: list[dict]) -> list[str]:
    plain = rows[0]
    defects = [c for c in plain["recall"] if c != NORMAL]
    lines = [
        "| run | train stage | epochs | test accuracy | balanced accuracy | gain (95% CI) | McNemar p "
        "| lowest defect recall | ok recall | ECE raw -> scaled (T) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        worst = min(defects, key=r["recall"].get)
        cal = r["calibration"]
        gain, p_value = "-", "-"
        if r is not plain:
            stats = paired(plain, r)
            gain = (
                f"{100 * (r['balanced_accuracy'] - plain['balanced_accuracy']):+.2f} "
                f"[{100 * stats['gain_low']:+.2f}, {100 * stats['gain_high']:+.2f}]"
            )
            p_value = f"{stats['p_value']:.2g}"
        lines.append(
            f"| {r['label']} | {r['train_seconds'] / 60:.1f} min | {r['epochs']} | {100 * r['accuracy']:.2f}% "
            f"| {100 * r['balanced_accuracy']:.2f}% | {gain} | {p_value} "
            f"| {100 * r['recall'][worst]:.1f}% ({worst}) | {100 * r['recall'][NORMAL]:.1f}% "
            f"| {100 * cal['ece_before']:.2f}% -> {100 * cal['ece_after']:.2f}% ({cal['temperature']:.2f}) |"
        )
    return lines


def _point_rows(rows: list[dict]) -> list[str]:
    lines = [
        "| run | validation images per defect class | lowest caught, validation | lowest caught, test (95% CI) "
        "| test false alarms (95% CI) | uncertain | target met on test |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        point = r["operating_point"]
        val, test = point["val"]["per_class"], point["test"]["per_class"]
        defects = [c for c in val if c != NORMAL]
        worst = min(defects, key=lambda c: test[c]["caught"])
        low, high = test[worst]["caught_ci"]
        fa_low, fa_high = point["test"]["false_alarm_ci"]
        lines.append(
            f"| {r['label']} | {min(val[c]['images'] for c in defects)}-{max(val[c]['images'] for c in defects)} "
            f"| {100 * min(val[c]['caught'] for c in defects):.1f}% "
            f"| {100 * test[worst]['caught']:.1f}% ({worst}) [{100 * low:.1f}, {100 * high:.1f}] "
            f"| {100 * point['test']['false_alarm']:.1f}% [{100 * fa_low:.1f}, {100 * fa_high:.1f}] "
            f"| {100 * point['test']['uncertain']:.1f}% | {'yes' if point['met_on_test'] else 'no'} |"
        )
    return lines


def table(rows: list[dict], counts: dict[str, int], keep_one_in: int, image_size: int) -> str:
    cut = [r for r in rows if r["label"] != "full"]
    train = ", ".join(f"{c} {n}" for c, n in counts.items())
    return f"""## Imbalanced defects: class weights, a balanced sampler, operating points (`benchmarks/imbalance.py`)

`python benchmarks/imbalance.py --keep-one-in {keep_one_in} --image-size {image_size}` on {machine()}: DeepPCB
patches at {image_size}x{image_size}, train cut to every `ok` patch and 1 in {keep_one_in} of each defect class
(seeded; before the validation hold-out: {train}), the test split whole ({len(rows[0]["actual"])} images). Every
run: the committed defaults, validation held out by board image (`data.group_by`), `evaluate.normal_class: ok`
and `evaluate.threshold_policy: min_recall` at 0.99, changed only as the run's name says (`class-weights`:
`train.class_weights: balanced`, `sampler`: `train.sampler: balanced`, both with `train.select_by:
val_balanced_accuracy`; `full`: the whole train split, not cut). Gain: balanced accuracy over `plain` in points,
with a paired bootstrap 95% interval (test images resampled within each class); McNemar's test on per-image
correctness against `plain`. ECE: expected calibration error on test before and after the temperature fitted on
validation.

{chr(10).join(_imbalance_rows(cut))}

The operating point ("catch at least 99% of every defect class", thresholds chosen on validation and applied once
to test); caught = not passed as `ok`; false alarms = `ok` test patches flagged; intervals are Wilson 95%.

{chr(10).join(_point_rows(rows))}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default=",".join(RUNS))
    ap.add_argument("--keep-one-in", type=int, default=20)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if not ARCHIVE.exists():
        sys.exit(f"{ARCHIVE}: not found")
    labels = args.runs.split(",")
    if labels[0] != "plain":
        sys.exit("--runs: the first run must be plain (the others are compared with it)")
    tree, counts = imbalanced_tree(args.keep_one_in)
    full, _ = imbalanced_tree(1)
    trees = {label: full if label == "full" else tree for label in labels}
    bases = {t: _base(t, args.image_size) for t in set(trees.values())}
    rows = []
    for label in labels:
        rows.append(run_one(label, bases[trees[label]], trees[label], args.image_size))
        print({k: v for k, v in rows[-1].items() if k not in ("actual", "predicted")}, flush=True)
    markdown = table(rows, counts, args.keep_one_in, args.image_size)
    print(markdown)
    if not args.no_write:
        write_section("imbalance", markdown)


if __name__ == "__main__":
    main()
