"""Leak-free splits (data.group_by): each group's images land in one split, on regex and CSV groupings."""

import numpy as np
import pytest

from classiflow.config import DataParams
from classiflow.data.download import download
from classiflow.data.prepare import prepare
from classiflow.data.prepared import load_prepared
from classiflow.errors import ClassiflowError
from tests.imagegen import CLASSES, draw

PATTERN = r"([a-z]+-g\d+)_\d+\.png$"


def _boards(root, groups=10, copies=4, splits=("",)):
    """Each group is one drawn image saved ``copies`` times (crops of one board): a leak shows as an image that
    appears in two splits."""
    rng = np.random.default_rng(0)
    for split in splits:
        for cls in CLASSES:
            folder = root / split / cls
            folder.mkdir(parents=True)
            for g in range(groups):
                image = draw(cls, 16, rng, gray=False)
                for k in range(copies):
                    image.save(folder / f"{cls}-g{g}_{k}.png")
    return root


def _prepared(tmp_path, folder, **params):
    download(str(folder), tmp_path / "raw")
    meta = prepare(tmp_path / "raw", tmp_path / "prepared", DataParams(image_size=16, **params))
    return meta, load_prepared(tmp_path / "prepared")


def _shared_images(data) -> int:
    seen = {name: {img.tobytes() for img in data.images[name]} for name in ("train", "val", "test")}
    return len(seen["train"] & seen["val"]) + len(seen["train"] & seen["test"]) + len(seen["val"] & seen["test"])


def test_grouped_splits_share_no_image_where_random_splits_leak(tmp_path):
    folder = _boards(tmp_path / "boards")
    meta, data = _prepared(tmp_path / "a", folder, group_by=PATTERN, val_fraction=0.2, test_fraction=0.2)
    assert _shared_images(data) == 0
    assert sum(meta["groups"]["counts"].values()) == 30 and meta["groups"]["crossing"] == 0
    assert all(count % 4 == 0 for count in meta["sizes"].values())  # whole groups of four
    assert all(min(counts) > 0 for counts in meta["class_counts"].values())  # still stratified
    _, leaky = _prepared(tmp_path / "b", folder, val_fraction=0.2, test_fraction=0.2)
    assert _shared_images(leaky) > 0


def test_a_csv_of_file_and_group_works_like_the_pattern(tmp_path, monkeypatch):
    folder = _boards(tmp_path / "boards")
    rows = ["file,group"] + [f"{p.name},{p.name.split('_')[0]}" for p in sorted(folder.rglob("*.png"))]
    (tmp_path / "groups.csv").write_text("\n".join(rows) + "\n")
    monkeypatch.chdir(tmp_path)
    by_csv, _ = _prepared(tmp_path / "a", folder, group_by="groups.csv", val_fraction=0.2, test_fraction=0.2)
    by_regex, _ = _prepared(tmp_path / "b", folder, group_by=PATTERN, val_fraction=0.2, test_fraction=0.2)
    assert by_csv["data_hash"] == by_regex["data_hash"]


def test_groups_across_the_sources_own_splits_are_counted(tmp_path):
    folder = _boards(tmp_path / "boards", groups=6, splits=("train", "test"))  # same names in both splits
    meta, data = _prepared(tmp_path / "a", folder, group_by=PATTERN, val_fraction=0.2)
    assert meta["groups"]["crossing"] == 18 and meta["sizes"]["test"] == 72
    seen = {name: {img.tobytes() for img in data.images[name]} for name in ("train", "val")}
    assert not seen["train"] & seen["val"]


@pytest.mark.parametrize(
    ("group_by", "message"),
    [
        (r"board-(\d+)", "matches no file"),
        (r"\.png$", "puts every file in one group"),
        (r"([a-z", "is not a regular expression"),
    ],
)
def test_a_grouping_that_cannot_work_is_one_clear_error(tmp_path, group_by, message):
    with pytest.raises(ClassiflowError, match=message):
        _prepared(tmp_path, _boards(tmp_path / "boards", groups=3), group_by=group_by)
