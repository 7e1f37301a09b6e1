"""Reading ``<root>/[train|val|test/]<class>/<image>`` trees into uint8 arrays.

Images are opened only as PNG, JPEG, BMP or WebP and decoded in parallel processes straight into
an array the caller owns (a memory-mapped file for a large set: decoding never holds the set twice);
a file that is not such an image is skipped with a warning (or fails the run in strict mode).
"""

from __future__ import annotations

import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from classiflow.cpu import usable_cores
from classiflow.data.mapped import release_pages
from classiflow.data.resize import fit_square
from classiflow.errors import ClassiflowError
from classiflow.progress import task_progress

ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "WEBP")
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
MAX_PIXELS = 64_000_000


class TooManyPixels(ValueError):
    """The header declares more pixels than the limit: refused before decoding."""


@dataclass
class Samples:
    paths: list[Path]
    labels: list[int]


@dataclass
class Tree:
    classes: list[str]
    splits: dict[str, Samples]  # "all" when the tree has no split folders
    root: Path | None = None  # the folder the split (or class) folders are in

    def relative(self, split: str) -> list[str]:
        """The split's files as paths inside the data set (``train/ok/1.png``), for ``data.group_by``."""
        return [p.relative_to(self.root).as_posix() for p in self.splits[split].paths]


@dataclass
class Decoded:
    """What :func:`decode_into` found; the pixels themselves are in the array it was given."""

    ok: np.ndarray  # N bool: decoded (the others were skipped and their rows are zero)
    gray: np.ndarray  # N bool: the source image had one channel
    skipped: list[dict] = field(default_factory=list)
    sizes: np.ndarray | None = None  # N,2 int: each source image's width and height before resizing


def _visible_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))


def _visible_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))


def _unwrap(root: Path) -> Path:
    """Archives often wrap the tree in one top folder: step into it."""
    while True:
        dirs, files = _visible_dirs(root), _visible_files(root)
        if len(dirs) == 1 and not files and dirs[0].name.lower() not in SPLIT_NAMES:
            root = dirs[0]
        else:
            return root


def _class_files(split_root: Path) -> dict[str, list[Path]]:
    classes = {}
    for d in _visible_dirs(split_root):
        files = sorted(p for p in d.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise ClassiflowError(f"class folder {d} holds no images")
        classes[d.name] = files
    return classes


def scan(root: Path) -> Tree:
    root = _unwrap(root)
    split_dirs = {SPLIT_NAMES[d.name.lower()]: d for d in _visible_dirs(root) if d.name.lower() in SPLIT_NAMES}
    if "train" in split_dirs:
        by_split = {name: _class_files(d) for name, d in split_dirs.items()}
    else:
        by_split = {"all": _class_files(root)}
    main = by_split.get("train", by_split.get("all"))
    classes = sorted(main)
    if len(classes) < 2:
        raise ClassiflowError(
            f"{root}: found {len(classes)} class folder(s) ({', '.join(classes) or 'none'}); "
            "a classifier needs at least two"
        )
    index = {c: i for i, c in enumerate(classes)}
    splits = {}
    for name, files_by_class in by_split.items():
        unknown = sorted(set(files_by_class) - set(classes))
        if unknown:
            raise ClassiflowError(f"{name} split has classes missing from train: {', '.join(unknown)}")
        paths, labels = [], []
        for cls in sorted(files_by_class):
            paths += files_by_class[cls]
            labels += [index[cls]] * len(files_by_class[cls])
        splits[name] = Samples(paths, labels)
    return Tree(classes, splits, root)


def decode_pil(
    img: Image.Image, size: int, max_pixels: int = MAX_PIXELS, resize: str = "squash"
) -> tuple[np.ndarray, bool]:
    """An opened image -> ``size``x``size`` RGB uint8 (fitted by the ``resize`` policy) and whether it had one channel.

    Shared by training (``decode_image``) and serving (``classiflow.serving.images``) so that a served image
    gets exactly the pixels training would have seen. The pixel count is checked before ``load``: the header
    alone says how big the decoded image would be. Raises ``TooManyPixels``, another ``ValueError`` or PIL's own
    errors.
    """
    if img.width * img.height > max_pixels:
        raise TooManyPixels(f"{img.width}x{img.height} pixels is over the {max_pixels} limit")
    img.load()
    gray = img.mode in GRAY_MODES
    if img.mode in ("I", "I;16", "F"):
        wide = np.asarray(img, dtype=np.float64)
        scale = 257.0 if wide.max() > 255 else 1.0
        img = Image.fromarray((wide / scale).clip(0, 255).astype(np.uint8))
    return np.asarray(fit_square(img.convert("RGB"), size, resize), dtype=np.uint8), gray


def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """N,H,W,C uint8 -> N,H,W,``channels``: ITU-R 601 luminance for one channel, repetition for three."""
    if images.shape[-1] == channels:
        return images
    if channels == 1:
        weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return (images.astype(np.float32) @ weights).round().clip(0, 255).astype(np.uint8)[..., None]
    return np.repeat(images, 3, axis=-1)


def decode_file(path: Path, size: int, resize: str = "squash") -> tuple[np.ndarray, bool, tuple[int, int]]:
    """Decode one image to ``size``x``size`` RGB uint8, with whether it was gray and its own (width, height);
    raise ``ValueError`` if it is no image."""
    try:
        with Image.open(path, formats=ALLOWED_FORMATS) as img:
            return (*decode_pil(img, size, resize=resize), img.size)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(str(err) or type(err).__name__) from None


def decode_image(path: Path, size: int, resize: str = "squash") -> tuple[np.ndarray, bool]:
    arr, gray, _ = decode_file(path, size, resize)
    return arr, gray


Decode = tuple[np.ndarray | None, bool, str | None, tuple[int, int]]  # pixels, gray, error, source size


def _decode_chunk(args: tuple[list[str], int, str]) -> list[Decode]:
    paths, size, resize = args
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        for p in paths:
            try:
                arr, gray, dims = decode_file(Path(p), size, resize)
                out.append((arr, gray, None, dims))
            except (ValueError, Image.DecompressionBombWarning) as err:
                out.append((None, False, str(err), (0, 0)))
    return out


def decode_into(
    samples: Samples, out: np.ndarray, label: str, resize: str = "squash", workers: int | None = None
) -> Decoded:
    """Decode every sample into row i of ``out`` (N, size, size, 3 uint8, N = len(samples.paths))."""
    workers = workers or usable_cores()
    size, chunk = out.shape[1], 512
    starts = range(0, len(samples.paths), chunk)
    jobs = [([str(p) for p in samples.paths[i : i + chunk]], size, resize) for i in starts]
    ok, gray = np.zeros(len(samples.paths), bool), np.zeros(len(samples.paths), bool)
    sizes = np.zeros((len(samples.paths), 2), np.int32)
    skipped = []
    with task_progress() as progress:
        task = progress.add_task(f"decode {label}", total=len(samples.paths), status="")
        pool = ProcessPoolExecutor(workers) if workers > 1 and len(jobs) > 1 else None
        try:
            results = pool.map(_decode_chunk, jobs) if pool else map(_decode_chunk, jobs)
            for start, decoded in zip(starts, results, strict=True):
                for i, (arr, is_gray, error, dims) in enumerate(decoded, start):
                    if error is not None:
                        skipped.append({"file": str(samples.paths[i]), "reason": error})
                        continue
                    out[i], ok[i], gray[i], sizes[i] = arr, True, is_gray, dims
                release_pages(out)
                progress.update(task, advance=len(decoded), status=f"{len(skipped)} skipped")
        finally:
            if pool:
                pool.shutdown()
    return Decoded(ok, gray, skipped, sizes)
