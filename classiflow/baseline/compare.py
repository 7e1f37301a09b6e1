"""Side-by-side report of deep and classical models: a markdown table and a bar chart.

Rows come from whatever the stages returned, so this module only checks and formats them;
it reads no model and computes no metric.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from classiflow.atomic import atomic_path, write_text
from classiflow.baseline.params import BaselineParams
from classiflow.errors import ClassiflowError


@dataclass(frozen=True)
class ComparisonRow:
    model: str
    kind: Literal["deep", "classical"]
    accuracy: float
    macro_f1: float
    train_seconds: float
    inference_ms_per_image: float
    size_bytes: int
    accuracy_plain: float = math.nan  # deep models: without and with flip TTA (``accuracy`` is the one chosen)
    accuracy_tta: float = math.nan

    @classmethod
    def from_mapping(cls, row: dict) -> ComparisonRow:
        names = [n for n, f in cls.__dataclass_fields__.items() if f.default is dataclasses.MISSING]
        missing = [n for n in names if n not in row]
        if missing:
            raise ClassiflowError(f"comparison row {row.get('model', '?')!r}: missing {', '.join(missing)}")
        if row["kind"] not in ("deep", "classical"):
            raise ClassiflowError(f"comparison row {row['model']!r}: kind must be 'deep' or 'classical'")
        try:
            return cls(
                str(row["model"]),
                row["kind"],
                float(row["accuracy"]),
                float(row["macro_f1"]),
                float(row["train_seconds"]),
                float(row["inference_ms_per_image"]),
                int(row["size_bytes"]),
                *(math.nan if row.get(k) is None else float(row[k]) for k in ("accuracy_plain", "accuracy_tta")),
            )
        except (TypeError, ValueError) as err:
            raise ClassiflowError(f"comparison row {row['model']!r}: {err}") from None


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _num(x: float, fmt: str) -> str:
    return "n/a" if math.isnan(x) else format(x, fmt)


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.2f}%"


def markdown_table(rows: list[ComparisonRow]) -> str:
    lines = [
        "| model | kind | test accuracy | plain / flip TTA | macro F1 | train time (s) | inference (ms/image) | size |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        views = f"{_pct(r.accuracy_plain)} / {_pct(r.accuracy_tta)}" if not math.isnan(r.accuracy_plain) else "-"
        lines.append(
            f"| {r.model} | {r.kind} | {_pct(r.accuracy)} | {views} | {_num(r.macro_f1, '.4f')} | "
            f"{_num(r.train_seconds, '.1f')} | {_num(r.inference_ms_per_image, '.3f')} | {_size(r.size_bytes)} |"
        )
    return "\n".join(lines) + "\n"


def plot_comparison(path: str | Path, rows: list[ComparisonRow], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(rows) + 2), 4.5))
    acc = ax.bar(x - 0.2, [r.accuracy for r in rows], 0.4, label="test accuracy")
    f1 = ax.bar(x + 0.2, [r.macro_f1 for r in rows], 0.4, label="macro F1")
    ax.bar_label(acc, fmt="%.3f", fontsize=8)
    ax.bar_label(f1, fmt="%.3f", fontsize=8)
    ax.set_xticks(x, [f"{r.model}\n({r.kind})" for r in rows], fontsize=9)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("score on the test split")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_comparison(
    rows: list[dict | ComparisonRow], reports_dir: str | Path, title: str = "Deep vs classical models"
) -> dict[str, Path]:
    """Write ``comparison.md`` and ``comparison.png`` into ``reports_dir``; return their paths."""
    if not rows:
        raise ClassiflowError("nothing to compare: no model rows")
    checked = [r if isinstance(r, ComparisonRow) else ComparisonRow.from_mapping(r) for r in rows]
    reports_dir = Path(reports_dir)
    md, png = reports_dir / "comparison.md", reports_dir / "comparison.png"
    note = (
        "All scores on the same held-out test split. A deep model's test accuracy is that of the predictions its "
        "deployed files make: with flip TTA where the evaluate stage chose it on the validation split."
    )
    write_text(md, f"# {title}\n\n{note}\n\n{markdown_table(checked)}")
    plot_comparison(png, checked, title)
    return {"markdown": md, "plot": png}


def as_dicts(rows: list[ComparisonRow]) -> list[dict]:
    return [asdict(r) for r in rows]


def model_name(params: BaselineParams) -> str:
    """The baseline's name in reports, e.g. ``dense SIFT BoVW + linear SVM``."""
    features = {"dense_sift": "dense SIFT BoVW", "sift": "SIFT BoVW", "hog": "HOG"}[params.features]
    svm = "linear SVM" if params.classifier == "linear_svc" else "RBF SVM"
    return f"{features} + {'PCA + ' if params.pca else ''}{svm}"


def comparison_row(name: str, metrics: dict) -> dict:
    """The baseline's row for :func:`classiflow.baseline.compare.write_comparison`."""
    return {
        "model": name,
        "kind": "classical",
        "accuracy": metrics["accuracy"],
        "accuracy_plain": None,
        "accuracy_tta": None,
        "macro_f1": metrics["macro_f1"],
        "train_seconds": metrics["train_seconds"],
        "inference_ms_per_image": metrics["inference_ms_per_image"],
        "size_bytes": metrics["model_bytes"],
    }
