"""Few labels: supervised training from scratch against SimCLR pretraining (then kNN / linear probe, or
fine-tuning), on CIFAR-10 with a small share of the train labels.

Arms, with the same backbone (the committed default model) and the same supervised recipe and augmentation:
(a) supervised from scratch on the labelled subset; (b) SimCLR on every train image, then a kNN vote and a
linear probe on the frozen features; (c) SimCLR, then fine-tuning on the labelled subset
(``model.pretrained``). The encoder is pretrained once on the whole train split (labels unused) and shared by
every label fraction and seed: pretraining never sees a label, so it is the same run for all of them. Each
label seed draws another labelled subset (``data.label_seed``); validation and test are the same in every run.
McNemar's test of (c) against (a) on the test images, per seed. Writes the "label_efficiency" section of
docs/benchmarks.md.

    python benchmarks/label_efficiency.py [--fractions 0.01,0.1] [--seeds 0,1,2] [--pretrain-epochs 10]
"""

from __future__ import annotations

import argparse
import csv
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import CACHE, machine, write_section  # noqa: E402

ARCHIVE = REPO.parent / "shared" / "datasets" / "cifar10-jpg.tar.gz"
WORK = CACHE / "label_efficiency"


def _params(overrides: dict):
    from classiflow.config import load_params

    return load_params(REPO / "params.yaml", {"data.source": str(ARCHIVE)} | overrides)


def _prepared(fraction: float, seed: int) -> Path:
    from classiflow.layout import Layout
    from classiflow.stages import download, prepare

    root = WORK / f"data-{fraction:g}-s{seed}"
    if not (root / "data" / "prepared" / "meta.json").exists():
        layout = Layout.at(root)
        params = _params({"data.label_fraction": fraction, "data.label_seed": seed})
        download.run(layout, params)
        prepare.run(layout, params)
    return root


def pretrain_once(epochs: int) -> tuple[Path, float, dict]:
    """SimCLR on the whole train split (as the unlabelled pool); the encoder and its CPU seconds."""
    from classiflow.layout import Layout
    from classiflow.stages import pretrain

    root = WORK / f"pretrain-{epochs}"
    layout = Layout.at(root)
    shutil.rmtree(root, ignore_errors=True)
    (root / "data").mkdir(parents=True)
    (root / "data" / "prepared").symlink_to(_prepared(1.0, 0) / "data" / "prepared")
    start = time.process_time()
    value = pretrain.run(layout, _params({"pretrain.method": "simclr", "pretrain.epochs": epochs})).value
    return layout.encoder, time.process_time() - start, value


def supervised(label: str, data: Path, overrides: dict) -> dict:
    """Augment, train and evaluate on one prepared copy; the test predictions for McNemar."""
    from classiflow.layout import Layout
    from classiflow.stages import augment, evaluate, train

    root = WORK / label
    shutil.rmtree(root, ignore_errors=True)
    (root / "data").mkdir(parents=True)
    (root / "data" / "prepared").symlink_to(data / "data" / "prepared")
    layout = Layout.at(root)
    params = _params(overrides)
    start = time.process_time()
    augment.run(layout, params)
    train.run(layout, params)
    scored = evaluate.run(layout, params).value
    with open(layout.predictions) as f:
        rows = list(csv.DictReader(f))
    return {
        "accuracy": scored["accuracy"],
        "cpu_seconds": time.process_time() - start,
        "correct": [r["actual"] == r["predicted"] for r in rows],
    }


def frozen(encoder: Path, data: Path, k: int) -> dict:
    from classiflow.data.prepared import load_prepared
    from classiflow.layout import Layout
    from classiflow.pretrain.probe import frozen_scores, load_encoder
    from classiflow.training import select_device

    shutil.copytree(encoder.parent, Layout.at(data).pretrain_dir, dirs_exist_ok=True)
    start = time.process_time()
    net, spec = load_encoder(Layout.at(data))
    scores = frozen_scores(net, spec, load_prepared(data / "data" / "prepared", ("train", "test")), k,
                           select_device("auto"))  # fmt: skip
    return scores | {"cpu_seconds": time.process_time() - start}


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f}%"
    return f"{100 * statistics.mean(values):.2f}% ± {100 * statistics.stdev(values):.2f}"


def run(fractions: list[float], seeds: list[int], epochs: int) -> str:
    from classiflow.promotion import compare

    encoder, pretrain_cpu, pretrained = pretrain_once(epochs)
    lines = [
        "| labels | arm | test accuracy (mean ± std over seeds) | CPU minutes per run (incl. pretraining) "
        "| McNemar p, (c) vs (a), per seed |",
        "|---|---|---:|---:|---|",
    ]
    for fraction in fractions:
        arms: dict[str, list[dict]] = {"a": [], "b-knn": [], "b-probe": [], "c": []}
        p_values = []
        for seed in seeds:
            data = _prepared(fraction, seed)
            a = supervised(f"a-{fraction:g}-s{seed}", data, {"data.label_fraction": fraction, "data.label_seed": seed})
            c = supervised(f"c-{fraction:g}-s{seed}", data, {"data.label_fraction": fraction, "data.label_seed": seed,
                                                              "model.pretrained": str(encoder)})  # fmt: skip
            b = frozen(encoder, data, 20)
            arms["a"].append(a)
            arms["c"].append(c | {"cpu_seconds": c["cpu_seconds"] + pretrain_cpu})
            arms["b-knn"].append({"accuracy": b["knn_accuracy"], "cpu_seconds": b["cpu_seconds"] + pretrain_cpu})
            arms["b-probe"].append({"accuracy": b["linear_probe_accuracy"],
                                    "cpu_seconds": b["cpu_seconds"] + pretrain_cpu})  # fmt: skip
            p_values.append(compare(c["correct"], a["correct"]).p_value)
        names = {"a": "(a) supervised from scratch", "b-knn": "(b) SimCLR + kNN (frozen)",
                 "b-probe": "(b) SimCLR + linear probe (frozen)", "c": "(c) SimCLR + fine-tuning"}  # fmt: skip
        for key, rows in arms.items():
            minutes = statistics.mean(r["cpu_seconds"] for r in rows) / 60
            p = ", ".join(f"{v:.2g}" for v in p_values) if key == "c" else ""
            lines.append(f"| {fraction:.0%} | {names[key]} | {_mean_std([r['accuracy'] for r in rows])} "
                         f"| {minutes:.1f} | {p} |")  # fmt: skip
    return f"""## Few labels: SimCLR pretraining against training from scratch (`benchmarks/label_efficiency.py`)

`python benchmarks/label_efficiency.py --fractions {",".join(f"{f:g}" for f in fractions)} --seeds
{",".join(map(str, seeds))} --pretrain-epochs {epochs}` on {machine()}: the shared CIFAR-10 archive at 32x32,
the committed defaults (model, recipe, augmentation) in every arm; the labelled subset is a stratified share of
the train split (`data.label_fraction`, one subset per seed via `data.label_seed`); validation and test are
whole. SimCLR ran once, {epochs} epochs on all {pretrained["images"]} train images, labels unused:
{pretrain_cpu / 60:.1f} CPU minutes, final NT-Xent loss {pretrained["final_loss"]:.3f}, kNN validation accuracy
{100 * pretrained["knn_accuracy"]:.2f}%, views {100 * pretrained["view_share"]:.0f}% of the step time. CPU
minutes are process CPU time (2 cores: wall time is about half), pretraining included in (b) and (c).

{chr(10).join(lines)}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fractions", default="0.01,0.1")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--pretrain-epochs", type=int, default=10)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if not ARCHIVE.exists():
        sys.exit(f"{ARCHIVE}: missing (see ../shared/datasets/README.md)")
    text = run([float(f) for f in args.fractions.split(",")], [int(s) for s in args.seeds.split(",")],
               args.pretrain_epochs)  # fmt: skip
    print(text)
    if not args.no_write:
        write_section("label_efficiency", text)


if __name__ == "__main__":
    main()
