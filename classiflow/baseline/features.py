"""Feature extraction for whole splits: parallel chunks across cores, cached on disk.

Each joblib task gets a chunk of up to a few hundred images rather than one image, so the
cost of shipping arrays to worker processes stays small next to the SIFT or HOG work.
Chunk sizes depend on the image count only, never on ``n_jobs``: the codebook sample, and
so the cached features, are the same however many cores computed them. Dense
SIFT descriptors are turned into histograms inside the workers: the descriptors of a
whole split (hundreds of millions of numbers for CIFAR-10) never exist in memory at once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed

from classiflow.baseline import bovw
from classiflow.baseline.cache import FeatureCache, array_digest, cache_key
from classiflow.baseline.descriptors import (
    check_image_size,
    dense_grid,
    hog_vector,
    new_sift,
    sift_descriptors,
    single_threaded,
)
from classiflow.baseline.params import BaselineParams
from classiflow.progress import task_progress

MAX_CHUNK = 256
# The codebook sample is spread over many images, at most this many descriptors from each
# on average, so that a few busy images do not dominate the visual words.
_SAMPLE_PER_IMAGE = 20


@dataclass(frozen=True)
class Features:
    matrix: np.ndarray  # N, D float32
    zero: np.ndarray  # N bool: no keypoint, so an all-zero histogram
    seconds: float  # extraction time when computed, kept in the cache with the features
    cached: bool

    @property
    def zero_count(self) -> int:
        return int(self.zero.sum())


def _grid_for(shape: tuple[int, ...], params: BaselineParams):
    if params.features != "dense_sift":
        return None
    return dense_grid(shape[0] * params.upscale, shape[1] * params.upscale, params)


def _sample_worker(images: np.ndarray, params: BaselineParams, per_image: int, seed) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = []
    with single_threaded():
        sift, grid = new_sift(), _grid_for(images.shape[1:], params)
        for image in images:
            desc, _ = sift_descriptors(image, params, sift, grid)
            if len(desc) > per_image:
                desc = desc[rng.choice(len(desc), per_image, replace=False)]
            out.append(desc)
    return np.concatenate(out) if out else np.zeros((0, 128), np.float32)


def _bovw_worker(images: np.ndarray, params: BaselineParams, centers: np.ndarray):
    with single_threaded():
        sift, grid = new_sift(), _grid_for(images.shape[1:], params)
        found = [sift_descriptors(image, params, sift, grid) for image in images]
        counts = [len(d) for d, _ in found]
        words = bovw.assign(np.concatenate([d for d, _ in found]), centers) if sum(counts) else np.zeros(0, np.int64)
    hists = np.zeros((len(images), bovw.histogram_length(params)), np.float32)
    start = 0
    for i, (count, (_, positions)) in enumerate(zip(counts, found, strict=True)):
        if count:
            hists[i] = bovw.encode(words[start : start + count], positions, params)
        start += count
    return hists, np.array(counts) == 0


def _hog_worker(images: np.ndarray, params: BaselineParams):
    with single_threaded():
        feats = np.stack([hog_vector(image, params) for image in images])
    return feats, ~feats.any(axis=1)


def chunk_bounds(n: int) -> list[tuple[int, int]]:
    """At least 16 chunks when there are images enough, so small sets still spread over cores."""
    size = int(np.clip(math.ceil(n / 16), 16, MAX_CHUNK))
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def run_chunks(
    worker: Callable, images: np.ndarray, args: Callable[[int], tuple], n_jobs: int, description: str
) -> list:
    """``worker(chunk, *args(i))`` for every chunk, in order, with a progress bar."""
    bounds = chunk_bounds(len(images))
    results = []
    with task_progress() as progress:
        task = progress.add_task(description, total=len(images), status=f"n_jobs={n_jobs}")
        calls = (delayed(worker)(images[a:b], *args(i)) for i, (a, b) in enumerate(bounds))
        for (a, b), out in zip(bounds, Parallel(n_jobs=n_jobs, return_as="generator")(calls), strict=True):
            results.append(out)
            progress.advance(task, b - a)
    return results


def fit_codebook(
    images: np.ndarray, params: BaselineParams, cache_dir: str | Path | None = None
) -> tuple[np.ndarray | None, float]:
    """The visual-word centres for SIFT features (None for HOG), and the seconds they took."""
    if params.features == "hog":
        return None, 0.0
    check_image_size(images.shape[1:], params)
    cache = FeatureCache(cache_dir)
    key = cache_key("codebook", images=array_digest(images), **params.feature_fields())
    hit = cache.load(key)
    if hit is not None:
        return hit["centers"], float(hit["seconds"])
    started = time.perf_counter()
    rng = np.random.default_rng(params.seed)
    n_images = min(len(images), max(1, math.ceil(params.codebook_sample / _SAMPLE_PER_IMAGE)))
    chosen = np.sort(rng.choice(len(images), n_images, replace=False))
    per_image = max(1, math.ceil(2 * params.codebook_sample / n_images))
    seeds = np.random.SeedSequence(params.seed).spawn(len(chunk_bounds(n_images)))
    parts = run_chunks(
        _sample_worker, images[chosen], lambda i: (params, per_image, seeds[i]), params.n_jobs, "codebook sample"
    )
    sample = np.concatenate(parts) if parts else np.zeros((0, 128), np.float32)
    if len(sample) > params.codebook_sample:
        sample = sample[rng.choice(len(sample), params.codebook_sample, replace=False)]
    centers = bovw.fit_codebook(sample, params.codebook_size, params.seed)
    seconds = time.perf_counter() - started
    cache.save(key, centers=centers, seconds=np.float64(seconds))
    return centers, seconds


def extract(
    images: np.ndarray,
    params: BaselineParams,
    codebook: np.ndarray | None = None,
    cache_dir: str | Path | None = None,
    description: str = "features",
) -> Features:
    """Features of every image: a bag-of-words histogram (SIFT) or a HOG vector."""
    check_image_size(images.shape[1:], params)
    cache = FeatureCache(cache_dir)
    parts = {"images": array_digest(images), **params.feature_fields()}
    if params.features != "hog":
        if codebook is None:
            raise ValueError("SIFT features need the codebook from fit_codebook")
        parts["codebook"] = array_digest(codebook)
    key = cache_key(params.features, **parts)
    hit = cache.load(key)
    if hit is not None:
        return Features(hit["matrix"], hit["zero"], float(hit["seconds"]), cached=True)
    started = time.perf_counter()
    if params.features == "hog":
        results = run_chunks(_hog_worker, images, lambda i: (params,), params.n_jobs, description)
    else:
        results = run_chunks(_bovw_worker, images, lambda i: (params, codebook), params.n_jobs, description)
    if results:
        matrix = np.concatenate([m for m, _ in results])
        zero = np.concatenate([z for _, z in results])
    else:
        matrix, zero = np.zeros((0, 0), np.float32), np.zeros(0, bool)
    seconds = time.perf_counter() - started
    cache.save(key, matrix=matrix, zero=zero, seconds=np.float64(seconds))
    return Features(matrix, zero, seconds, cached=False)
