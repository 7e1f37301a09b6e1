"""Where the classical baseline's files go in a project: its model, metrics and reports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from classiflow.layout import Layout


@dataclass(frozen=True)
class BaselinePaths:
    root: Path

    @property
    def model(self) -> Path:
        return self.root / "models" / "baseline.joblib"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics" / "baseline.json"

    @property
    def reports(self) -> Path:
        return self.root / "reports" / "baseline"

    @property
    def confusion_matrix_csv(self) -> Path:
        return self.reports / "confusion_matrix.csv"

    @property
    def confusion_normalized_csv(self) -> Path:
        return self.reports / "confusion_matrix_normalized.csv"

    @property
    def confusion_matrix_png(self) -> Path:
        return self.reports / "confusion_matrix.png"

    @property
    def per_class(self) -> Path:
        return self.reports / "per_class.csv"

    @property
    def predictions(self) -> Path:
        return self.reports / "predictions.csv"

    def as_dict(self) -> dict[str, str]:
        names = (
            "model", "metrics", "confusion_matrix_csv", "confusion_normalized_csv", "confusion_matrix_png",
            "per_class", "predictions",
        )  # fmt: skip
        return {name: str(getattr(self, name)) for name in names}


def baseline_paths(layout: Layout) -> BaselinePaths:
    return BaselinePaths(layout.root)
