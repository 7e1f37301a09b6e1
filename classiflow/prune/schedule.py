"""One loop for every method: prune to the target in equal increments, with room to fine-tune between them.

Pruning a lot at once removes weights the network cannot recover from; small increments with
fine-tuning in between let the remaining weights take over (Han et al. 2015, Zhu & Gupta 2017).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from classiflow.errors import ClassiflowError
from classiflow.prune.params import METHODS
from classiflow.prune.structured import structured_steps
from classiflow.prune.unstructured import check_amount, global_unstructured, l1_unstructured, select_layers


def _increment(amount: float, step: int, steps: int) -> float:
    """PyTorch applies a repeated prune to the weights still left, so each step asks for the share of those."""
    before, after = amount * (step - 1) / steps, amount * step / steps
    return 1.0 - (1.0 - after) / (1.0 - before)


def prune_steps(
    model: nn.Module,
    method: str,
    amount: float,
    steps: int = 1,
    layers: list[str] | None = None,
    example_inputs: torch.Tensor | None = None,
) -> Iterator[int]:
    """Prune ``model`` in place towards ``amount``, yielding the step number after each increment.

    Unstructured pruning stays a mask (``weight_orig``/``weight_mask``) until
    :func:`~classiflow.prune.unstructured.make_permanent`, so fine-tuning keeps pruned weights at zero.
    """
    amount = check_amount(amount)
    if steps < 1:
        raise ClassiflowError(f"prune.steps {steps!r}: must be at least 1")
    if method not in METHODS:
        raise ClassiflowError(f"prune.method {method!r}: unknown (available: {', '.join(METHODS)})")
    if layers is not None and method != "l1_unstructured":
        raise ClassiflowError(f"prune.layers: only used by l1_unstructured, not {method!r}; set it to null")
    if method == "l1_unstructured":
        select_layers(model, layers)  # a misspelt name fails before any work
    if method == "structured":
        if example_inputs is None:
            raise ValueError("structured pruning traces the model: example_inputs is required")
        yield from structured_steps(model, amount, example_inputs, steps)
        return
    for step in range(1, steps + 1):
        if method != "none" and amount > 0:
            share = _increment(amount, step, steps)
            if method == "l1_unstructured":
                l1_unstructured(model, share, layers)
            else:
                global_unstructured(model, share)
        yield step
