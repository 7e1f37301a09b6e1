"""Pruning a trained model and measuring the trade-off: accuracy lost against size and latency gained."""

from classiflow.prune.measure import accuracy, compressed_size, count_nonzero, count_parameters, file_size, latency_ms
from classiflow.prune.params import METHODS, PruneParams
from classiflow.prune.saving import load_pruned, rebuild, save_pruned
from classiflow.prune.schedule import prune_steps
from classiflow.prune.structured import check_structured, structured, structured_steps
from classiflow.prune.unstructured import (
    classifier,
    detach_masked_weights,
    global_unstructured,
    l1_unstructured,
    make_permanent,
    prunable_layers,
    sparsity,
)

__all__ = [
    "METHODS",
    "PruneParams",
    "accuracy",
    "check_structured",
    "classifier",
    "compressed_size",
    "count_nonzero",
    "count_parameters",
    "detach_masked_weights",
    "file_size",
    "global_unstructured",
    "l1_unstructured",
    "latency_ms",
    "load_pruned",
    "make_permanent",
    "prunable_layers",
    "prune_steps",
    "rebuild",
    "save_pruned",
    "sparsity",
    "structured",
    "structured_steps",
]
