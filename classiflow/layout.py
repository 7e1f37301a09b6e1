"""Where each stage reads and writes, relative to one root (the repo for DVC, a run dir for Prefect)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPEC_FILE = "preprocessing.json"  # beside every exported model: how to feed it and read its output


@dataclass(frozen=True)
class Layout:
    root: Path

    @classmethod
    def at(cls, root: str | Path = ".") -> Layout:
        return cls(Path(root).resolve())

    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared"

    @property
    def class_counts_png(self) -> Path:
        """The prepare stage's bar chart of images per class and split."""
        return self.root / "reports" / "class_counts.png"

    @property
    def augmented(self) -> Path:
        """The augment stage's output: the resolved policy and any materialised copies."""
        return self.root / "data" / "augmented"

    @property
    def augment_policy(self) -> Path:
        return self.augmented / "policy.json"

    @property
    def augment_preview(self) -> Path:
        return self.root / "reports" / "augment_preview.png"

    @property
    def pretrain_dir(self) -> Path:
        """The pretrain stage's output: ``spec.json`` always, ``encoder.safetensors`` when it pretrained."""
        return self.root / "models" / "pretrain"

    @property
    def encoder(self) -> Path:
        return self.pretrain_dir / "encoder.safetensors"

    @property
    def pretrain_last(self) -> Path:
        """The pretrain stage's per-epoch resume point; not a pipeline output."""
        return self.root / "models" / "pretrain-last.pt"

    @property
    def pretrain_metrics(self) -> Path:
        return self.root / "metrics" / "pretrain.json"

    @property
    def pretrain_history(self) -> Path:
        return self.root / "reports" / "pretrain_history.csv"

    @property
    def last_checkpoint(self) -> Path:
        """The train stage's per-epoch resume point; not a pipeline output."""
        return self.root / "models" / "last.pt"

    @property
    def train_ranks(self) -> Path:
        """Where the train stage and its torchrun processes meet (classiflow.stages.train_ranks); not an output."""
        return self.root / "models" / ".train-ranks"

    @property
    def model(self) -> Path:
        return self.root / "models" / "model.pt"

    @property
    def train_metrics(self) -> Path:
        return self.root / "metrics" / "train.json"

    @property
    def train_history(self) -> Path:
        return self.root / "reports" / "train_history.csv"

    @property
    def eval_metrics(self) -> Path:
        return self.root / "metrics" / "evaluate.json"

    @property
    def predictions(self) -> Path:
        """Per-image actual/predicted rows: the input of DVC's ``confusion`` plot template."""
        return self.root / "reports" / "predictions.csv"

    @property
    def confusion_matrix_csv(self) -> Path:
        return self.root / "reports" / "confusion_matrix.csv"

    @property
    def confusion_normalized_csv(self) -> Path:
        """Each actual class's row as shares of it (recall on the diagonal)."""
        return self.root / "reports" / "confusion_matrix_normalized.csv"

    @property
    def confusion_matrix_png(self) -> Path:
        return self.root / "reports" / "confusion_matrix.png"

    @property
    def per_class(self) -> Path:
        return self.root / "reports" / "per_class.csv"

    @property
    def pr_curves_csv(self) -> Path:
        """Test precision against recall per class (and defect vs ok): a DVC plot."""
        return self.root / "reports" / "pr_curves.csv"

    @property
    def pr_curves_png(self) -> Path:
        return self.root / "reports" / "pr_curves.png"

    @property
    def gradcam_png(self) -> Path:
        """Grad-CAM heat maps of test mistakes and correct answers, per class."""
        return self.root / "reports" / "gradcam.png"

    @property
    def reliability_csv(self) -> Path:
        """Test confidence against accuracy per bin, before and after temperature scaling (a DVC plot)."""
        return self.root / "reports" / "reliability.csv"

    @property
    def reliability_png(self) -> Path:
        return self.root / "reports" / "reliability.png"

    @property
    def pruned_model(self) -> Path:
        return self.root / "models" / "pruned.pt"

    @property
    def prune_metrics(self) -> Path:
        return self.root / "metrics" / "prune.json"

    @property
    def prune_sweep_csv(self) -> Path:
        """Accuracy and latency against sparsity, one row per method and amount (no fine-tuning)."""
        return self.root / "reports" / "prune_sweep.csv"

    @property
    def prune_sweep_png(self) -> Path:
        return self.root / "reports" / "prune_sweep.png"

    @property
    def export_dir(self) -> Path:
        """Deployable files (TorchScript, ONNX, int8 ONNX) and preprocessing.json, replaced as a whole."""
        return self.root / "models" / "export"

    @property
    def model_card(self) -> Path:
        return self.root / "reports" / "model_card.md"

    @property
    def export_report(self) -> Path:
        return self.root / "reports" / "export.md"

    @property
    def export_metrics(self) -> Path:
        return self.root / "metrics" / "export.json"

    @property
    def registration(self) -> Path:
        return self.root / "reports" / "registration.json"

    def record(self, stage: str) -> Path:
        """A stage's record: which MLflow runs it wrote, so the next stage can join them."""
        return self.root / "records" / f"{stage}.json"


def project_root(start: str | Path | None = None) -> Path:
    """The user's project directory, also from inside a ``dvc exp run --temp`` copy.

    DVC runs temporary and queued experiments in ``<repo>/.dvc/tmp/exps/<name>``; paths that
    must outlive the experiment (the MLflow database, relative data sources) resolve from the
    real repository instead.
    """
    path = Path(start or Path.cwd()).resolve()
    parts = path.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return path
