"""The prepare stage's data sanity report: duplicates within and across splits, odd images, class balance."""

import logging
import shutil

import numpy as np
from PIL import Image

from classiflow.config import DataParams
from classiflow.data.download import download
from classiflow.data.prepare import prepare
from classiflow.data.sanity import class_balance, duplicates, odd_images, plot_class_counts, row_hashes
from tests.imagegen import write_image_folder


def _prepare(tmp_path, folder):
    download(str(folder), tmp_path / "raw")
    return prepare(tmp_path / "raw", tmp_path / "prepared", DataParams(image_size=16, val_fraction=0.2))


def test_copies_within_train_and_from_train_into_test_are_found_by_name(tmp_path, caplog):
    folder = write_image_folder(tmp_path / "ds", splits={"train": 12, "test": 4}, size=20)
    shutil.copy(folder / "train/circle/0000.png", folder / "train/circle/copy.png")
    shutil.copy(folder / "train/square/0003.png", folder / "test/square/leak.png")
    with caplog.at_level(logging.WARNING, logger="classiflow.prepare"):
        dup = _prepare(tmp_path, folder)["sanity"]["duplicates"]
    copies = sum(dup["within"].values())
    leaks = sum(v for k, v in dup["across"].items() if k.endswith("-test"))
    assert copies + sum(v for k, v in dup["across"].items() if k == "train-val") == 1  # the copy may land in val
    assert leaks == 1
    named = {(e["first"].rsplit("/", 1)[-1], e["copy"].rsplit("/", 1)[-1]) for e in dup["examples"]}
    assert ("0003.png", "leak.png") in named
    assert "duplicate image" in caplog.text


def test_odd_sizes_and_a_gray_image_among_colour_ones_are_reported(tmp_path):
    folder = tmp_path / "ds"
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (folder / cls).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(folder / cls / f"{i}.png")
    Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(folder / "a/big.png")
    Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8)).save(folder / "b/gray.png")
    odd = _prepare(tmp_path, folder)["sanity"]["odd"]
    assert odd["size"]["common"] == [24, 24] and odd["size"]["others"] == 1
    assert odd["size"]["examples"] == [{"file": "a/big.png", "size": [30, 40]}]
    assert odd["channels"] == {"common": "colour", "others": 1, "examples": ["b/gray.png"]}


def test_the_pure_functions():
    block = np.zeros((3, 2, 2, 1), np.uint8)
    block[2] = 1
    keys = row_hashes(block)
    assert keys[0] == keys[1] != keys[2]
    found = duplicates({"train": keys, "val": [keys[2]], "test": []})
    assert found["within"] == {"train": 1} and found["across"] == {"train-val": 1}
    assert odd_images(np.array([[8, 8]] * 3), np.array([True] * 3), ["x", "y", "z"])["size"]["others"] == 0
    balance = class_balance({"train": [100, 10, 50]}, ["ok", "short", "open"])
    assert balance == {"train": {"smallest": "short", "ratio_to_largest": 0.1}}


def test_the_bar_chart_is_written(tmp_path):
    plot_class_counts(tmp_path / "c.png", {"train": [5, 3], "val": [1, 1], "test": [0, 0]}, ["a", "b"])
    assert Image.open(tmp_path / "c.png").size[0] > 100
