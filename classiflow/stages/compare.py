"""Compare stage: every model of the current pipeline run, CNN and classical, side by side."""

from __future__ import annotations

from classiflow.atomic import read_json
from classiflow.baseline.compare import comparison_row, model_name, write_comparison
from classiflow.baseline.paths import baseline_paths
from classiflow.checkpoint import load_checkpoint
from classiflow.config import Params
from classiflow.errors import ClassiflowError
from classiflow.layout import Layout
from classiflow.stages.result import NO_REPORT, Report, StageResult


def cnn_row(layout: Layout) -> dict:
    train, evaluation = layout.train_metrics, layout.eval_metrics
    for path in (train, evaluation):
        if not path.exists():
            raise ClassiflowError(f"{path}: missing; run the train and evaluate stages first")
    _, ckpt = load_checkpoint(layout.model)
    t, e = read_json(train), read_json(evaluation)
    return {
        "model": ckpt["model"]["name"],
        "kind": "deep",
        "accuracy": e["accuracy"],
        "accuracy_plain": e.get("accuracy_plain"),
        "accuracy_tta": e.get("accuracy_tta"),
        "macro_f1": e["macro_f1"],
        "train_seconds": t["train_seconds"],
        "inference_ms_per_image": e["inference_ms_per_image"],
        "size_bytes": layout.model.stat().st_size,
    }


def run(layout: Layout, params: Params, report: Report = NO_REPORT) -> StageResult:
    rows = [cnn_row(layout)]
    baseline = baseline_paths(layout).metrics
    if baseline.exists():
        rows.append(comparison_row(model_name(params.baseline), read_json(baseline)))
    written = write_comparison(rows, layout.root / "reports", "Deep vs classical on the same test split")
    value = {"rows": rows, "markdown": str(written["markdown"]), "plot": str(written["plot"])}
    return StageResult(
        value,
        artifacts={written["markdown"]: "", written["plot"]: ""},
        tables={"comparison.json": {k: [row[k] for row in rows] for k in rows[0]}},
        summary=[f"compare: {row['model']:<28} {row['kind']:<9} accuracy {row['accuracy']:.4f}" for row in rows],
    )
