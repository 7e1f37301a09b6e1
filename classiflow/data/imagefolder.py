"""Decoding the images of an image-folder tree (``classiflow.data.tree``) into uint8 arrays.

Images are opened only as PNG, JPEG, BMP or WebP and decoded in parallel processes straight into
arrays the caller owns (memory-mapped files for a large set: decoding never holds the set twice), from
files on disk or from an archive's members as it is read; a file that is not such an image is skipped
with a warning (or fails the run in strict mode).
"""

from __future__ import annotations

import io
import os
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from classiflow.cpu import usable_cores
from classiflow.data.mapped import release_pages
from classiflow.data.resize import fit_square
from classiflow.data.tree import Tree, scan_names
from classiflow.errors import ClassiflowError
from classiflow.progress import task_progress

ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "WEBP")
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
MAX_PIXELS = 64_000_000
CHUNK = 512  # images per job of a decoding process


class TooManyPixels(ValueError):
    """The header declares more pixels than the limit: refused before decoding."""


@dataclass
class Decoded:
    """What :func:`decode_splits` found for one split; the pixels themselves are in the array it was given."""

    ok: np.ndarray  # N bool: decoded (the others were skipped and their rows are zero)
    gray: np.ndarray  # N bool: the source image had one channel
    skipped: list[dict] = field(default_factory=list)
    sizes: np.ndarray | None = None  # N,2 int: each source image's width and height before resizing


def scan(root: Path) -> Tree:
    """The layout of a folder on disk; the tree's paths are relative to ``root``."""
    files, dirs = [], []
    for folder, subdirs, names in os.walk(root):
        rel = Path(folder).relative_to(root).as_posix()
        prefix = "" if rel == "." else f"{rel}/"
        dirs += [prefix + d for d in subdirs]
        files += [prefix + f for f in names if (Path(folder) / f).is_file()]
    return scan_names(files, dirs, str(root))


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
# split, row, name in reports, and the file or its content (None: too large to read)
Item = tuple[str, int, str, "Path | bytes | None"]


def _decode_one(source: Path | bytes | None, size: int, resize: str) -> tuple[np.ndarray, bool, tuple[int, int]]:
    if source is None:
        raise ValueError("file too large to be an image")
    if isinstance(source, Path):
        return decode_file(source, size, resize)
    try:
        with Image.open(io.BytesIO(source), formats=ALLOWED_FORMATS) as img:
            return (*decode_pil(img, size, resize=resize), img.size)
    except UnidentifiedImageError:
        raise ValueError(f"cannot identify image file (not {', '.join(ALLOWED_FORMATS)})") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(str(err) or type(err).__name__) from None


def _decode_chunk(args: tuple[list[Item], int, str]) -> list[tuple[str, int, str, Decode]]:
    items, size, resize = args
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        for split, row, name, source in items:
            try:
                arr, gray, dims = _decode_one(source, size, resize)
                out.append((split, row, name, (arr, gray, None, dims)))
            except (ValueError, Image.DecompressionBombWarning) as err:
                out.append((split, row, name, (None, False, str(err), (0, 0))))
    return out


def _chunks(items: Iterable[Item]) -> Iterator[list[Item]]:
    it = iter(items)
    while chunk := list(islice(it, CHUNK)):
        yield chunk


def _run(jobs: Iterator[tuple], workers: int) -> Iterator[list]:
    """Decode the jobs in ``workers`` processes, at most two jobs per process in flight (memory stays flat
    while an archive is read faster than it decodes); results in job order."""
    if workers <= 1:
        yield from map(_decode_chunk, jobs)
        return
    with ProcessPoolExecutor(workers) as pool:
        pending: deque = deque()
        for job in jobs:
            pending.append(pool.submit(_decode_chunk, job))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def decode_splits(
    items: Iterable[Item], outs: dict[str, np.ndarray], resize: str = "squash", workers: int | None = None
) -> dict[str, Decoded]:
    """Decode each item into row ``row`` of ``outs[split]`` (N, size, size, 3 uint8); items may come in any order
    (an archive's), skipped files are reported in row order."""
    workers = workers or usable_cores()
    size = next(iter(outs.values())).shape[1]
    found = {
        k: Decoded(np.zeros(len(o), bool), np.zeros(len(o), bool), [], np.zeros((len(o), 2), np.int32))
        for k, o in outs.items()
    }
    failed: dict[str, list] = {k: [] for k in outs}
    arrived = 0
    with task_progress() as progress:
        task = progress.add_task("decode", total=sum(len(o) for o in outs.values()), status="")
        for decoded in _run(((chunk, size, resize) for chunk in _chunks(items)), workers):
            arrived += len(decoded)
            for split, row, name, (arr, is_gray, error, dims) in decoded:
                if error is not None:
                    failed[split].append((row, {"file": name, "reason": error}))
                    continue
                d = found[split]
                outs[split][row], d.ok[row], d.gray[row], d.sizes[row] = arr, True, is_gray, dims
            for out in outs.values():
                release_pages(out)
            progress.update(task, advance=len(decoded), status=f"{sum(map(len, failed.values()))} skipped")
    expected = sum(len(o) for o in outs.values())
    if arrived != expected:
        raise ClassiflowError(
            f"{expected - arrived} of {expected} listed files did not arrive when read (the source changed?)"
        )
    for split, rows in failed.items():
        found[split].skipped = [item for _, item in sorted(rows, key=lambda r: r[0])]
    return found
