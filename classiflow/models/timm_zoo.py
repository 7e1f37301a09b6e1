"""Any architecture of timm's registry as ``model.name: timm/<arch>``, built for the data's channels and classes.

timm adapts the stem to one channel and sizes the head; architectures with a fixed input size (ViTs) get
``img_size``. A dummy forward at build time turns a size the architecture cannot take into one line here
instead of a shape error deep inside training. timm is imported only when such a model is asked for (its
import costs seconds).
"""

from __future__ import annotations

import difflib

import torch
from torch import nn

from classiflow.errors import ClassiflowError

PREFIX = "timm/"


def is_timm(name: str) -> bool:
    return name.startswith(PREFIX)


def _check_arch(arch: str) -> None:
    import timm

    if timm.is_model(arch):
        return
    close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
    hint = f" (close: {', '.join(PREFIX + c for c in close)})" if close else " (`timm.list_models()` lists them)"
    raise ClassiflowError(f"model.name {PREFIX}{arch}: timm has no such architecture{hint}")


def _fixed_size(arch: str) -> bool:
    import timm

    cfg = timm.models.get_pretrained_cfg(arch)
    return bool(cfg and cfg.to_dict().get("fixed_input_size"))


def build_timm(name: str, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """timm's ``create_model`` without weights (the train stage loads ``model.pretrained`` into it)."""
    import timm

    arch = name.removeprefix(PREFIX)
    _check_arch(arch)
    kwargs = {"img_size": image_size} if _fixed_size(arch) else {}
    try:
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as err:
        raise ClassiflowError(f"model.name {name}: timm cannot build it ({_first_line(err)})") from None
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_channels, image_size, image_size))
    except (RuntimeError, ValueError, AssertionError) as err:
        raise ClassiflowError(
            f"model.name {name} cannot take {image_size}x{image_size} images ({_first_line(err)}); "
            "change data.image_size"
        ) from None
    return model.train()


def head_module_names(model: nn.Module) -> tuple[str, ...]:
    """The modules a new task replaces: timm's declared classifier, else the last linear layer."""
    declared = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    if declared:
        return (declared,) if isinstance(declared, str) else tuple(declared)
    linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return (linear[-1],) if linear else ()


def first_conv_name(model: nn.Module) -> str | None:
    """The stem convolution whose input channels follow the data's."""
    declared = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    if declared:
        return declared if isinstance(declared, str) else declared[0]
    return next((name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
