"""Leak-free splits: every image of one group (a board, a patient, a production lot) in one split.

Crops of one board photographed once are near copies of each other; a random split puts some in train and some
in validation, and validation then measures memory, not generalisation. ``data.group_by`` names the groups: a
regular expression searched in each file's path inside the data set (``train/short/00041000_3.png``; the first
capture group is the key, or the whole match), or a CSV file with ``file,group`` rows. Hold-out splits are then
cut with scikit-learn's ``StratifiedGroupKFold`` (class shares kept as far as whole groups allow).
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from classiflow.errors import ClassiflowError

log = logging.getLogger("classiflow.prepare")


def _from_csv(path: Path) -> dict[str, str]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ClassiflowError(f"data.group_by: {path}: not readable ({err})") from None
    if not rows or not {"file", "group"} <= set(rows[0]):
        raise ClassiflowError(f"data.group_by: {path}: expected a CSV with the columns file,group")
    return {r["file"]: r["group"] for r in rows}


def _compile(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as err:
        raise ClassiflowError(f"data.group_by: {pattern!r} is not a regular expression ({err})") from None


def group_keys(relative: list[str], setting: str, project: Path) -> np.ndarray:
    """One group key per file (``relative``: paths inside the data set, with ``/``). A file that the pattern or
    the CSV does not cover is a group of its own (counted in a warning); none covered, or only one group, is an
    error: the setting would not do what it says."""
    table_path = project / setting
    if setting.endswith(".csv") and table_path.is_file():
        table = _from_csv(table_path)
        found = [table.get(p, table.get(p.rsplit("/", 1)[-1])) for p in relative]
        what = f"{setting} (file,group rows)"
    else:
        regex = _compile(setting)
        matches = [regex.search(p) for p in relative]
        found = [None if m is None else (m.group(1) if regex.groups else m.group(0)) for m in matches]
        what = f"the pattern {setting!r}"
    missing = [p for p, key in zip(relative, found, strict=True) if key is None]
    if len(missing) == len(relative):
        raise ClassiflowError(f"data.group_by: {what} matches no file (first file: {relative[0]})")
    if missing:
        log.warning("data.group_by: %d file(s) not matched, each its own group (first: %s)", len(missing), missing[0])
    keys = np.array([f"\0{p}" if key is None else key for p, key in zip(relative, found, strict=True)], dtype=object)
    if len(set(keys)) < 2:
        raise ClassiflowError(f"data.group_by: {what} puts every file in one group ({keys[0]!r}); nothing to split")
    return keys


def grouped_holdout(rows: np.ndarray, labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int, what: str):
    """Like a stratified hold-out of ``fraction`` of ``rows``, but whole groups at a time; both parts in order."""
    y, g = labels[rows], groups[rows]
    n_groups = len(set(g))
    folds = max(2, min(round(1 / fraction), n_groups))
    if n_groups < 2:
        raise ClassiflowError(f"data.group_by: the rows left for the {what} split form one group; nothing to split")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    keep, hold = next(splitter.split(np.zeros(len(y)), y, g))
    missing = sorted(set(y.tolist()) - set(y[hold].tolist()))
    if missing:
        log.warning("data.group_by: the %s split has no image of class index(es) %s (groups too few)", what, missing)
    return rows[np.sort(keep)], rows[np.sort(hold)]


def crossing(groups_by_split: dict[str, np.ndarray]) -> list[str]:
    """Group keys found in more than one split (only possible where the source itself fixed the splits)."""
    seen: dict[str, set[str]] = {}
    for split, keys in groups_by_split.items():
        for key in set(keys.tolist()):
            seen.setdefault(key, set()).add(split)
    return sorted(k for k, splits in seen.items() if len(splits) > 1)


def summarize(keys: dict[str, np.ndarray]) -> dict:
    """How many groups each split holds, and the groups that the source's own split folders put in two splits."""
    crossed = crossing(keys)
    if crossed:
        log.warning(
            "data.group_by: %d group(s) span the source's own split folders (first: %s); those splits are used "
            "as they are", len(crossed), crossed[0],
        )  # fmt: skip
    return {
        "counts": {name: len(set(k.tolist())) for name, k in keys.items()},
        "crossing": len(crossed),
        "crossing_examples": crossed[:20],
    }
