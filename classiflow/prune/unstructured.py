"""Magnitude pruning of single weights, as the source article does it.

The article prunes with ``prune.l1_unstructured(model.conv2, 'weight', amount=0.2)``. That zeroes
weights inside dense tensors: the model keeps its shape, size on disk and speed; only a sparse
kernel or a compressor could profit. It is here to measure the accuracy side of that trade-off.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils import prune

from classiflow.errors import ClassiflowError

PRUNABLE = (nn.Conv2d, nn.Linear)


def check_amount(amount: float) -> float:
    if isinstance(amount, bool) or not isinstance(amount, int | float) or not 0.0 <= amount < 1.0:
        raise ClassiflowError(f"prune.amount {amount!r}: must be in [0, 1) (the fraction removed)")
    return float(amount)


def classifier(model: nn.Module) -> str:
    """The final classifier's name: the last linear layer, which every registered model ends with.

    Pruning its outputs would remove classes, and its few weights carry the most per weight.
    """
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ClassiflowError(f"{type(model).__name__}: no linear classifier found to protect from pruning")
    return names[-1]


def _maskable(model: nn.Module) -> dict[str, nn.Module]:
    """Conv/linear layers whose own forward runs: attention reads ``out_proj.weight`` directly,
    so a mask hook there would never refresh and fine-tuning would silently freeze the layer."""
    inside = {f"{name}.out_proj" for name, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)}
    return {name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE) and name not in inside}


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every conv/linear layer except the classifier and frozen ones (fastnet's data-derived whitening)."""
    head = classifier(model)
    return {name: m for name, m in _maskable(model).items() if name != head and _weight(m).requires_grad}


def _weight(module: nn.Module):
    return module.weight_orig if hasattr(module, "weight_orig") else module.weight


def select_layers(model: nn.Module, names: list[str] | None) -> dict[str, nn.Module]:
    if names is None:
        return prunable_layers(model)
    valid = _maskable(model)
    chosen = {}
    for name in names:
        if name not in valid:
            shown = ", ".join(list(valid)[:8]) + (", ..." if len(valid) > 8 else "")
            raise ClassiflowError(f"prune.layers {name!r}: no prunable conv/linear layer of that name (valid: {shown})")
        chosen[name] = valid[name]
    return chosen


def l1_unstructured(model: nn.Module, amount: float, layers: list[str] | None = None) -> nn.Module:
    """The source's call on each chosen layer: ``amount`` of its weights, smallest |w| first."""
    amount = check_amount(amount)
    for module in select_layers(model, layers).values():
        prune.l1_unstructured(module, "weight", amount=amount)
    return model


def global_unstructured(model: nn.Module, amount: float, layers: list[str] | None = None) -> nn.Module:
    """One magnitude threshold over all chosen layers, so layers with many small weights lose more of them."""
    amount = check_amount(amount)
    chosen = select_layers(model, layers)
    prune.global_unstructured(
        [(module, "weight") for module in chosen.values()], pruning_method=prune.L1Unstructured, amount=amount
    )
    return model


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold each ``weight_orig * weight_mask`` into a plain ``weight``, so the state dict matches build_model's."""
    for module in model.modules():
        if prune.is_pruned(module) and hasattr(module, "weight_orig"):
            prune.remove(module, "weight")
    return model


def detach_masked_weights(model: nn.Module) -> nn.Module:
    """Detach the ``weight`` a mask hook last computed, so the model can be deep-copied (EMA copies it).

    That tensor is ``weight_orig * weight_mask`` with autograd history, which deepcopy refuses;
    the hook recomputes it on every forward, so the detached copy is never used for training.
    """
    for module in model.modules():
        if hasattr(module, "weight_orig") and hasattr(module, "weight_mask"):
            module.weight = module.weight.detach()
    return model


def sparsity(model: nn.Module, reference: nn.Module | None = None) -> float:
    """Fraction of the reference's prunable conv/linear weights that are zero or gone in ``model``.

    Against itself this is the share of zeros; against the unpruned model it also counts the
    weights that structured pruning removed, so both kinds of pruning land on one axis.
    """
    reference = model if reference is None else reference
    modules = dict(model.named_modules())
    total = kept = 0
    for name, module in prunable_layers(reference).items():
        total += _weight(module).numel()
        if name in modules:
            kept += int(modules[name].weight.count_nonzero())
    return 1.0 - kept / total if total else 0.0
