"""The prepare stage's data sanity report: class counts per split, exact duplicates, odd images.

Three things that quietly spoil a model and that a person rarely checks by hand: a class with far fewer images
than the others, the same image in train and test (the test score then measures memory), and a few images that
are not like the rest (a different size or a colour image among gray ones: a different camera, or a file that
does not belong). Each is a warning and a section of the stage's record (``records/prepare.json``); none stops
the stage, since each can be on purpose.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from pathlib import Path

import numpy as np

from classiflow.atomic import atomic_path

log = logging.getLogger("classiflow.prepare")
EXAMPLES = 10
Row = tuple[str, int]  # (split, row in the prepared split)


def row_hashes(block: np.ndarray) -> list[str]:
    """A content hash per image of ``block`` (N, H, W, C uint8): equal pixels, equal hash."""
    return [hashlib.blake2b(np.ascontiguousarray(img).data, digest_size=16).hexdigest() for img in block]


def duplicates(hashes: dict[str, list[str]], names: dict[str, list[str]] | None = None) -> dict:
    """Images identical after decoding and resizing: copies within a split, and images of val or test that are
    also in an earlier split (train, then val). ``names`` (the files, where known) make the examples readable."""
    first: dict[str, Row] = {}
    within, across = Counter(), Counter()
    examples: list[dict] = []
    for split, keys in hashes.items():
        for row, key in enumerate(keys):
            seen = first.get(key)
            if seen is None:
                first[key] = (split, row)
                continue
            (within if seen[0] == split else across)[split if seen[0] == split else f"{seen[0]}-{split}"] += 1
            if len(examples) < EXAMPLES:
                examples.append({"first": _name(seen, names), "copy": _name((split, row), names)})
    found = {"within": dict(within), "across": dict(across), "examples": examples}
    if within or across:
        log.warning(
            "prepare: %d duplicate image(s) within splits %s and %d across splits %s (first: %s = %s)",
            sum(within.values()), dict(within), sum(across.values()), dict(across),
            examples[0]["first"], examples[0]["copy"],
        )  # fmt: skip
    return found


def _name(row: Row, names: dict[str, list[str]] | None) -> str:
    split, index = row
    return names[split][index] if names and split in names else f"{split}[{index}]"


def odd_images(sizes: np.ndarray, gray: np.ndarray, files: list[str]) -> dict:
    """Images whose source size or channel count differs from the most common one."""
    out: dict = {}
    if len(sizes):
        common_size = Counter(map(tuple, sizes.tolist())).most_common(1)[0][0]
        other = np.flatnonzero((sizes != np.asarray(common_size)).any(axis=1))
        out["size"] = {
            "common": list(common_size),
            "others": int(len(other)),
            "distinct": len({tuple(s) for s in sizes.tolist()}),
            "examples": [{"file": files[i], "size": sizes[i].tolist()} for i in other[:EXAMPLES]],
        }
        minority = gray if gray.mean() < 0.5 else ~gray
        rows = np.flatnonzero(minority)
        out["channels"] = {
            "common": "gray" if gray.mean() >= 0.5 else "colour",
            "others": int(len(rows)),
            "examples": [files[i] for i in rows[:EXAMPLES]],
        }
        if len(rows):
            common = out["channels"]["common"]
            log.warning(
                "prepare: %d %s image(s) among %s ones (first: %s)",
                len(rows), "colour" if common == "gray" else "gray", common, files[rows[0]],
            )  # fmt: skip
        if len(other):
            log.warning(
                "prepare: %d image(s) not %dx%d like the rest (first: %s, %dx%d)",
                len(other), *common_size, files[other[0]], *sizes[other[0]].tolist(),
            )  # fmt: skip
    return out


def class_balance(counts: dict[str, list[int]], classes: list[str]) -> dict:
    """Per split, the smallest class and its share of the largest; warns below one in five."""
    out = {}
    for split, values in counts.items():
        if not values or max(values) == 0:
            continue
        low = int(np.argmin(values))
        ratio = values[low] / max(values)
        out[split] = {"smallest": classes[low], "ratio_to_largest": round(ratio, 4)}
        if ratio < 0.2:
            log.warning(
                "prepare: %s: class %s has %d images, %.0f%% of the largest (consider train.class_weights or "
                "train.sampler: balanced)", split, classes[low], values[low], 100 * ratio,
            )  # fmt: skip
    return out


def plot_class_counts(path: Path, counts: dict[str, list[int]], classes: list[str]) -> None:
    """Grouped bars: images per class in each split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = [s for s in counts if sum(counts[s])]
    width = 0.8 / max(len(splits), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(classes) + 3), 4.5))
    x = np.arange(len(classes))
    for i, split in enumerate(splits):
        bars = ax.bar(x + (i - (len(splits) - 1) / 2) * width, counts[split], width, label=split)
        if len(classes) <= 20:
            ax.bar_label(bars, fontsize=7)
    ax.set_xticks(x, classes, rotation=45 if len(classes) > 6 else 0, ha="right" if len(classes) > 6 else "center")
    ax.set_ylabel("images")
    ax.set_title("images per class and split")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
