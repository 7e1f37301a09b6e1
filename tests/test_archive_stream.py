"""An archive is read as a stream: it must give exactly what its extracted folder gives."""

import io
import os
import tarfile
import zipfile

import pytest
from PIL import Image

from classiflow.config import DataParams
from classiflow.data.archive import list_members, read_files
from classiflow.data.download import download
from classiflow.data.prepare import prepare
from classiflow.errors import ClassiflowError
from tests.imagegen import write_image_folder

PARAMS = {"val_fraction": 0.2, "image_size": 16}


def _messy_folder(tmp_path):
    """Splits in a wrapping folder, hidden files, a macOS resource folder, a nested subfolder, junk files."""
    folder = write_image_folder(tmp_path / "src" / "wrap", splits={"train": 12, "test": 3})
    (folder / ".DS_Store").write_bytes(b"\0\0")
    (folder / "__MACOSX").mkdir()
    (folder / "__MACOSX" / "x.png").write_bytes(b"junk")
    (folder / "train" / "circle" / ".hidden.png").write_bytes(b"junk")
    (folder / "train" / "square" / "notes.txt").write_text("not an image")
    (folder / "train" / "square" / "deeper").mkdir()
    Image.new("RGB", (20, 12), (9, 200, 30)).save(folder / "train" / "square" / "deeper" / "wide.jpg")
    return folder


def _prepared(tmp_path, source, name):
    download(str(source), tmp_path / name / "raw")
    return prepare(tmp_path / name / "raw", tmp_path / name / "prepared", DataParams(**PARAMS))


def _same(a, b):
    keys = ("data_hash", "classes", "sizes", "class_counts", "mean", "std", "skipped_count")
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    assert sorted(s["file"] for s in a["skipped"]) == sorted(s["file"] for s in b["skipped"])


@pytest.mark.parametrize("kind", ["tar.gz", "tar", "zip"])
def test_archive_gives_what_its_folder_gives(tmp_path, kind):
    folder = _messy_folder(tmp_path)
    path = tmp_path / f"wrap.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            for file in sorted(folder.rglob("*")):
                zf.write(file, f"wrap/{file.relative_to(folder)}")
    else:
        with tarfile.open(path, "w:gz" if kind == "tar.gz" else "w") as tf:
            tf.add(folder, arcname="./wrap")
    from_folder, from_archive = _prepared(tmp_path, folder, "folder"), _prepared(tmp_path, path, "archive")
    _same(from_folder, from_archive)
    assert from_archive["skipped_count"] == 1 and from_archive["skipped"][0]["file"].endswith("square/notes.txt")
    assert sum(from_archive["sizes"].values()) == 12 * 3 + 3 * 3 + 1


def test_hard_and_symbolic_links_inside_the_archive_are_read_as_their_files(tmp_path):
    folder = write_image_folder(tmp_path / "ds", per_class=6)
    first = sorted((folder / "circle").iterdir())[0]
    os.link(first, folder / "circle" / "hard.png")  # tar stores the second name as a hard link
    os.symlink(first.name, folder / "circle" / "soft.png")
    path = tmp_path / "ds.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        tf.add(folder, arcname="ds")
    listing = list_members(path)
    assert {"ds/circle/hard.png", "ds/circle/soft.png"} <= set(listing.links)
    got = dict(read_files(path, {"ds/circle/hard.png", "ds/circle/soft.png"}, listing.links))
    assert got["ds/circle/hard.png"] == got["ds/circle/soft.png"] == first.read_bytes()
    _same(_prepared(tmp_path, folder, "folder"), _prepared(tmp_path, path, "archive"))


def test_an_empty_class_folder_in_an_archive_is_named(tmp_path):
    folder = write_image_folder(tmp_path / "ds", per_class=5)
    (folder / "empty").mkdir()
    path = tmp_path / "ds.tar"
    with tarfile.open(path, "w") as tf:
        tf.add(folder, arcname="ds")
    with pytest.raises(ClassiflowError, match="ds.tar/ds/empty holds no images"):
        _prepared(tmp_path, path, "archive")
    assert not (tmp_path / "archive" / "prepared").exists()


def test_a_damaged_archive_fails_with_one_line_and_no_output(tmp_path):
    folder = write_image_folder(tmp_path / "ds", per_class=40, size=24)
    path = tmp_path / "ds.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        tf.add(folder, arcname="ds")
    download(str(path), tmp_path / "raw")
    raw = tmp_path / "raw" / "ds.tar.gz"
    raw.write_bytes(raw.read_bytes()[: raw.stat().st_size // 2])
    with pytest.raises(ClassiflowError, match="ds.tar.gz: not a readable archive"):
        prepare(tmp_path / "raw", tmp_path / "prepared", DataParams(**PARAMS))
    assert not (tmp_path / "prepared").exists()


def test_an_oversized_member_is_skipped_unread(tmp_path, monkeypatch):
    folder = write_image_folder(tmp_path / "ds", per_class=5)
    path = tmp_path / "ds.tar"
    with tarfile.open(path, "w") as tf:
        tf.add(folder, arcname="ds")
        info = tarfile.TarInfo("ds/circle/huge.png")
        info.size = 4096
        tf.addfile(info, io.BytesIO(b"\0" * 4096))
    monkeypatch.setattr("classiflow.data.archive.MAX_MEMBER_BYTES", 2048)
    meta = _prepared(tmp_path, path, "archive")
    assert [s["file"] for s in meta["skipped"]] == ["circle/huge.png"]
    assert "too large" in meta["skipped"][0]["reason"]


def test_an_archive_changed_after_its_listing_is_an_error(tmp_path, monkeypatch):
    folder = write_image_folder(tmp_path / "ds", per_class=5)
    path = tmp_path / "ds.tar"
    with tarfile.open(path, "w") as tf:
        tf.add(folder, arcname="ds")
    download(str(path), tmp_path / "raw")
    real = read_files
    monkeypatch.setattr(
        "classiflow.data.archive.read_files", lambda *a: (m for m in real(*a) if not m[0].endswith("0001.png"))
    )
    with pytest.raises(ClassiflowError, match="3 of 15 listed files did not arrive"):
        prepare(tmp_path / "raw", tmp_path / "prepared", DataParams(**PARAMS))
    assert not (tmp_path / "prepared").exists()
