"""The prepare stage: fixed, stratified, seeded splits stored as uint8 arrays with their stats.

Training then reads whole arrays (``np.load``, well under a second for 50,000 images at 32x32, or
memory-mapped when large: ``classiflow.data.prepared``) instead of decoding image files every epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split

from classiflow.atomic import atomic_dir, read_json, write_json
from classiflow.config import DataParams
from classiflow.data import archive, imagefolder
from classiflow.data.download import MANIFEST
from classiflow.data.groups import group_keys, grouped_holdout, summarize
from classiflow.data.imagefolder import Item
from classiflow.data.labelled import UNLABELLED, label_subset
from classiflow.data.mapped import release_pages
from classiflow.data.sanity import class_balance, duplicates, odd_images, row_hashes
from classiflow.data.tree import Tree, scan_names
from classiflow.errors import ClassiflowError
from classiflow.layout import project_root

log = logging.getLogger("classiflow.prepare")
SPLITS = ("train", "val", "test")
FORMAT_VERSION = 1
Split = tuple[np.ndarray, np.ndarray]  # images N,H,W,C uint8; labels N int64
CHUNK_BYTES = 64 << 20  # bound on the working memory of a step of gathering and writing images
STATS_VALUES = 1 << 23  # pixel values per step of channel_stats


def resize_batch(images: np.ndarray, size: int) -> np.ndarray:
    if images.shape[1:3] == (size, size):
        return images
    out = []
    for start in range(0, len(images), 4096):
        t = torch.from_numpy(images[start : start + 4096]).permute(0, 3, 1, 2).float()
        t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(t.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


@dataclass
class Source:
    """One split as the source holds it; ``keep`` lists the rows that decoded (in order)."""

    images: np.ndarray  # N,H,W,3 (or C) uint8, in memory or memory-mapped
    labels: np.ndarray  # N int64
    keep: np.ndarray  # row indices
    groups: np.ndarray | None = None  # N group keys (data.group_by), or None: every image its own group
    files: list[str] | None = None  # N paths inside the data set (image folders and archives)
    sizes: np.ndarray | None = None  # N,2 source width and height
    gray: np.ndarray | None = None  # N bool: the source image had one channel


Picks = dict[str, tuple[str, np.ndarray]]  # final split -> (source split, rows of it)


def _load_builtin(name: str, root: Path, size: int) -> tuple[list[str], dict[str, Source], bool]:
    import torchvision.datasets as tvd

    cls = {"cifar10": tvd.CIFAR10, "mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST}[name]
    sources = {}
    for split, train in (("train", True), ("test", False)):
        try:
            ds = cls(str(root), train=train, download=False)
        except RuntimeError as err:
            raise ClassiflowError(f"{root}: the {name} files are missing or damaged ({err}); rerun download") from None
        data = np.asarray(ds.data, dtype=np.uint8)
        if data.ndim == 3:
            data = data[..., None]
        labels = np.asarray(ds.targets, dtype=np.int64)
        sources[split] = Source(resize_batch(data, size), labels, np.arange(len(labels)))
    gray = sources["train"].images.shape[-1] == 1
    return list(ds.classes), sources, gray


def _report_skipped(skipped: list[dict], strict: bool) -> None:
    if skipped and strict:
        raise ClassiflowError(
            f"{len(skipped)} file(s) are not readable images (data.strict is on), "
            f"first: {skipped[0]['file']}: {skipped[0]['reason']}"
        )
    for item in skipped[:20]:
        log.warning("skipped %s: %s", item["file"], item["reason"])
    if len(skipped) > 20:
        log.warning("... and %d more skipped files", len(skipped) - 20)


def _load_tree(
    tree: Tree, read: Callable[[dict[str, tuple[str, int, str]]], Iterable[Item]], params: DataParams, scratch: Path
) -> tuple[list[str], dict[str, Source], bool, list]:
    """Decode every split of the tree into a memory-mapped file under ``scratch``; ``read`` turns the tree's
    files (name -> split, row and path inside the data set) into the items to decode."""
    if params.group_by:
        relative = [p for name in tree.splits for p in tree.relative(name)]
        keys, start = group_keys(relative, params.group_by, project_root()), 0
    size = params.image_size
    outs = {
        name: np.lib.format.open_memmap(scratch / f"{name}.npy", "w+", np.uint8, (len(s.paths), size, size, 3))
        for name, s in tree.splits.items()
    }
    rows = {
        p: (name, i, rel)
        for name in tree.splits
        for i, (p, rel) in enumerate(zip(tree.splits[name].paths, tree.relative(name), strict=True))
    }
    decoded = imagefolder.decode_splits(read(rows), outs, params.resize)
    sources, skipped = {}, []
    for name, samples in tree.splits.items():
        d = decoded[name]
        labels, keep = np.asarray(samples.labels, dtype=np.int64), np.flatnonzero(d.ok)
        sources[name] = Source(outs[name], labels, keep, None, tree.relative(name), d.sizes, d.gray)
        skipped += d.skipped
        if params.group_by:
            sources[name].groups, start = keys[start : start + len(samples.paths)], start + len(samples.paths)
    _report_skipped(skipped, params.strict)
    main = sources.get("train", sources.get("all"))
    present = np.unique(main.labels[main.keep])
    empty = [c for i, c in enumerate(tree.classes) if i not in present]
    if empty:
        raise ClassiflowError(f"class(es) with no readable image: {', '.join(empty)}")
    all_gray = all(bool(d.gray[d.ok].all()) for d in decoded.values())
    return tree.classes, sources, all_gray, skipped


def _stratified(rows: np.ndarray, labels: np.ndarray, fraction: float, seed: int, what: str):
    """Split ``rows`` (whose labels are ``labels[rows]``) into kept and held-out rows, both in order."""
    y = labels[rows]
    counts = np.bincount(y)
    n_hold = int(round(len(y) * fraction))
    n_classes = int((counts > 0).sum())
    if counts[counts > 0].min() < 2 or n_hold < n_classes or len(y) - n_hold < n_classes:
        raise ClassiflowError(
            f"too few images to split off a stratified {what} set ({len(y)} images, "
            f"smallest class {int(counts[counts > 0].min())}); add images or change data.{what}_fraction"
        )
    keep, hold = train_test_split(np.arange(len(y)), test_size=n_hold, stratify=y, random_state=seed)
    return rows[np.sort(keep)], rows[np.sort(hold)]


def _holdout(rows: np.ndarray, src: Source, fraction: float, seed: int, what: str):
    if src.groups is not None:
        return grouped_holdout(rows, src.labels, src.groups, fraction, seed, what)
    return _stratified(rows, src.labels, fraction, seed, what)


def _split(sources: dict[str, Source], params: DataParams) -> Picks:
    """Which rows of which source split make each of train, val and test."""
    if "all" in sources:
        src = sources["all"]
        rest, test = _holdout(src.keep, src, params.test_fraction, params.seed, "test")
        val_share = params.val_fraction / (1.0 - params.test_fraction)
        train, val = _holdout(rest, src, val_share, params.seed, "val")
        return {"train": ("all", train), "val": ("all", val), "test": ("all", test)}
    picks = {name: (name, src.keep) for name, src in sources.items()}
    train = sources["train"]
    if "val" not in picks:
        rest, val = _holdout(train.keep, train, params.val_fraction, params.seed, "val")
        picks["train"], picks["val"] = ("train", rest), ("train", val)
    if "test" not in picks:
        rest, test = _holdout(picks["train"][1], train, params.test_fraction, params.seed, "test")
        picks["train"], picks["test"] = ("train", rest), ("train", test)
    return picks


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean/std in [0, 1], exact: from each channel's histogram of the 256 values, counted chunk by
    chunk (no float copy of the pixels)."""
    c = images.shape[-1]
    step = max(1, min(8192, STATS_VALUES // max(int(np.prod(images.shape[1:])), 1)))
    counts = np.zeros((c, 256), np.int64)
    for start in range(0, len(images), step):
        block = np.ascontiguousarray(images[start : start + step]).reshape(-1, c)
        for ch in range(c):
            counts[ch] += np.bincount(block[:, ch], minlength=256)
        release_pages(images)
    values = np.arange(256) / 255.0
    n = counts.sum(1)
    mean = counts @ values / n
    std = np.sqrt(np.maximum(counts @ (values * values) / n - mean * mean, 1e-12))
    return mean.round(6).tolist(), std.round(6).tolist()


def content_hash(splits: dict[str, Split], classes: list[str]) -> str:
    """The digest :func:`prepare` records as ``data_hash`` (it computes it while writing, chunk by chunk)."""
    digest = hashlib.sha256(json.dumps(classes).encode())
    for name in (*SPLITS, *([UNLABELLED] if UNLABELLED in splits else [])):
        images, labels = splits[name]
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(images).data)
        digest.update(np.ascontiguousarray(labels).data)
    return digest.hexdigest()


def _write_split(folder: Path, name: str, source: Source, rows: np.ndarray, channels: int, digest, hashes: list):
    """Gather ``rows`` of ``source`` into ``<name>_images.npy`` (chunk by chunk, memory-mapped); return the labels
    (``hashes`` gets each image's content hash)."""
    shape = (len(rows), *source.images.shape[1:3], channels)
    out = np.lib.format.open_memmap(folder / f"{name}_images.npy", "w+", np.uint8, shape)
    step = max(1, CHUNK_BYTES // (4 * max(int(np.prod(source.images.shape[1:])), 1)))  # to_channels: float32
    digest.update(name.encode())
    for start in range(0, len(rows), step):
        block = np.ascontiguousarray(imagefolder.to_channels(source.images[rows[start : start + step]], channels))
        out[start : start + len(block)] = block
        digest.update(block.data)
        hashes += row_hashes(block)
        release_pages(source.images)
        release_pages(out)
    out.flush()
    del out
    labels = np.ascontiguousarray(source.labels[rows])
    digest.update(labels.data)
    np.save(folder / f"{name}_labels.npy", labels)
    return labels


def _sanity(sources: dict[str, Source], picks: Picks, hashes: dict[str, list[str]], meta: dict) -> dict:
    """Class balance, exact duplicates within and across splits, and images unlike the rest
    (``classiflow.data.sanity``)."""
    files = {k: [sources[s].files[r] for r in rows] for k, (s, rows) in picks.items() if sources[s].files}
    report = {"balance": class_balance(meta["class_counts"], meta["classes"]), "duplicates": duplicates(hashes, files)}
    with_sizes = [src for src in sources.values() if src.sizes is not None]
    if with_sizes:
        sizes = np.concatenate([s.sizes[s.keep] for s in with_sizes])
        gray = np.concatenate([s.gray[s.keep] for s in with_sizes])
        report["odd"] = odd_images(sizes, gray, [s.files[r] for s in with_sizes for r in s.keep])
    return report


def _load(manifest: dict, raw_dir: Path, params: DataParams, scratch: Path):
    if manifest["kind"] == "builtin":
        if params.group_by:
            raise ClassiflowError(f"data.group_by: {manifest['name']} is a built-in data set with no file paths")
        return (*_load_builtin(manifest["name"], raw_dir, params.image_size), [])
    if manifest["kind"] == "folder":
        root = raw_dir / manifest["path"]
        tree = imagefolder.scan(root)
        return _load_tree(tree, lambda rows: ((*rows[p], root / p) for p in rows), params, scratch)
    path = raw_dir / manifest["path"]
    listing = archive.list_members(path)
    tree = scan_names(listing.files, listing.dirs, path.name)

    def members(rows: dict[str, tuple[str, int, str]]) -> Iterable[Item]:
        return ((*rows[name], data) for name, data in archive.read_files(path, set(rows), listing.links))

    return _load_tree(tree, members, params, scratch)


def prepare(raw_dir: Path, out_dir: Path, params: DataParams) -> dict:
    """Turn ``raw_dir`` (the download stage's output) into ``out_dir``; return its metadata.

    Images go from the decoder to a scratch file and from there, split by split, to their final files: memory
    stays flat however large the set (a 224x224 CIFAR-sized set is 7.5 GB).
    """
    manifest_path = raw_dir / MANIFEST
    if not manifest_path.exists():
        raise ClassiflowError(f"{raw_dir}: no {MANIFEST}; run the download stage first")
    manifest = read_json(manifest_path)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".prepare-", dir=out_dir.parent) as scratch, atomic_dir(out_dir) as tmp:
        classes, sources, gray, skipped = _load(manifest, raw_dir, params, Path(scratch))
        channels = params.channels if params.channels != "auto" else (1 if gray else 3)
        picks = label_subset(_split(sources, params), sources, classes, params.label_fraction, params.label_seed)
        names = (*SPLITS, *([UNLABELLED] if UNLABELLED in picks else []))
        digest, hashes = hashlib.sha256(json.dumps(classes).encode()), {k: [] for k in names}
        labels = {
            k: _write_split(tmp, k, sources[picks[k][0]], picks[k][1], channels, digest, hashes[k]) for k in names
        }
        mean, std = channel_stats(np.load(tmp / "train_images.npy", mmap_mode="r"))
        meta = {
            "format_version": FORMAT_VERSION,
            "dataset": manifest["name"],
            "source": manifest["source"],
            "source_sha256": manifest.get("sha256"),
            "classes": classes,
            "channels": channels,
            "image_size": params.image_size,
            "resize": params.resize,
            "mean": mean,
            "std": std,
            "sizes": {k: int(len(labels[k])) for k in names},
            "class_counts": {k: np.bincount(labels[k], minlength=len(classes)).tolist() for k in names},
            "label_fraction": params.label_fraction,
            "skipped_count": len(skipped),
            "skipped": skipped[:100],
            "groups": params.group_by
            and {"by": params.group_by}
            | summarize({k: sources[s].groups[r] for k, (s, r) in picks.items() if k != UNLABELLED}),
            "data_hash": digest.hexdigest(),
        }
        meta["sanity"] = _sanity(sources, picks, hashes, meta)
        write_json(tmp / "meta.json", meta)
    return meta
