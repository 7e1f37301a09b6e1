"""fp32 deployable files from a module that takes raw pixels (``WithPreprocessing``), so they carry the
training normalisation and a deployment cannot feed them differently scaled images.

TorchScript: ``torch.jit.trace``, as before. A trace bakes Python ints in, and ViT's ``len(tokens)`` makes the
batch size a constant, so a trace that fails on another batch size is replaced by ``torch.jit.script``.
ONNX: the dynamo exporter over a *strict* ``torch.export``; the legacy TorchScript-based exporter is deprecated
and specialises ViT's batch the same way, and so does non-strict export. Strict export keeps the batch
dimension symbolic for every registered model, CBAM variants included. Weights stay inside the file: the
exporter's default ``.data`` side file would be easy to lose when copying one file to a server.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from classiflow.errors import ClassiflowError

INPUT_NAME = "pixels"
OUTPUT_NAME = "logits"
MAX_BATCH = 65_536


@contextlib.contextmanager
def quiet_jit() -> Iterator[None]:
    """TorchScript is deprecated in favour of torch.export, and every jit call says so; we know. A trace also
    warns where shapes become constants (fastnet's pooling): the image size is fixed, and the traced file is
    checked on one and on several images before it is kept."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def example_input(channels: int, image_size: int, batch: int = 2) -> torch.Tensor:
    """Mid-grey-ish pixels; a batch of 2, since an example batch of 1 gets specialised by torch.export."""
    generator = torch.Generator().manual_seed(0)
    return torch.rand(batch, channels, image_size, image_size, generator=generator) * 255.0


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@torch.no_grad()
def _keeps_batch_free(scripted: torch.jit.ScriptModule, module: nn.Module, example: torch.Tensor) -> bool:
    single = example[:1]
    try:
        out = scripted(single)
    except RuntimeError:
        return False
    return out.shape == module(single).shape and torch.allclose(out, module(single), atol=1e-4, rtol=1e-4)


def to_torchscript(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    module.eval()
    try:
        with torch.no_grad(), quiet_jit():
            scripted = torch.jit.trace(module, example, check_trace=False)
            if not _keeps_batch_free(scripted, module, example):
                scripted = torch.jit.script(module)
            torch.jit.save(scripted, str(path))
    except Exception as err:  # noqa: BLE001 - any tracer/scripting failure means no usable file
        raise ClassiflowError(f"{path.name}: TorchScript export failed ({_first_line(err)})") from None


def to_onnx(module: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    module.eval()
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    try:
        with torch.no_grad():
            program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},), strict=True)
            torch.onnx.export(
                program,
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                external_data=False,
                verbose=False,
                dynamo=True,
            )
    except Exception as err:  # noqa: BLE001 - export, conversion or save: all leave no usable file
        raise ClassiflowError(f"{path.name}: ONNX export failed ({_first_line(err)})") from None
