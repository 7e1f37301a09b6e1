"""Non-square images (data.resize) and splits too large for memory (memory-mapped prepared data)."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from classiflow.config import DataParams
from classiflow.data import mapped
from classiflow.data.download import download
from classiflow.data.imagefolder import decode_image
from classiflow.data.prepare import content_hash, prepare
from classiflow.data.prepared import load_prepared
from classiflow.data.resize import LETTERBOX_FILL, fit_square
from classiflow.models import build_model
from classiflow.serving import images as serving_images
from classiflow.training import fit
from tests.conftest import shrunk_train
from tests.imagegen import write_image_folder
from tests.test_models_training import _toy_data

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _bands(width=60, height=20) -> Image.Image:
    """Red | green | blue vertical thirds: what each policy keeps is visible in the output."""
    a = np.zeros((height, width, 3), np.uint8)
    third = width // 3
    a[:, :third], a[:, third : 2 * third], a[:, 2 * third :] = RED, GREEN, BLUE
    return Image.fromarray(a)


def test_squash_keeps_everything_stretched():
    out = np.asarray(fit_square(_bands(), 12, "squash"))
    assert out.shape == (12, 12, 3)
    assert tuple(out[6, 0]) == RED and tuple(out[6, 6]) == GREEN and tuple(out[6, 11]) == BLUE


def test_center_crop_keeps_the_middle():
    out = np.asarray(fit_square(_bands(), 12, "center_crop"))
    assert (out == GREEN).all()


def test_letterbox_pads_the_short_side_with_grey():
    out = np.asarray(fit_square(_bands(), 12, "letterbox"))
    assert (out[0] == LETTERBOX_FILL).all() and (out[-1] == LETTERBOX_FILL).all()
    assert tuple(out[6, 0]) == RED and tuple(out[6, 11]) == BLUE


def test_a_square_image_is_resized_alike_by_every_policy():
    square = _bands(30, 30)
    outs = [np.asarray(fit_square(square, 10, p)) for p in ("squash", "letterbox", "center_crop")]
    assert all(np.array_equal(outs[0], o) for o in outs[1:])


def test_an_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="unknown resize policy 'stretch'"):
        fit_square(_bands(), 8, "stretch")
    with pytest.raises(ValueError, match="resize"):
        DataParams(resize="stretch")


@pytest.mark.parametrize("policy", ["squash", "letterbox", "center_crop"])
def test_serving_fits_an_upload_as_training_did(tmp_path, policy):
    path = tmp_path / "wide.png"
    _bands(90, 40).save(path)
    trained, _ = decode_image(path, 16, policy)
    served = serving_images.decode(path.read_bytes(), 16, 3, resize=policy)
    assert np.array_equal(trained, served)


def test_prepare_records_the_policy_and_applies_it(tmp_path):
    folder = tmp_path / "wide"
    for cls in ("a", "b"):
        (folder / cls).mkdir(parents=True)
        for i in range(10):
            _bands(48, 16).save(folder / cls / f"{i}.png")
    download(str(folder), tmp_path / "raw")
    meta = prepare(tmp_path / "raw", tmp_path / "prepared", DataParams(image_size=8, resize="letterbox"))
    assert meta["resize"] == "letterbox"
    data = load_prepared(tmp_path / "prepared")
    assert data.resize == "letterbox" and (data.images["train"][:, 0] == LETTERBOX_FILL).all()


def test_prepare_streams_to_the_same_hash_and_leaves_no_scratch(tmp_path, image_folder):
    download(str(image_folder), tmp_path / "raw")
    meta = prepare(tmp_path / "raw", tmp_path / "prepared", DataParams(image_size=16, val_fraction=0.2))
    data = load_prepared(tmp_path / "prepared")
    splits = {k: (data.images[k], data.labels[k]) for k in data.images}
    assert meta["data_hash"] == content_hash(splits, data.classes)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_large_split_is_memory_mapped_and_equal(tmp_path, image_folder, monkeypatch):
    download(str(image_folder), tmp_path / "raw")
    prepare(tmp_path / "raw", tmp_path / "prepared", DataParams(image_size=16))
    in_memory = load_prepared(tmp_path / "prepared")
    monkeypatch.setattr(mapped, "MAP_ABOVE_BYTES", 1000)
    large = load_prepared(tmp_path / "prepared")
    for split in ("train", "val", "test"):
        assert not mapped.is_mapped(in_memory.images[split]) and mapped.is_mapped(large.images[split])
        assert np.array_equal(in_memory.images[split], large.images[split])


def _as_mapped(data, folder: Path):
    images = {}
    for split, array in data.images.items():
        np.save(folder / f"{split}.npy", array)
        images[split] = mapped.load_split(folder / f"{split}.npy", mapped=True)
    return type(data)(data.meta, images, data.labels)


def test_training_on_mapped_splits_gives_the_same_weights(tmp_path):
    data = _toy_data()
    cfg = shrunk_train(epochs=2, batch_size=16, lr=0.05, scheduler="onecycle")
    runs = []
    for source in (data, _as_mapped(data, tmp_path)):
        torch.manual_seed(0)
        model = build_model("fastnet", 1, 2, 16, width=8)
        result = fit(model, source, cfg)
        runs.append((model.state_dict(), result.history))
    (a, history_a), (b, history_b) = runs
    assert [h["val_accuracy"] for h in history_a] == [h["val_accuracy"] for h in history_b]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")
def test_released_pages_no_longer_count_as_resident(tmp_path):
    def rss_file_kb() -> int:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("RssFile:"))
        return int(line.split()[1])

    np.save(tmp_path / "big.npy", np.ones((64, 1024, 1024), np.uint8))  # 64 MiB
    array = mapped.load_split(tmp_path / "big.npy", mapped=True)
    before = rss_file_kb()
    assert int(array.sum(dtype=np.int64)) == 64 << 20
    touched = rss_file_kb() - before
    mapped.release_pages(array)
    assert touched > 48 << 10 and rss_file_kb() - before < 8 << 10
    assert int(array[-1].sum()) == 1 << 20  # still readable after release


def test_a_folder_with_skipped_images_is_compacted(tmp_path):
    folder = write_image_folder(tmp_path / "ds", per_class=12)
    bad = sorted((folder / "square").iterdir())[3]
    bad.write_bytes(b"not an image")
    download(str(folder), tmp_path / "raw")
    meta = prepare(tmp_path / "raw", tmp_path / "prepared", DataParams(image_size=16))
    data = load_prepared(tmp_path / "prepared")
    assert meta["skipped_count"] == 1 and sum(meta["sizes"].values()) == 35
    assert all(data.images[k].reshape(len(data.labels[k]), -1).max(1).min() > 0 for k in data.images)


def test_large_images_are_predicted_in_smaller_batches_with_the_same_logits(monkeypatch):
    import classiflow.tensors as tensors

    torch.manual_seed(0)
    model = build_model("fastnet", 3, 4, 16, width=8).eval()
    images = torch.randint(0, 256, (37, 3, 16, 16), dtype=torch.uint8)
    normalizer = tensors.Normalizer([0.5] * 3, [0.25] * 3)
    seen = []
    model.register_forward_hook(lambda _m, args, _out: seen.append(len(args[0])))
    whole, whole_mirrored = tensors.predict_views(model, images, normalizer, torch.device("cpu"), 64, tensors.TTA())
    monkeypatch.setattr(tensors, "BATCH_VALUES", 2 * 10 * 3 * 16 * 16)  # input values, mirrors counted
    seen.clear()
    small, small_mirrored = tensors.predict_views(model, images, normalizer, torch.device("cpu"), 64, tensors.TTA())
    assert seen == [20, 20, 20, 14]  # 10 images (and their mirrors) per batch
    assert torch.allclose(whole, small, atol=1e-5) and torch.allclose(whole_mirrored, small_mirrored, atol=1e-5)
    assert small.shape == (37, 4) and not torch.allclose(small, small_mirrored)
