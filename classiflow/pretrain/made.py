"""What the pretrain stage made, read by the train stage for ``model.pretrained: pretrain`` (kept apart from the
stage so that training does not depend on the pretraining code)."""

from __future__ import annotations

import json

from classiflow.errors import ClassiflowError
from classiflow.layout import Layout

SPEC = "spec.json"  # beside the encoder: the method, architecture, data hash and normalisation


def encoder_spec(layout: Layout) -> dict:
    """The pretrain stage's spec; a clear line when it made no encoder."""
    path = layout.pretrain_dir / SPEC
    try:
        spec = json.loads(path.read_text())
    except (OSError, ValueError):
        raise ClassiflowError(f"model.pretrained pretrain: {path} is missing; run the pretrain stage") from None
    if spec.get("method") == "none" or not layout.encoder.exists():
        raise ClassiflowError("model.pretrained pretrain: the pretrain stage ran with pretrain.method: none")
    return spec
