"""Train stage: build the configured model for the prepared data, fit it, keep the best checkpoint."""

from __future__ import annotations

from collections.abc import Callable

from classiflow.atomic import write_json, write_text
from classiflow.checkpoint import model_spec, save_checkpoint
from classiflow.config import Params
from classiflow.data.prepared import load_prepared
from classiflow.layout import Layout
from classiflow.models import build_model
from classiflow.training import fit, seed_everything

HISTORY_FIELDS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "images_per_second")


def run(layout: Layout, params: Params, on_epoch_end: Callable[[dict], None] | None = None) -> dict:
    data = load_prepared(layout.prepared, ("train", "val"))
    spec = model_spec(params.model.name, data.meta)
    seed_everything(params.train.seed)  # the initial weights too, not only the batch order
    model = build_model(**spec)
    result = fit(model, data, params.train, on_epoch_end)
    save_checkpoint(
        layout.model,
        model,
        spec,
        data.meta,
        {"epoch": result.best_epoch, "val_accuracy": result.best_val_accuracy, "train": params.train.model_dump()},
    )
    rows = [",".join(HISTORY_FIELDS)]
    rows += [
        ",".join(f"{h[k]:.6g}" if isinstance(h[k], float) else str(h[k]) for k in HISTORY_FIELDS)
        for h in result.history
    ]
    write_text(layout.train_history, "\n".join(rows) + "\n")
    last = result.history[-1]
    metrics = {
        "best_val_accuracy": result.best_val_accuracy,
        "best_epoch": result.best_epoch,
        "final_train_loss": last["train_loss"],
        "final_train_accuracy": last["train_accuracy"],
        "images_per_second": result.images_per_second,
        "train_seconds": result.train_seconds,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    write_json(layout.train_metrics, metrics)
    return {**metrics, "device": result.device, "data_hash": data.data_hash}
