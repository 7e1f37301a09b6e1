"""The per-epoch resume point: everything needed to continue a killed run bit-for-bit.

The state is written atomically after every epoch, so a run killed at any moment leaves
either the previous epoch's state or the new one, never a torn file. A state is only
resumed by a run with the same fingerprint (params, data and augmentation policy).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from classiflow.atomic import atomic_path

STATE_FORMAT = 1


def fingerprint(*parts: object) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def save_state(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"format": STATE_FORMAT, **state}, tmp)


def load_state(path: Path | None, expected_fingerprint: str) -> dict | None:
    """The saved state if it belongs to this very run configuration, else None."""
    if path is None or not Path(path).exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - an unreadable resume point is simply not used
        return None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        return None
    if state.get("fingerprint") != expected_fingerprint:
        return None
    return state
