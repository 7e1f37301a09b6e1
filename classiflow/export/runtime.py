"""One calling convention for every format (float32 N,C,H,W raw pixels in, logits out) so that the checks
and the timings treat eager PyTorch, TorchScript and ONNX Runtime alike.

Timings use a fixed thread count for all runtimes (every usable core unless told otherwise), after warm-up:
the first calls allocate buffers and, in ONNX Runtime, pick kernels, and would otherwise pollute the tail.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from classiflow.export.convert import INPUT_NAME, quiet_jit

Predict = Callable[[np.ndarray], np.ndarray]
WARMUP = 10
THROUGHPUT_RUNS = 3


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def pixels(images: np.ndarray) -> np.ndarray:
    """N,H,W,C uint8 (the prepared arrays) -> the deployed input: float32 N,C,H,W in 0-255."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)


def _torch_predict(module: Callable[[torch.Tensor], torch.Tensor]) -> Predict:
    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(batch)).float().numpy()

    return predict


def eager(module: nn.Module) -> Predict:
    return _torch_predict(module.eval())


def torchscript(path: Path) -> Predict:
    with quiet_jit():
        module = torch.jit.load(str(path), map_location="cpu")
    return _torch_predict(module.eval())


def onnxruntime(path: Path, threads: int) -> Predict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def predict(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {INPUT_NAME: batch})[0]

    return predict


def logits(predict: Predict, images: np.ndarray, batch: int) -> np.ndarray:
    """Logits of N,H,W,C uint8 images, converted batch by batch so the whole split is never float32 at once."""
    outs = [predict(pixels(images[i : i + batch])) for i in range(0, len(images), batch)]
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def measure(predict: Predict, images: np.ndarray, repeats: int, batch: int) -> dict[str, float]:
    """Batch-1 median and p99 latency over ``repeats`` calls, and images/s at ``batch`` images per call."""
    single = pixels(images[:1])
    for _ in range(min(WARMUP, repeats)):
        predict(single)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predict(single)
        times.append(time.perf_counter() - start)
    reps = -(-batch // len(images))
    big = pixels(np.concatenate([images] * reps)[:batch])
    predict(big)
    start = time.perf_counter()
    for _ in range(THROUGHPUT_RUNS):
        predict(big)
    seconds = time.perf_counter() - start
    return {
        "latency_ms_median": 1000.0 * float(np.median(times)),
        "latency_ms_p99": 1000.0 * float(np.percentile(times, 99)),
        "images_per_second": THROUGHPUT_RUNS * batch / seconds,
    }
