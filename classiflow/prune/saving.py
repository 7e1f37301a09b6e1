"""Saving and loading pruned models with ``torch.load(weights_only=True)``, like every checkpoint.

A channel-pruned model no longer matches ``build_model(**spec)``, and pickling the module itself
(or torch-pruning's ``tp.state_dict``, which copies each module's ``__dict__``) would need
``weights_only=False``, i.e. trusting the file with code execution. The state dict already holds
every new shape, so loading builds the full model and shrinks each layer to the saved shapes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from classiflow.checkpoint import FORMAT as CHECKPOINT_FORMAT
from classiflow.checkpoint import save_checkpoint
from classiflow.errors import ClassiflowError
from classiflow.models import build_model
from classiflow.prune.unstructured import make_permanent

FORMAT = "pruned/1"


def save_pruned(path: Path, model: nn.Module, spec: dict, meta: dict, extra: dict[str, Any]) -> None:
    """save_checkpoint under the pruned format; unstructured masks are made permanent first (in place)."""
    make_permanent(model)
    save_checkpoint(path, model, spec, meta, {**extra, "format": FORMAT})


def _reshape(module: nn.Module, prefix: str, state: dict[str, torch.Tensor]) -> None:
    changed = False
    for store in (module._parameters, module._buffers):
        for key, tensor in store.items():
            saved = state.get(prefix + key)
            if tensor is None or saved is None or saved.shape == tensor.shape:
                continue
            empty = torch.empty(saved.shape, dtype=tensor.dtype)
            store[key] = nn.Parameter(empty, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else empty
            changed = True
    if not changed:
        return
    if isinstance(module, nn.Conv2d) and module.groups == 1:
        module.out_channels, module.in_channels = module.weight.shape[:2]
    elif isinstance(module, nn.Conv2d) and module.groups == module.in_channels == module.out_channels:
        # depthwise (MobileNet, EfficientNet): channels are pruned together with their groups
        module.out_channels = module.in_channels = module.groups = module.weight.shape[0]
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.BatchNorm2d):
        module.num_features = len(module.running_mean if module.running_mean is not None else module.weight)
    else:
        raise ClassiflowError(f"{prefix.rstrip('.')}: a pruned {type(module).__name__} cannot be rebuilt")


def rebuild(spec: dict, state: dict[str, torch.Tensor]) -> nn.Module:
    """``build_model(**spec)`` with every conv, linear and batch-norm layer cut to the widths in ``state``."""
    model = build_model(**spec)
    for name, module in model.named_modules():
        _reshape(module, f"{name}." if name else "", state)
    model.load_state_dict(state)
    return model.eval()


def load_pruned(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """A pruned model (or a plain checkpoint, which needs no reshaping) and its payload."""
    path = Path(path)
    if not path.exists():
        raise ClassiflowError(f"{path}: no pruned model; run the prune stage first")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise ClassiflowError(f"{path}: not a classiflow model ({err})".splitlines()[0]) from None
    if not isinstance(payload, dict) or payload.get("format") not in (FORMAT, CHECKPOINT_FORMAT):
        raise ClassiflowError(f"{path}: not a pruned classiflow model (format {FORMAT!r} expected)")
    try:
        model = rebuild(payload["model"], payload["state_dict"])
    except (KeyError, TypeError, RuntimeError, ClassiflowError) as err:
        raise ClassiflowError(f"{path}: cannot rebuild the pruned model ({err})".splitlines()[0]) from None
    return model, payload
