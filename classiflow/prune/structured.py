"""Structured (channel) pruning: whole filters are removed, so the model really is smaller and faster.

torch-pruning traces the model into a dependency graph, so removing a conv's output channels also
removes the matching BatchNorm entries, the next layer's input channels and, in a ResNet, every
layer tied to the same residual sum: the pruned network stays consistent without per-model code.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch_pruning as tp
from torch import nn

from classiflow.errors import ClassiflowError
from classiflow.prune.unstructured import check_amount, classifier


def _ignored(model: nn.Module) -> list[nn.Module]:
    """The classifier (its outputs are the classes) and frozen layers (fastnet's whitening is data-derived)."""
    modules = dict(model.named_modules())
    ignored = [modules[classifier(model)]]
    ignored += [m for m in modules.values() if isinstance(m, nn.Conv2d | nn.Linear) and not m.weight.requires_grad]
    return ignored


def check_structured(model: nn.Module) -> None:
    if any(isinstance(m, nn.MultiheadAttention) for m in model.modules()):
        raise ClassiflowError(
            f"prune.method 'structured': not supported for {type(model).__name__} (attention heads); "
            "use global_unstructured or l1_unstructured"
        )


def structured_steps(model: nn.Module, amount: float, example_inputs: torch.Tensor, steps: int = 1) -> Iterator[int]:
    """Remove ``amount`` of every layer's channels (smallest L1 norm first) in ``steps`` equal increments.

    A generator, pruning the model in place before each yield, so the caller can fine-tune
    between increments while one pruner keeps the original widths its targets refer to.
    """
    amount = check_amount(amount)
    check_structured(model)
    frozen = {name: p.requires_grad for name, p in model.named_parameters()}
    model.cpu().eval()
    pruner = tp.pruner.BasePruner(
        model,
        example_inputs.cpu(),
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=amount,
        iterative_steps=steps,
        ignored_layers=_ignored(model),
    )
    for step in range(1, steps + 1):
        model.cpu().eval()
        if amount > 0:
            pruner.step()
        for name, param in model.named_parameters():
            param.requires_grad_(frozen.get(name, True))  # torch-pruning's new Parameters forget it
        yield step


def structured(model: nn.Module, amount: float, example_inputs: torch.Tensor) -> nn.Module:
    for _ in structured_steps(model, amount, example_inputs):
        pass
    return model
