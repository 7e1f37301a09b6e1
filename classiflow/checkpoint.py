"""Checkpoints hold the weights plus everything needed to rebuild and feed the model.

Only tensors and plain Python values are stored, so loading uses ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from classiflow.atomic import atomic_path
from classiflow.config import ModelParams
from classiflow.errors import ClassiflowError
from classiflow.models import build_model

FORMAT = 1


def model_spec(model: ModelParams | str, meta: dict) -> dict[str, Any]:
    """The keyword arguments of :func:`build_model`: the params' architecture (a bare name: at its own
    width), the data's shape."""
    model = ModelParams(name=model, width=None) if isinstance(model, str) else model
    return {
        "name": model.name,
        "in_channels": int(meta["channels"]),
        "num_classes": len(meta["classes"]),
        "image_size": int(meta["image_size"]),
        "attention": model.attention,
        "cbam_reduction": model.cbam_reduction,
        "width": model.width,
    }


def save_checkpoint(path: Path, model: nn.Module, spec: dict, meta: dict, extra: dict[str, Any]) -> None:
    payload = {
        "format": FORMAT,
        "model": spec,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "classes": list(meta["classes"]),
        "mean": list(meta["mean"]),
        "std": list(meta["std"]),
        "data_hash": meta["data_hash"],
        **extra,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        raise ClassiflowError(f"{path}: no trained model; run the train stage first")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise ClassiflowError(f"{path}: not a classiflow checkpoint ({err})".splitlines()[0]) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ClassiflowError(f"{path}: not a classiflow checkpoint (format {FORMAT} expected)")
    spec = payload["model"]
    model = build_model(**spec)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, payload


def trained_with_flip(payload: dict[str, Any]) -> bool:
    """Whether the train stage fed the model horizontally mirrored images (the resolved policy it stored)."""
    augment = payload.get("augment") or {}
    return augment.get("policy") == "custom" and augment.get("flip") is True


def check_same_data(path: Path | str, payload: dict, data_hash: str, rerun: str = "the train stage") -> None:
    """A model is scored, pruned or exported only on the data it was trained on (the prepared data's hash)."""
    if payload["data_hash"] != data_hash:
        raise ClassiflowError(
            f"{path} was trained on other data (hash {payload['data_hash'][:12]}, "
            f"prepared data is {data_hash[:12]}); rerun {rerun}"
        )
