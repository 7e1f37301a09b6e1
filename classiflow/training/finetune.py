"""Fine-tuning a pretrained backbone: which parameters are the head, and freezing the rest for a linear probe.

The head is what a new task replaces (timm's declared classifier, else the last linear layer). Frozen epochs
also keep the backbone's batch-norm statistics fixed, as a linear probe on frozen features means.
"""

from __future__ import annotations

from torch import nn

from classiflow.models.timm_zoo import head_module_names


def head_parameter_ids(model: nn.Module) -> set[int]:
    heads = [model.get_submodule(name) for name in head_module_names(model)]
    return {id(p) for head in heads for p in head.parameters()}


def freeze_backbone(model: nn.Module, frozen: bool) -> None:
    """Switch gradients of everything but the head off (or back on); frozen norm layers stop updating stats."""
    head = head_parameter_ids(model)
    for param in model.parameters():
        if id(param) not in head:
            param.requires_grad_(not frozen)
    if frozen:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                id(p) in head for p in module.parameters()
            ):
                module.eval()
