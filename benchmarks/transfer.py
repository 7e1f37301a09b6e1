"""From scratch against fine-tuned ImageNet weights on real defect images (DeepPCB patches, split by board).

Each run is the pipeline's own stage functions (download once, prepare once, then augment, train and evaluate
per recipe) in a folder of ``benchmarks/.cache/transfer``; the table gives the train stage's time, the test
accuracy and the lowest per-class recall. Needs ``../shared/datasets/deeppcb-patches.tar.gz`` and
``pip install classiflow[lite0]``. Writes the "transfer" section of docs/benchmarks.md; with ``--export`` each
run also goes through the export stage (TorchScript, ONNX, int8 ONNX, each verified against PyTorch on the
test split and timed at batch 1) and its report is written to the "transfer_export" section.

    python benchmarks/transfer.py [--runs scratch-fast,finetune] [--image-size 64] [--export] [--no-write]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import CACHE, machine, write_section  # noqa: E402

ARCHIVE = REPO.parent / "shared" / "datasets" / "deeppcb-patches.tar.gz"
WEIGHTS = CACHE / "tf_efficientnet_lite0.safetensors"
RUNS = {  # label -> (recipe, overrides)
    "scratch-quick": ("quick", {}),
    "scratch-fast": ("fast", {}),
    "scratch-best": ("best", {}),
    "scratch-fast-8-epochs": ("fast", {"train.epochs": 8, "train.min_steps": 0}),  # finetune's epoch count
    "finetune-fast": ("finetune-fast", {"model.pretrained": str(WEIGHTS)}),
    "finetune": ("finetune", {"model.pretrained": str(WEIGHTS)}),
    # no linear probe (it reached 47% at 64x64), all seven epochs on the whole network: --image-size 96
    "finetune-no-probe-7-epochs": (
        "finetune",
        {"model.pretrained": str(WEIGHTS), "train.freeze_epochs": 0, "train.epochs": 7},
    ),
    "scratch-fast-16-epochs": ("fast", {"train.epochs": 16, "train.min_steps": 0}),
}


def _base(image_size: int) -> Path:
    """Download and prepare once; each run links to the prepared data."""
    from classiflow.config import parse_params
    from classiflow.layout import Layout
    from classiflow.stages import download, prepare

    root = CACHE / "transfer" / f"base-{image_size}"
    layout = Layout.at(root)
    if not (layout.prepared / "meta.json").exists():
        params = parse_params({"data": {"source": str(ARCHIVE), "image_size": image_size}})
        download.run(layout, params)
        prepare.run(layout, params)
    return root


def run_one(label: str, image_size: int, with_export: bool = False) -> dict:
    from classiflow.config import parse_params
    from classiflow.layout import Layout
    from classiflow.recipes import load_recipe
    from classiflow.stages import augment, evaluate, export, train

    recipe, overrides = RUNS[label]
    root = CACHE / "transfer" / f"{label}-{image_size}"
    shutil.rmtree(root, ignore_errors=True)
    (root / "data").mkdir(parents=True)
    (root / "data" / "prepared").symlink_to(_base(image_size) / "data" / "prepared")
    layout = Layout.at(root)
    data = {"data.source": str(ARCHIVE), "data.image_size": image_size}
    params = parse_params({}, f"recipe {recipe}", load_recipe(recipe, REPO) | data | overrides)
    augment.run(layout, params)
    trained = train.run(layout, params).value
    scored = evaluate.run(layout, params).value
    recalls = {name: row["recall"] for name, row in scored["per_class"].items()}
    worst = min(recalls, key=recalls.get)
    exported = {}
    if with_export:
        export.run(layout, params)
        exported = {"export_report": layout.export_report.read_text()}
    return exported | {
        "label": label,
        "train_seconds": trained["train_seconds"],
        "epochs": trained["epochs_run"],
        "accuracy": scored["accuracy"],
        "worst_class": worst,
        "worst_recall": recalls[worst],
        "defect_recall_min": min(v for k, v in recalls.items() if k != "ok"),
    }


def table(rows: list[dict], image_size: int) -> str:
    lines = [
        "| run | train stage | epochs | test accuracy | lowest recall | lowest defect-class recall |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['train_seconds'] / 60:.1f} min | {r['epochs']} | {100 * r['accuracy']:.2f}% | "
            f"{100 * r['worst_recall']:.1f}% ({r['worst_class']}) | {100 * r['defect_recall_min']:.1f}% |"
        )
    return f"""## From scratch vs fine-tuned ImageNet weights on DeepPCB defect patches

`python benchmarks/transfer.py --image-size {image_size}` on {machine()}: DeepPCB patches (7 classes, train
and test split by board), {image_size}x{image_size} grayscale, each recipe's train and evaluate stages as
`make run RECIPE=<recipe>` runs them (`finetune*`: EfficientNet-Lite0 ImageNet weights, `classiflow weights`).
Test accuracy after the evaluate stage (flip TTA where it chose it).

{chr(10).join(lines)}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="finetune-fast,finetune,scratch-fast-8-epochs")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--export", action="store_true", help="also run the export stage on each trained model")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if not ARCHIVE.exists():
        sys.exit(f"{ARCHIVE}: not found")
    from classiflow.models.lite0 import write_lite0

    if not WEIGHTS.exists():
        write_lite0(WEIGHTS)
    rows = []
    for label in args.runs.split(","):
        rows.append(run_one(label, args.image_size, args.export))
        print({k: v for k, v in rows[-1].items() if k != "export_report"}, flush=True)
    markdown = table(rows, args.image_size)
    print(markdown)
    exports = export_section(rows, args.image_size) if args.export else ""
    print(exports)
    if not args.no_write:
        write_section("transfer", markdown)
        if exports:
            write_section("transfer_export", exports)


def export_section(rows: list[dict], image_size: int) -> str:
    """Each run's export report (its own tables), under one heading naming the machine."""
    parts = [
        f"## Deploying the DeepPCB models: export stage reports\n\n`python benchmarks/transfer.py --export "
        f"--image-size {image_size}` on {machine()}: the export stage on each trained model, as `make run` runs it."
    ]
    for r in rows:
        body = r["export_report"].split("\n", 1)[1] if r["export_report"].startswith("#") else r["export_report"]
        body = body.replace("\n## ", "\n#### ")
        parts.append(f"### {r['label']} ({image_size}x{image_size})\n{body.strip()}")
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    main()
