"""Memory-mapped split arrays: read as they are needed, their pages handed back as the reader moves on.

Pages of a mapped file that a process has touched count as its resident memory until it unmaps them, so a
pass over a 7.5 GB split would show 7.5 GB resident although the kernel could drop them at any time.
:func:`release_pages` unmaps them (the page cache keeps them, and written pages of a shared mapping still
reach the file), so the resident memory of a pass stays at what it holds at once.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np

MAP_ABOVE_BYTES = 512 << 20  # larger splits are memory-mapped (CIFAR-10 at 32x32: 138 MB, read whole)


def load_split(path: Path, mapped: bool | None = None) -> np.ndarray:
    """``np.load`` of a split's array: into memory, or memory-mapped (copy-on-write: torch may wrap it
    without a read-only warning, and nothing it does reaches the file) when over :data:`MAP_ABOVE_BYTES`
    or when ``mapped`` says so."""
    array = np.load(path, mmap_mode="c", allow_pickle=False)
    if mapped is None:
        mapped = array.nbytes > MAP_ABOVE_BYTES
    if mapped:
        return array
    del array  # read, not copied from the mapping: its pages would count twice until it is gone
    return np.load(path, allow_pickle=False)


def is_mapped(array: object) -> bool:
    return isinstance(array, np.memmap)


def release_pages(array: object) -> None:
    """Unmap the pages of a memory-mapped array from this process; a no-op for anything else."""
    handle = getattr(array, "_mmap", None) if is_mapped(array) else None
    if handle is not None and hasattr(mmap, "MADV_DONTNEED"):
        handle.madvise(mmap.MADV_DONTNEED)
