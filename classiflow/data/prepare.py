"""The prepare stage: fixed, stratified, seeded splits stored as uint8 arrays with their stats.

Training then reads whole arrays (``np.load``, well under a second for 50,000 images)
instead of decoding image files every epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split

from classiflow.atomic import atomic_dir, read_json, write_json
from classiflow.config import DataParams
from classiflow.data import archive, imagefolder
from classiflow.data.download import MANIFEST
from classiflow.errors import ClassiflowError

log = logging.getLogger("classiflow.prepare")
SPLITS = ("train", "val", "test")
FORMAT_VERSION = 1
Split = tuple[np.ndarray, np.ndarray]  # images N,H,W,C uint8; labels N int64


def resize_batch(images: np.ndarray, size: int) -> np.ndarray:
    if images.shape[1:3] == (size, size):
        return images
    out = []
    for start in range(0, len(images), 4096):
        t = torch.from_numpy(images[start : start + 4096]).permute(0, 3, 1, 2).float()
        t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(t.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def _load_builtin(name: str, root: Path, size: int) -> tuple[list[str], dict[str, Split], bool]:
    import torchvision.datasets as tvd

    cls = {"cifar10": tvd.CIFAR10, "mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST}[name]
    splits = {}
    for split, train in (("train", True), ("test", False)):
        try:
            ds = cls(str(root), train=train, download=False)
        except RuntimeError as err:
            raise ClassiflowError(f"{root}: the {name} files are missing or damaged ({err}); rerun download") from None
        data = np.asarray(ds.data, dtype=np.uint8)
        if data.ndim == 3:
            data = data[..., None]
        splits[split] = (resize_batch(data, size), np.asarray(ds.targets, dtype=np.int64))
    gray = splits["train"][0].shape[-1] == 1
    return list(ds.classes), splits, gray


def _load_tree(root: Path, size: int, strict: bool) -> tuple[list[str], dict[str, Split], bool, list[dict]]:
    tree = imagefolder.scan(root)
    splits, skipped, all_gray = {}, [], True
    for name, samples in tree.splits.items():
        decoded = imagefolder.decode_samples(samples, size, name)
        skipped += decoded.skipped
        all_gray &= bool(decoded.gray.all())
        splits[name] = (decoded.images, decoded.labels)
    if skipped:
        if strict:
            raise ClassiflowError(
                f"{len(skipped)} file(s) are not readable images (data.strict is on), "
                f"first: {skipped[0]['file']}: {skipped[0]['reason']}"
            )
        for item in skipped[:20]:
            log.warning("skipped %s: %s", item["file"], item["reason"])
        if len(skipped) > 20:
            log.warning("... and %d more skipped files", len(skipped) - 20)
    main = splits.get("train", splits.get("all"))
    empty = [c for i, c in enumerate(tree.classes) if not (main[1] == i).any()]
    if empty:
        raise ClassiflowError(f"class(es) with no readable image: {', '.join(empty)}")
    return tree.classes, splits, all_gray, skipped


def _stratified(images: np.ndarray, labels: np.ndarray, fraction: float, seed: int, what: str):
    counts = np.bincount(labels)
    n_hold = int(round(len(labels) * fraction))
    n_classes = int((counts > 0).sum())
    if counts[counts > 0].min() < 2 or n_hold < n_classes or len(labels) - n_hold < n_classes:
        raise ClassiflowError(
            f"too few images to split off a stratified {what} set ({len(labels)} images, "
            f"smallest class {int(counts[counts > 0].min())}); add images or change data.{what}_fraction"
        )
    idx = np.arange(len(labels))
    keep, hold = train_test_split(idx, test_size=n_hold, stratify=labels, random_state=seed)
    keep, hold = np.sort(keep), np.sort(hold)
    return (images[keep], labels[keep]), (images[hold], labels[hold])


def _split(splits: dict[str, Split], params: DataParams) -> dict[str, Split]:
    if "all" in splits:
        rest, test = _stratified(*splits["all"], params.test_fraction, params.seed, "test")
        val_share = params.val_fraction / (1.0 - params.test_fraction)
        train, val = _stratified(*rest, val_share, params.seed, "val")
        return {"train": train, "val": val, "test": test}
    out = dict(splits)
    if "val" not in out:
        out["train"], out["val"] = _stratified(*splits["train"], params.val_fraction, params.seed, "val")
    if "test" not in out:
        out["train"], out["test"] = _stratified(*out["train"], params.test_fraction, params.seed, "test")
    return out


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean/std in [0, 1], accumulated in float64 chunks to bound memory."""
    c = images.shape[-1]
    total, sq, n = np.zeros(c), np.zeros(c), 0
    for start in range(0, len(images), 8192):
        x = images[start : start + 8192].reshape(-1, c).astype(np.float64) / 255.0
        total += x.sum(0)
        sq += (x * x).sum(0)
        n += len(x)
    mean = total / n
    std = np.sqrt(np.maximum(sq / n - mean * mean, 1e-12))
    return mean.round(6).tolist(), std.round(6).tolist()


def content_hash(splits: dict[str, Split], classes: list[str]) -> str:
    digest = hashlib.sha256(json.dumps(classes).encode())
    for name in SPLITS:
        images, labels = splits[name]
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(images).data)
        digest.update(np.ascontiguousarray(labels).data)
    return digest.hexdigest()


def prepare(raw_dir: Path, out_dir: Path, params: DataParams) -> dict:
    """Turn ``raw_dir`` (the download stage's output) into ``out_dir``; return its metadata."""
    manifest_path = raw_dir / MANIFEST
    if not manifest_path.exists():
        raise ClassiflowError(f"{raw_dir}: no {MANIFEST}; run the download stage first")
    manifest = read_json(manifest_path)
    size, skipped = params.image_size, []
    if manifest["kind"] == "builtin":
        classes, splits, gray = _load_builtin(manifest["name"], raw_dir, size)
    elif manifest["kind"] == "folder":
        classes, splits, gray, skipped = _load_tree(raw_dir / manifest["path"], size, params.strict)
    else:
        with tempfile.TemporaryDirectory(prefix=".extract-", dir=out_dir.parent) as tmp:
            archive.extract(raw_dir / manifest["path"], Path(tmp))
            classes, splits, gray, skipped = _load_tree(Path(tmp), size, params.strict)
    channels = params.channels if params.channels != "auto" else (1 if gray else 3)
    splits = {k: (imagefolder.to_channels(x, channels), y) for k, (x, y) in splits.items()}
    splits = _split(splits, params)
    mean, std = channel_stats(splits["train"][0])
    meta = {
        "format_version": FORMAT_VERSION,
        "dataset": manifest["name"],
        "source": manifest["source"],
        "source_sha256": manifest.get("sha256"),
        "classes": classes,
        "channels": channels,
        "image_size": size,
        "mean": mean,
        "std": std,
        "sizes": {k: int(len(splits[k][1])) for k in SPLITS},
        "class_counts": {k: np.bincount(splits[k][1], minlength=len(classes)).tolist() for k in SPLITS},
        "skipped_count": len(skipped),
        "skipped": skipped[:100],
        "data_hash": content_hash(splits, classes),
    }
    with atomic_dir(out_dir) as tmp:
        for name in SPLITS:
            np.save(tmp / f"{name}_images.npy", np.ascontiguousarray(splits[name][0]))
            np.save(tmp / f"{name}_labels.npy", splits[name][1])
        write_json(tmp / "meta.json", meta)
    return meta
