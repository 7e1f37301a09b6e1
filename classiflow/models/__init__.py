"""Model registry: ``model.name`` in params.yaml picks a builder from here."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from classiflow.errors import ClassiflowError
from classiflow.models.simplecnn import SimpleCNN

MODELS: dict[str, Callable[..., nn.Module]] = {
    "simplecnn": SimpleCNN,
}


def build_model(name: str, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    try:
        builder = MODELS[name]
    except KeyError:
        raise ClassiflowError(f"model.name {name!r}: unknown model (available: {', '.join(sorted(MODELS))})") from None
    return builder(in_channels=in_channels, num_classes=num_classes, image_size=image_size)
