"""Device choice, seeding and mixed precision: the parts of a run that depend on the machine."""

from __future__ import annotations

import contextlib
import functools
import logging
import random

import numpy as np
import torch
from torch import nn

from classiflow.errors import ClassiflowError

log = logging.getLogger("classiflow.training")


def select_device(preference: str = "auto") -> torch.device:
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available[preference]:
        raise ClassiflowError(f"train.device {preference!r}: not available on this machine")
    return torch.device(preference)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX-512 BF16 or AMX). Without them oneDNN emulates it, 10-20x
    slower than fp32 (measured on a Zen 3); with AMX, the quick recipe trained 2.1x faster (docs/benchmarks.md).
    Cached: autocast asks at every step."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def training_memory_format(model: nn.Module, device: torch.device, channels_last: bool) -> torch.memory_format:
    """channels_last when asked, except on a CPU for a model with a strided 1x1 conv over fewer than 8 channels
    (AVX2's channel block): oneDNN's ``jit_1x1:avx2`` weight-gradient kernel writes past its workspace for it in
    channels_last (uxlfoundation/oneDNN#6035). Here, on a Zen 3: weight gradients 42% off NCHW's on two threads,
    and on one thread the 6->12 stride-2 shortcut of a pruned ResNet aborted the process. NCHW it is, there."""
    if not channels_last:
        return torch.contiguous_format
    few = next(
        (
            m.in_channels
            for m in model.modules()
            if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1) and m.in_channels < 8
        ),
        None,
    )
    if device.type == "cpu" and few is not None:
        log.info("channels_last off: a strided 1x1 conv over %d channels (oneDNN fault on CPU)", few)
        return torch.contiguous_format
    return torch.channels_last


def resolve_precision(device: torch.device, precision: str) -> str:
    """``auto``: bf16 where the device has fast bf16 (CUDA with bf16, else fp16; a CPU with bf16 units), else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if device.type == "cpu" and native_bf16() else "fp32"


def autocast(device: torch.device, precision: str):
    """Autocast for ``precision`` (``auto`` resolved here); fp16 is refused on CPU, where it has no fast kernels."""
    precision = resolve_precision(device, precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ClassiflowError("train.precision fp16: only on CUDA; use bf16 on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def rng_state(generators: dict[str, torch.Generator]) -> dict:
    """Every random stream a resumed run must continue from, as plain tensors and lists."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state(),
        "python": random.getstate(),
        "generators": {k: g.get_state() for k, g in generators.items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state() -> list:
    """NumPy's state without ndarrays, so ``torch.load(weights_only=True)`` accepts it."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)]


def set_rng_state(state: dict, generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    for key, generator in generators.items():
        generator.set_state(state["generators"][key])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
