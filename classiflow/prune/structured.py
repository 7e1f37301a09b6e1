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
from torch_pruning.dependency.group import Group

from classiflow.errors import ClassiflowError
from classiflow.prune.unstructured import check_amount, classifier


def _learned(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return not isinstance(weight, torch.Tensor) or weight.requires_grad


class LearnedMagnitude(tp.importance.GroupMagnitudeImportance):
    """L1 magnitude over the learned layers of a channel group only.

    A frozen layer's weights were set, not learned: fastnet's whitening filters are the data's
    eigenvectors scaled by 1/sqrt(eigenvalue), largest for the noisiest directions, and its norm
    layers' scales are fixed at 1. Their size says nothing about which channels the network uses;
    the next learned layer's input weights do. A group with no learned layer keeps plain magnitude.
    """

    def __init__(self):
        super().__init__(p=1)

    def __call__(self, group: Group) -> torch.Tensor:
        learned = Group()
        learned._DG = group._DG
        learned._group = [item for item in group.items if _learned(item.dep.layer)]
        return super().__call__(learned if learned.items else group)


def check_structured(model: nn.Module) -> None:
    if any(isinstance(m, nn.MultiheadAttention) for m in model.modules()):
        raise ClassiflowError(
            f"prune.method 'structured': not supported for {type(model).__name__} (attention heads); "
            "use global_unstructured or l1_unstructured"
        )


def structured_steps(model: nn.Module, amount: float, example_inputs: torch.Tensor, steps: int = 1) -> Iterator[int]:
    """Remove ``amount`` of every layer's channels (smallest L1 norm first) in ``steps`` equal increments.

    Frozen layers are pruned too (ranked by the learned layers that read them): fastnet's 24-channel
    whitening feeds a conv at full resolution, and kept whole it held the batch-1 speed-up of half
    the channels to 1.26x (ONNX Runtime, 2 threads; 1.58x with it pruned, docs/benchmarks.md).

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
        importance=LearnedMagnitude(),
        pruning_ratio=amount,
        iterative_steps=steps,
        ignored_layers=[dict(model.named_modules())[classifier(model)]],  # its outputs are the classes
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
