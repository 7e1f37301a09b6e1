import functools
import http.server
import json
import tarfile
import threading

import numpy as np
import pytest
from PIL import Image

from classiflow.config import DataParams
from classiflow.data.download import download, resolve_source
from classiflow.data.prepare import prepare
from classiflow.data.prepared import load_prepared
from classiflow.errors import ClassiflowError
from tests.imagegen import write_image_folder


def _prepare_folder(tmp_path, folder, **params):
    download(str(folder), tmp_path / "raw")
    return prepare(tmp_path / "raw", tmp_path / "prepared", DataParams(**params))


def _tar(folder, path):
    with tarfile.open(path, "w:gz") as tf:
        tf.add(folder, arcname=folder.name)
    return path


def test_folder_without_splits_gets_stratified_seeded_splits(tmp_path, image_folder):
    meta = _prepare_folder(tmp_path, image_folder, val_fraction=0.2, test_fraction=0.2, image_size=16)
    assert meta["classes"] == ["circle", "square", "stripes"]
    assert meta["sizes"] == {"train": 36, "val": 12, "test": 12}
    assert meta["class_counts"]["test"] == [4, 4, 4]
    data = load_prepared(tmp_path / "prepared")
    assert data.images["train"].shape == (36, 16, 16, 3) and data.images["train"].dtype == np.uint8
    first_hash = meta["data_hash"]
    again = prepare(
        tmp_path / "raw", tmp_path / "prepared2", DataParams(val_fraction=0.2, test_fraction=0.2, image_size=16)
    )
    assert again["data_hash"] == first_hash
    other_seed = prepare(
        tmp_path / "raw", tmp_path / "prepared3", DataParams(val_fraction=0.2, test_fraction=0.2, image_size=16, seed=7)
    )
    assert other_seed["data_hash"] != first_hash


def test_archive_with_own_test_split_keeps_it(tmp_path):
    folder = write_image_folder(tmp_path / "ds", splits={"train": 20, "test": 5})
    archive = _tar(folder, tmp_path / "ds.tar.gz")
    manifest = download(str(archive), tmp_path / "raw")
    assert manifest["kind"] == "archive" and len(manifest["sha256"]) == 64
    meta = prepare(tmp_path / "raw", tmp_path / "prepared", DataParams(val_fraction=0.1))
    assert meta["sizes"]["test"] == 15 and meta["class_counts"]["test"] == [5, 5, 5]
    assert meta["sizes"]["train"] + meta["sizes"]["val"] == 60
    assert not any(p.name.startswith(".extract") for p in tmp_path.iterdir())


def test_grayscale_images_give_one_channel_and_stats(tmp_path):
    folder = write_image_folder(tmp_path / "gray", per_class=10, gray=True)
    meta = _prepare_folder(tmp_path, folder, image_size=20)
    assert meta["channels"] == 1 and len(meta["mean"]) == 1
    data = load_prepared(tmp_path / "prepared")
    assert data.images["train"].shape[1:] == (20, 20, 1)
    x = data.images["train"].astype(np.float64) / 255
    assert meta["mean"][0] == pytest.approx(x.mean(), abs=1e-5)
    assert meta["std"][0] == pytest.approx(x.std(), abs=1e-4)


def test_corrupt_and_non_image_files_are_skipped_and_counted(tmp_path, image_folder):
    (image_folder / "circle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (image_folder / "square" / "notes.txt").write_text("hello")
    Image.new("RGB", (8, 8)).save(image_folder / "square" / "old.gif")  # a format we do not open
    meta = _prepare_folder(tmp_path, image_folder)
    assert meta["skipped_count"] == 3
    assert {p["file"].rsplit("/", 1)[-1] for p in meta["skipped"]} == {"broken.png", "notes.txt", "old.gif"}
    assert sum(meta["sizes"].values()) == 60


def test_strict_mode_fails_on_corrupt_file(tmp_path, image_folder):
    (image_folder / "circle" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ClassiflowError, match="broken.jpg"):
        _prepare_folder(tmp_path, image_folder, strict=True)
    assert not (tmp_path / "prepared").exists()


def test_empty_class_folder_is_an_error(tmp_path, image_folder):
    (image_folder / "empty").mkdir()
    with pytest.raises(ClassiflowError, match="empty holds no images"):
        _prepare_folder(tmp_path, image_folder)


def test_fewer_than_two_classes_is_an_error(tmp_path):
    folder = write_image_folder(tmp_path / "one", per_class=5, classes=("only",))
    with pytest.raises(ClassiflowError, match="at least two"):
        _prepare_folder(tmp_path, folder)


def test_too_few_images_to_stratify_is_an_error(tmp_path):
    folder = write_image_folder(tmp_path / "tiny", per_class=1)
    with pytest.raises(ClassiflowError, match="too few images"):
        _prepare_folder(tmp_path, folder)


@pytest.mark.parametrize("source", ["imagenet", "no/such/dir", "notes.txt"])
def test_unknown_or_missing_source_is_an_error(tmp_path, source, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ClassiflowError, match="data.source"):
        resolve_source(source, tmp_path)


def test_download_from_url_verifies_checksum(tmp_path, image_folder):
    (tmp_path / "serve").mkdir()
    archive = _tar(image_folder, tmp_path / "serve" / "shapes.tar.gz")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "serve"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/shapes.tar.gz"
    try:
        with pytest.raises(ClassiflowError, match="sha256 mismatch"):
            download(url, tmp_path / "raw", sha256="f" * 64)
        assert not (tmp_path / "raw").exists()
        manifest = download(url, tmp_path / "raw")
        assert manifest["kind"] == "url" and (tmp_path / "raw" / "shapes.tar.gz").read_bytes() == archive.read_bytes()
        with pytest.raises(ClassiflowError, match="download of .* failed"):
            download(url.replace("shapes", "missing"), tmp_path / "raw2")
    finally:
        server.shutdown()


def test_builtin_mnist_files_are_read_without_network(tmp_path):
    """torchvision's MNIST format, written locally: the built-in path of prepare, offline."""
    raw = tmp_path / "raw" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def idx(path, array):
        header = {1: b"\x00\x00\x08\x01", 3: b"\x00\x00\x08\x03"}[array.ndim]
        dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
        path.write_bytes(header + dims + array.astype(np.uint8).tobytes())

    for prefix, n in (("train", 60), ("t10k", 20)):
        idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    (tmp_path / "raw" / "manifest.json").write_text(
        json.dumps({"kind": "builtin", "name": "mnist", "source": "mnist", "path": "."})
    )
    meta = prepare(tmp_path / "raw", tmp_path / "prepared", DataParams(image_size=32, val_fraction=0.2))
    assert meta["channels"] == 1 and meta["sizes"] == {"train": 48, "val": 12, "test": 20}
    assert load_prepared(tmp_path / "prepared").images["test"].shape == (20, 32, 32, 1)
