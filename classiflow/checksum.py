"""SHA-256 of files: data archives (``data.sha256``) and pretrained weights (``model.pretrained_sha256``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from classiflow.errors import ClassiflowError


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str | None, key: str = "data.sha256") -> str:
    actual = sha256_file(path)
    if expected and actual.lower() != expected.lower():
        raise ClassiflowError(
            f"{path.name}: sha256 mismatch (expected {expected.lower()}, got {actual}); "
            f"the file is corrupt or not the one {key} names"
        )
    return actual
