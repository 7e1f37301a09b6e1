"""Model registry: ``model.name`` in params.yaml picks a builder from here, or timm's (``timm/<arch>``).

A builder's keyword parameters say what it supports: one without ``width`` has no width option, one without
``attention`` cannot take CBAM. build_model turns an unsupported request into a one-line ClassiflowError
instead of a TypeError, and builders themselves reject image sizes they cannot take.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial

from torch import nn

from classiflow.errors import ClassiflowError
from classiflow.models.cbam import check_attention
from classiflow.models.fastnet import FastNet
from classiflow.models.lenet import LeNet5
from classiflow.models.resnet import CifarResNet
from classiflow.models.simplecnn import SimpleCNN
from classiflow.models.timm_zoo import build_timm, is_timm
from classiflow.models.vit import ViT

MODELS: dict[str, Callable[..., nn.Module]] = {
    "simplecnn": SimpleCNN,
    "lenet5": LeNet5,
    "resnet8": partial(CifarResNet, 8),
    "resnet20": partial(CifarResNet, 20),
    "resnet56": partial(CifarResNet, 56),
    "vit": ViT,
    "fastnet": FastNet,
}


def build_model(
    name: str,
    in_channels: int,
    num_classes: int,
    image_size: int,
    attention: str = "none",
    cbam_reduction: int = 16,
    width: int | None = None,
) -> nn.Module:
    """Build ``name`` for the data's channels, classes and image size; width None means the model's default."""
    if is_timm(name):
        if width is not None:
            raise ClassiflowError(f"model.width: {name} has no width option; set model.width: null")
        if attention != "none":
            raise ClassiflowError(f"model.attention {attention!r}: {name} takes no attention option (only 'none')")
        return build_timm(name, in_channels, num_classes, image_size)
    try:
        builder = MODELS[name]
    except KeyError:
        raise ClassiflowError(
            f"model.name {name!r}: unknown model (available: {', '.join(sorted(MODELS))}, or timm/<arch>)"
        ) from None
    check_attention(attention, cbam_reduction)
    accepts = inspect.signature(builder).parameters
    kwargs: dict = {"in_channels": in_channels, "num_classes": num_classes, "image_size": image_size}
    if width is not None:
        if "width" not in accepts:
            raise ClassiflowError(f"model.width: {name} has no width option")
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ClassiflowError(f"model.width {width!r}: must be a positive integer")
        kwargs["width"] = width
    if "attention" in accepts:
        kwargs.update(attention=attention, cbam_reduction=cbam_reduction)
    elif attention != "none":
        raise ClassiflowError(f"model.attention {attention!r}: {name} takes no attention option (only 'none')")
    return builder(**kwargs)
