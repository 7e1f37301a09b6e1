"""On-disk cache of features and codebooks, keyed by what produced them.

Keys hash the input arrays' bytes together with the feature parameters (and the library
versions that compute them), never the classifier's, so tuning C or the kernel reuses the
expensive descriptors. Files are ``.npz`` written by rename and read without pickle.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import cv2
import numpy as np
import skimage

from classiflow.atomic import atomic_path

# Bump when the feature code changes what it computes, to retire old cache files.
FEATURE_VERSION = 1


def array_digest(array: np.ndarray) -> str:
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def cache_key(kind: str, **parts) -> str:
    record = {
        "kind": kind,
        "version": FEATURE_VERSION,
        "opencv": cv2.__version__,
        "skimage": skimage.__version__,
        **parts,
    }
    return f"{kind}-{hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:32]}"


class FeatureCache:
    """A directory of ``<key>.npz`` files; ``None`` turns caching off (benchmarks, tests)."""

    def __init__(self, directory: str | Path | None):
        self.directory = Path(directory) if directory is not None else None

    def path(self, key: str) -> Path | None:
        return self.directory / f"{key}.npz" if self.directory is not None else None

    def load(self, key: str) -> dict[str, np.ndarray] | None:
        path = self.path(key)
        if path is None or not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                return {name: data[name] for name in data.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError):
            return None  # a damaged entry is recomputed and replaced

    def save(self, key: str, **arrays: np.ndarray) -> None:
        path = self.path(key)
        if path is None:
            return
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
