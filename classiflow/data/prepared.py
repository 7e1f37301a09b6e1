"""Loading what the prepare stage wrote: the contract every training and baseline stage reads."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from classiflow.atomic import read_json
from classiflow.data.mapped import load_split
from classiflow.errors import ClassiflowError


@dataclass(frozen=True)
class PreparedData:
    meta: dict
    images: dict[str, np.ndarray]  # split -> N,H,W,C uint8
    labels: dict[str, np.ndarray]  # split -> N int64

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]

    @property
    def channels(self) -> int:
        return int(self.meta["channels"])

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @property
    def resize(self) -> str:
        return self.meta.get("resize", "squash")

    @property
    def data_hash(self) -> str:
        return self.meta["data_hash"]

    def with_stats(self, mean: list[float], std: list[float]) -> PreparedData:
        """The same data fed with other normalisation statistics (a pretrained model's own)."""
        return replace(self, meta={**self.meta, "mean": list(mean), "std": list(std)})


def load_meta(prepared_dir: Path) -> dict:
    path = Path(prepared_dir) / "meta.json"
    if not path.exists():
        raise ClassiflowError(f"{prepared_dir}: no prepared data; run the prepare stage first")
    return read_json(path)


def load_prepared(
    prepared_dir: Path, splits: tuple[str, ...] = ("train", "val", "test"), mapped: bool | None = None
) -> PreparedData:
    """The splits' arrays: in memory, or memory-mapped when large (``classiflow.data.mapped``) or ``mapped``."""
    prepared_dir = Path(prepared_dir)
    meta = load_meta(prepared_dir)
    images, labels = {}, {}
    for split in splits:
        try:
            images[split] = load_split(prepared_dir / f"{split}_images.npy", mapped)
            labels[split] = np.load(prepared_dir / f"{split}_labels.npy", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ClassiflowError(f"{prepared_dir}: {split} split unreadable ({err}); rerun prepare") from None
        if images[split].ndim != 4 or len(images[split]) != len(labels[split]):
            raise ClassiflowError(f"{prepared_dir}: {split} arrays have inconsistent shapes; rerun prepare")
    return PreparedData(meta, images, labels)
