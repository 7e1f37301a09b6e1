"""Small real exported models for the serving tests, made with the project's own export code.

A random-weight SimpleCNN on 16x16 images goes through ``WithPreprocessing``, ``convert.to_onnx`` /
``to_torchscript`` and the export stage's ``preprocessing.json`` writer, so the server is tested on exactly the
files the pipeline produces (raw 0-255 float32 NCHW in, logits out, normalisation inside).
"""

from __future__ import annotations

import atexit
import functools
import io
import shutil
import struct
import tempfile
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image

CLASSES = ["circle", "square", "triangle"]
SIZE = 16


def export_model_dir(
    out: Path, channels: int, formats: tuple[str, ...] = ("onnx",), seed: int = 0, explain: bool = True
) -> Path:
    """``out`` with preprocessing.json and model.onnx and/or model.ts of a tiny random model, and (``explain``)
    the network's weights for /explain, as the export stage writes them."""
    import torch

    from classiflow.atomic import write_json
    from classiflow.checkpoint import model_spec
    from classiflow.explain import save_explainable
    from classiflow.export import convert
    from classiflow.export.params import ExportParams
    from classiflow.export.pipeline import file_names
    from classiflow.models import build_model
    from classiflow.stages.export import _preprocessing
    from classiflow.tensors import WithPreprocessing

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    net = build_model("simplecnn", channels, len(CLASSES), SIZE).eval()
    mean, std = [0.4] * channels, [0.25] * channels
    module = WithPreprocessing(net, mean, std).eval()
    example = convert.example_input(channels, SIZE)
    if "onnx" in formats:
        convert.to_onnx(module, example, out / "model.onnx", opset=18)
    if "torchscript" in formats:
        convert.to_torchscript(module, example, out / "model.ts")
    payload = {"classes": CLASSES, "mean": mean, "std": std, "model": {"name": "simplecnn"}}
    data = SimpleNamespace(channels=channels, image_size=SIZE, resize="squash", data_hash="0" * 64)
    sources = [SimpleNamespace(label="trained", stem="model", module=module)]
    names = file_names("model", ExportParams(formats=list(formats), int8="none"))
    rows = [{"model": "trained", "format": fmt, "file": name, "status": "verified"} for fmt, name in names.items()]
    meta = {"channels": channels, "classes": CLASSES, "image_size": SIZE}
    weights = save_explainable(net, model_spec("simplecnn", meta), out) if explain else None
    write_json(out / "preprocessing.json", _preprocessing(payload, data, sources, rows, explain=weights))
    return out


@functools.cache
def shared_exports() -> dict[str, Path]:
    """One RGB model (ONNX + TorchScript) and one gray model (ONNX) per test process, shared by the modules that
    only read them: exporting takes seconds. Treat the directories as read-only."""
    import torch

    root = Path(tempfile.mkdtemp(prefix="classiflow-serve-"))
    atexit.register(shutil.rmtree, root, True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models; threads only contend on a busy machine
    try:
        return {
            "rgb": export_model_dir(root / "rgb", 3, ("onnx", "torchscript")),
            "gray": export_model_dir(root / "gray", 1, ("onnx",), seed=1),
        }
    finally:
        torch.set_num_threads(threads)


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def colour_image(size: int = 24, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB")


def gray_image(size: int = 20, seed: int = 1) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), "L")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A valid PNG header declaring ``width`` x ``height`` gray pixels, with a few bytes of data: a few hundred bytes
    that would decode to 2.5 GB."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", rows) + _chunk(b"IEND", b"")
