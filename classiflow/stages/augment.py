"""Augment stage: resolve the augmentation policy, preview it, and optionally materialise copies.

Resolving includes ``augment.flip: auto``, decided from the train and validation images
(``classiflow.augment.flip``); ``policy.json`` holds the resolved settings, which the train and prune stages
train with, and the decision with its numbers.

Writes ``data/augmented`` as a whole (``policy.json`` plus, when ``augment.copies`` > 0,
``train_copy{k}_images.npy`` / ``train_copy{k}_labels.npy``) through a temporary directory,
so a later stage never sees a half-written one, and ``reports/augment_preview.png``.
MixUp/CutMix are never materialised: they mix pairs of a shuffled training batch, so the
training loop applies them on each normalised batch.
"""

from __future__ import annotations

import logging
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

from classiflow.atomic import atomic_dir, write_json
from classiflow.augment.batch import BatchAugment, build_augment
from classiflow.augment.copies import POLICY_FILE, copy_files, copy_seed
from classiflow.augment.flip import resolve_flip
from classiflow.augment.preview import write_preview
from classiflow.config import Params
from classiflow.data.mapped import release_pages
from classiflow.data.prepared import load_prepared
from classiflow.layout import Layout
from classiflow.progress import task_progress
from classiflow.stages.result import NO_REPORT, Report, StageResult
from classiflow.tensors import to_nchw

log = logging.getLogger("classiflow.augment")
FORMAT_VERSION = 1
BATCH = 512  # copies are augmented in batches of this size (part of what a seed reproduces)
THROUGHPUT_IMAGES = 4096


def measure_throughput(augment: BatchAugment, x: torch.Tensor, seed: int, limit: int = THROUGHPUT_IMAGES) -> float:
    """Images per second of ``augment.images`` on up to ``limit`` images of ``x``, in batches of :data:`BATCH`."""
    x = x[:limit].contiguous()
    if len(x) == 0:
        return 0.0
    generator = torch.Generator().manual_seed(seed)
    augment.images(x[: min(len(x), 64)], generator)  # warm-up: first-call allocations, lazy imports
    start = time.perf_counter()
    for s in range(0, len(x), BATCH):
        augment.images(x[s : s + BATCH], generator)
    return len(x) / max(time.perf_counter() - start, 1e-9)


def _augment_copy(augment: BatchAugment, x: torch.Tensor, seed: int, out: np.ndarray, advance, source=None) -> None:
    """Fill ``out`` with an augmented copy of ``x``; the pages read from ``source`` (the memory-mapped split
    behind ``x``, if it is one) and written to ``out`` are handed back as it goes."""
    generator = torch.Generator().manual_seed(seed)
    for s in range(0, len(x), BATCH):
        batch = augment.images(x[s : s + BATCH].contiguous(), generator)
        out[s : s + len(batch)] = batch.permute(0, 2, 3, 1).numpy()
        release_pages(source)
        release_pages(out)
        advance(len(batch))


def run(layout: Layout, params: Params, report: Report = NO_REPORT) -> StageResult:
    data = load_prepared(layout.prepared, ("train", "val"))
    cfg, flip = resolve_flip(params.augment, data)
    log.info("augment: flip %s: %s", "on" if cfg.flip else "off", flip.reason)
    images, labels = data.images["train"], data.labels["train"]
    augment = build_augment(cfg, len(data.classes), channels=data.channels, image_size=data.image_size)
    transforms = augment.describe()
    n = len(labels)

    _preview(layout, augment, cfg.seed, cfg.preview, data)
    images_per_second = measure_throughput(augment, to_nchw(images), cfg.seed)
    if cfg.copies and not augment.has_image_ops:
        log.warning("augment.copies=%d with no image transform: the copies equal the train split", cfg.copies)

    seeds = [copy_seed(cfg.seed, k) for k in range(cfg.copies)]
    policy = {
        "format_version": FORMAT_VERSION,
        "params": cfg.model_dump(),
        "flip": flip.as_dict(),
        "transforms": transforms,
        "mix": {
            "kind": augment.mix_kind,
            "alpha": augment.mix_alpha if augment.has_mix else None,
            "materialised": False,
            "note": "MixUp/CutMix are applied by the training loop to each normalised batch, never to the copies",
        },
        "dataset": data.meta.get("dataset"),
        "data_hash": data.data_hash,
        "train_images": n,
        "image_size": data.image_size,
        "channels": data.channels,
        "copies": cfg.copies,
        "copy_files": [list(copy_files(k)) for k in range(cfg.copies)],
        "copy_seeds": seeds,
        "copy_batch_size": BATCH,
    }
    with atomic_dir(layout.augmented) as tmp:
        if cfg.copies:
            _write_copies(tmp, augment, images, labels, seeds)
        write_json(tmp / POLICY_FILE, policy)
    summary = {
        "transforms": transforms,
        "flip": flip.as_dict(),
        "copies": cfg.copies,
        "preview": str(layout.augment_preview),
        "policy": str(layout.augment_policy),
        "images_per_second": images_per_second,
        "train_images": n,
        "data_hash": data.data_hash,
    }
    return _result(layout, summary)


def _preview(layout: Layout, augment: BatchAugment, seed: int, count: int, data) -> None:
    """A grid of ``count`` augmented train images, titled with the transforms (the mix is not drawn)."""
    images, labels = to_nchw(data.images["train"]), data.labels["train"]
    generator = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(labels), generator=generator)[:count].sort().values
    shown = augment.images(images[idx], generator).permute(0, 2, 3, 1).numpy()
    title = f"{data.meta.get('dataset', 'train split')}: " + ("; ".join(augment.describe()) or "no augmentation")
    if augment.has_mix:
        title += " (mix not shown: it applies to normalised training batches)"
    write_preview(layout.augment_preview, shown, labels[idx.numpy()], data.classes, textwrap.fill(title, 110))


def _write_copies(tmp: Path, augment: BatchAugment, source: np.ndarray, labels: np.ndarray, seeds: list) -> None:
    """One augmented copy of the train split per seed, written as memory-mapped uint8 arrays (NHWC)."""
    x, shape = to_nchw(source), source.shape
    with task_progress() as progress:
        task = progress.add_task("augment copies", total=len(seeds) * len(labels), status="")
        for k, seed in enumerate(seeds):
            progress.update(task, status=f"copy {k + 1}/{len(seeds)}")
            image_file, label_file = copy_files(k)
            out = np.lib.format.open_memmap(tmp / image_file, mode="w+", dtype=np.uint8, shape=shape)
            _augment_copy(augment, x, seed, out, lambda m: progress.advance(task, m), source)
            out.flush()
            del out
            np.save(tmp / label_file, labels)


def _result(layout: Layout, summary: dict) -> StageResult:
    return StageResult(
        summary,
        params={"augment.flip_resolved": summary["flip"]["flip"]},
        metrics={"augment_images_per_second": summary["images_per_second"]},
        tags={"augment.flip_reason": summary["flip"]["reason"]},
        artifacts={layout.augment_policy: "", layout.augment_preview: ""},
        summary=[f"augment: {', '.join(summary['transforms']) or 'none'}; {summary['copies']} materialised copies"],
    )
