"""What pruning buys and costs: parameters, size on disk, batch-1 CPU latency and test accuracy.

Latency is measured at batch 1 on the CPU because that is where a smaller model is meant to pay
off (an edge device or a request-per-image service); large GPU batches hide most of the gain.
"""

from __future__ import annotations

import statistics
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from classiflow.cpu import usable_cores
from classiflow.tensors import TTA, Normalizer, predict_logits

WARMUP = 5


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_nonzero(model: nn.Module) -> int:
    return sum(int(p.count_nonzero()) for p in model.parameters())


def file_size(path: Path) -> int:
    return Path(path).stat().st_size


def compressed_size(path: Path) -> int:
    """zlib-compressed size: where the zeros of unstructured pruning do save space (in transfer, not in memory)."""
    return len(zlib.compress(Path(path).read_bytes(), 6))


def latency_ms(
    model: nn.Module, input_shape: tuple[int, ...], repeats: int = 50, threads: int | None = 1, warmup: int = WARMUP
) -> dict[str, float]:
    """Median and p99 milliseconds of one forward pass on the CPU, after ``warmup`` untimed ones.

    ``threads=1`` is the steady number to compare models by; ``None`` uses every core, as a lone
    server process would.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(threads or usable_cores())
    model = model.cpu().eval()
    x = torch.randn(input_shape)
    times = []
    try:
        with torch.inference_mode():
            for i in range(warmup + repeats):
                start = time.perf_counter()
                model(x)
                if i >= warmup:
                    times.append((time.perf_counter() - start) * 1000.0)
    finally:
        torch.set_num_threads(old)
    return {"median": statistics.median(times), "p99": float(np.percentile(times, 99))}


def accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: np.ndarray,
    mean: list[float],
    std: list[float],
    device: torch.device,
    batch_size: int = 512,
    tta: TTA | None = None,
) -> float:
    """Top-1 accuracy on N,C,H,W uint8 images, through the same predict_logits the evaluate stage uses
    (with ``tta``, the test-time augmentation evaluate chose, so the unpruned figure is evaluate's)."""
    model.to(device)
    logits = predict_logits(model, images, Normalizer(mean, std).to(device), device, batch_size, tta)
    return float((logits.argmax(1).numpy() == labels).mean()) if len(labels) else 0.0
