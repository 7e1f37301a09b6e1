"""Serving below HTTP: the decode matches training's, model directories load (or fail clearly), batching."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from classiflow.data.imagefolder import decode_image, to_channels
from classiflow.errors import ClassiflowError
from classiflow.serving import images
from classiflow.serving.batcher import Batcher
from classiflow.serving.model import load_model_dir
from tests.serve_fixtures import CLASSES, SIZE, colour_image, encode, gray_image, png_bomb, shared_exports

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PNG = encode(colour_image(), "PNG")


@pytest.fixture(scope="module")
def dirs() -> dict[str, Path]:
    return shared_exports()


# --- decoding: the server sees the pixels training saw ---------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "WEBP"])
def test_decode_gives_trainings_pixels(tmp_path, fmt):
    data = encode(colour_image(size=40), fmt)
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(data)
    trained, gray = decode_image(path, SIZE)
    assert not gray
    np.testing.assert_array_equal(images.decode(data, SIZE, 3), trained)
    np.testing.assert_array_equal(images.decode(data, SIZE, 1), to_channels(trained[None], 1)[0])


@pytest.mark.parametrize("mode", ["L", "I;16"])
def test_gray_images_keep_their_values_for_a_gray_model_and_repeat_for_rgb(tmp_path, mode):
    pixels = np.random.default_rng(3).integers(0, 256, (SIZE, SIZE), dtype=np.uint16)
    img = Image.fromarray((pixels * 257).astype(np.uint16)) if mode == "I;16" else gray_image(SIZE)
    data = encode(img, "PNG")
    (tmp_path / "g.png").write_bytes(data)
    trained_rgb, gray = decode_image(tmp_path / "g.png", SIZE)
    assert gray
    one = images.decode(data, SIZE, 1)
    three = images.decode(data, SIZE, 3)
    # prepare stores an all-gray data set as to_channels(decode_image(...), 1): the same pixels, one channel
    np.testing.assert_array_equal(one, to_channels(trained_rgb[None], 1)[0])
    np.testing.assert_array_equal(one[..., 0], trained_rgb[..., 0])
    np.testing.assert_array_equal(three, trained_rgb)
    if mode == "I;16":
        np.testing.assert_array_equal(one[..., 0], pixels)


def test_declared_pixels_reads_only_the_header():
    assert images.declared_pixels(PNG) == 24 * 24
    assert images.declared_pixels(png_bomb()) is None  # PIL refuses to open it at all
    assert images.declared_pixels(png_bomb(5000, 5000)) == 25_000_000
    assert images.declared_pixels(b"junk") is None


def test_a_bomb_is_refused_from_its_header():
    data = png_bomb()
    assert len(data) < 100_000
    start = time.perf_counter()
    with pytest.raises(images.ImageError, match="too large"):
        images.decode(data, SIZE, 3, max_pixels=50_000_000)
    with pytest.raises(images.ImageError, match="too large"):  # under PIL's own bomb limit, over ours
        images.decode(png_bomb(5000, 5000), SIZE, 3, max_pixels=1_000_000)
    assert time.perf_counter() - start < 5  # generous: decoding 2.5 GB would take far longer (and the memory)


class _Recorder:
    """A fake model that records the batches it was called with."""

    def __init__(self, name: str):
        self.name, self.calls = name, []

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(batch[:, 0].tolist())
        return batch.astype(np.float32)


def test_the_batcher_fills_batches_and_never_mixes_models():
    async def scenario():
        sizes = []
        batcher = Batcher(max_batch=4, max_wait_ms=0.0, on_batch=sizes.append)
        batcher.start()
        a, b = _Recorder("a"), _Recorder("b")
        requests = [batcher.predict(np.array([i]), a if i % 3 else b) for i in range(10)]
        results = await asyncio.gather(*requests)
        await batcher.stop()
        return sizes, a, b, results

    sizes, a, b, results = asyncio.run(scenario())
    assert [r.tolist() for r in results] == [[i] for i in range(10)]
    assert sum(sizes) == 10 and max(sizes) > 1
    assert sorted(i for call in a.calls for i in call) == [i for i in range(10) if i % 3]
    assert sorted(i for call in b.calls for i in call) == [0, 3, 6, 9]


# --- loading --------------------------------------------------------------------------------------------------


def test_torchscript_is_the_fallback_without_onnx_runtime(dirs, monkeypatch, tmp_path):
    batch = images.decode(PNG, SIZE, 3)[None]
    onnx = load_model_dir(dirs["rgb"])
    assert onnx.runtime == "onnxruntime"
    ts_only = tmp_path / "ts"
    ts_only.mkdir()
    for name in ("model.ts", "preprocessing.json"):
        (ts_only / name).write_bytes((dirs["rgb"] / name).read_bytes())
    models = [load_model_dir(ts_only), load_model_dir(dirs["rgb"], prefer="torchscript")]
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    models.append(load_model_dir(dirs["rgb"]))
    for model in models:
        assert model.runtime == "torchscript"
        np.testing.assert_allclose(model.predict(batch), onnx.predict(batch), atol=1e-5)


def _spec_edit(dirs, tmp_path, **changes) -> Path:
    out = tmp_path / "edited"
    out.mkdir(exist_ok=True)
    (out / "model.onnx").write_bytes((dirs["rgb"] / "model.onnx").read_bytes())
    spec = json.loads((dirs["rgb"] / "preprocessing.json").read_text())
    spec.update(changes)
    (out / "preprocessing.json").write_text(json.dumps(spec))
    return out


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"classes": ["only"]}, "at least two"),
        ({"classes": ["a", "b", "c", "d"]}, "lists 4 classes"),
        ({"channels": 2}, "'channels' must be 1 or 3"),
        ({"image_size": "big"}, "'image_size'"),
        ({"temperature": 0}, "'temperature' must be a positive number"),
        ({"operating_point": {"policy": "min_recall"}}, "'operating_point' must hold policy"),
        (
            {"operating_point": {"policy": "min_recall", "target": 0.9, "normal": "ok", "thresholds": {}}},
            "names classes the model does not have: ok",
        ),
        ({"channels": 1}, "fails on a 1x16x16 input"),
        ({"files": {"trained": {"onnx": "missing.onnx"}}}, "neither missing.onnx"),
    ],
)
def test_a_broken_model_directory_is_a_clear_error(dirs, tmp_path, changes, message):
    with pytest.raises(ClassiflowError, match=message):
        load_model_dir(_spec_edit(dirs, tmp_path, **changes))


def test_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(ClassiflowError, match="not a directory"):
        load_model_dir(tmp_path / "nope")
    with pytest.raises(ClassiflowError, match="no preprocessing.json"):
        load_model_dir(tmp_path)
    (tmp_path / "preprocessing.json").write_text("{not json")
    with pytest.raises(ClassiflowError, match="not readable JSON"):
        load_model_dir(tmp_path)


def test_an_mlflow_download_is_read_from_extra_files(dirs, tmp_path):
    extra = tmp_path / "download" / "extra_files"
    extra.mkdir(parents=True)
    for name in ("model.onnx", "preprocessing.json"):
        (extra / name).write_bytes((dirs["rgb"] / name).read_bytes())
    assert load_model_dir(tmp_path / "download").classes == CLASSES
