"""Batch prediction over files and folders: the part ``classiflow predict`` and ``batch-predict-flow`` share.

Every file is decoded exactly as the server decodes an upload (``classiflow.serving.images.decode``),
so a folder gets the predictions the API would give. A file that cannot be read or decoded becomes a
row with an ``error`` and no prediction: one corrupt file in ten thousand must not cost the others.
Folders are walked recursively and only image suffixes are taken (a README or a ``.DS_Store`` in the
folder is skipped and counted, not reported as a failure); a file named explicitly is always tried.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from classiflow.atomic import atomic_path
from classiflow.errors import ClassiflowError
from classiflow.serving.images import DEFAULT_MAX_PIXELS, decode

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass(frozen=True)
class Inputs:
    files: list[Path]
    skipped: list[Path]  # files inside the folders whose suffix is not an image's


@dataclass
class Row:
    path: str
    probabilities: np.ndarray | None = None  # (K,) float32, None when the file failed
    error: str | None = None
    decision: str = ""  # the model's answer (a class, or "uncertain" under its operating point)


@dataclass(frozen=True)
class Summary:
    images: int  # predicted
    failed: int  # could not be read or decoded
    skipped: int  # not an image suffix, inside a folder
    counts: dict[str, int] = field(default_factory=dict)  # predicted class -> images, every class

    @property
    def shares(self) -> dict[str, float]:
        return {c: (n / self.images if self.images else 0.0) for c, n in self.counts.items()}


def collect(paths: Iterable[str | Path]) -> Inputs:
    """Image files under ``paths`` (recursively, sorted), each once; a path that does not exist is an error."""
    files: list[Path] = []
    skipped: list[Path] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            files.append(path)

    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                if child.suffix.lower() in IMAGE_SUFFIXES:
                    add(child)
                else:
                    skipped.append(child)
        elif path.is_file():
            add(path)
        else:
            raise ClassiflowError(f"{raw}: no such file or directory")
    return Inputs(files, [p for p in skipped if p.resolve() not in seen])  # named explicitly: tried, not skipped


def _read(path: Path, model, max_pixels: int) -> np.ndarray:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ClassiflowError(f"cannot read the file ({err.strerror or err})") from None
    return decode(data, model.image_size, model.channels, max_pixels, model.resize)


def predict_files(
    model,
    files: Sequence[Path],
    batch_size: int = 64,
    on_batch: Callable[[int, int], None] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> list[Row]:
    """One row per file, in order. ``model`` is a ``LoadedModel``; ``on_batch(done, failed)`` reports progress."""
    if batch_size < 1:
        raise ClassiflowError(f"batch size must be at least 1, got {batch_size}")
    rows: list[Row] = []
    for start in range(0, len(files), batch_size):
        chunk = [Row(str(p)) for p in files[start : start + batch_size]]
        arrays, good = [], []
        for path, row in zip(files[start : start + batch_size], chunk, strict=True):
            try:
                arrays.append(_read(path, model, max_pixels))
                good.append(row)
            except Exception as err:  # noqa: BLE001 - one bad file becomes its row's error, never a crash
                row.error = str(err) if isinstance(err, ClassiflowError) else f"{type(err).__name__}: {err}"
        if arrays:
            probabilities = np.asarray(model.predict(np.stack(arrays)), dtype=np.float32)
            for row, p, answer in zip(good, probabilities, model.decide(probabilities), strict=True):
                row.probabilities, row.decision = p, answer
        rows += chunk
        if on_batch is not None:
            on_batch(len(chunk), sum(r.error is not None for r in chunk))
    return rows


def describe_model(name: str, version: str) -> str:
    """``classiflow-cifar10 version 3``, or ``the model in /path`` for a local directory."""
    return f"the model in {version}" if name == "local" else f"{name} version {version}"


def summarize(rows: Sequence[Row], classes: Sequence[str], skipped: int = 0) -> Summary:
    counts = dict.fromkeys(classes, 0)
    for row in rows:
        if row.probabilities is not None:
            answer = row.decision or classes[int(np.argmax(row.probabilities))]
            counts[answer] = counts.get(answer, 0) + 1
    failed = sum(r.probabilities is None for r in rows)
    return Summary(len(rows) - failed, failed, skipped, counts)


def header(classes: Sequence[str], top_k: int = 1) -> list[str]:
    """path, predicted, probability, [top2, top2_probability, ...], prob_<class> per class, decision, error."""
    ranks = [col for k in range(2, min(top_k, len(classes)) + 1) for col in (f"top{k}", f"top{k}_probability")]
    return ["path", "predicted", "probability", *ranks, *(f"prob_{c}" for c in classes), "decision", "error"]


def table(rows: Sequence[Row], classes: Sequence[str], top_k: int = 1) -> list[list[str]]:
    k = max(1, min(top_k, len(classes)))
    out = []
    for row in rows:
        if row.probabilities is None:
            out.append([row.path, "", "", *[""] * (2 * (k - 1) + len(classes)), "", row.error or ""])
            continue
        p = row.probabilities
        order = np.argsort(-p, kind="stable")[:k]
        ranked = [v for i in order[1:] for v in (classes[i], f"{p[i]:.6f}")]
        out.append(
            [row.path, classes[order[0]], f"{p[order[0]]:.6f}", *ranked, *(f"{v:.6f}" for v in p), row.decision, ""]
        )
    return out


def write_csv(path: str | Path, rows: Sequence[Row], classes: Sequence[str], top_k: int = 1) -> Path:
    """Write the predictions atomically: a reader never sees half a file."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(header(classes, top_k))
            writer.writerows(table(rows, classes, top_k))
    return path
