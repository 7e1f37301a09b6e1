"""Bag of visual words: a k-means codebook of SIFT descriptors, and per-image histograms.

Histograms are Hellinger-normalised by default (square root of the L1-normalised counts):
a linear SVM on them behaves like a Hellinger-kernel SVM, which is what makes a linear
classifier competitive on bag-of-words features without an explicit kernel.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.cluster import MiniBatchKMeans

from classiflow.baseline.params import BaselineParams
from classiflow.errors import ClassiflowError

# Lazebnik et al. 2006, two levels: the whole image and its 2x2 quadrants weigh the same.
_LEVEL1_WEIGHT = 0.5


def fit_codebook(sample: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Cluster centres (k, 128) float32 of a descriptor sample."""
    if len(sample) == 0:
        raise ClassiflowError(
            "no SIFT descriptor was found in the sampled training images (are they blank?); "
            "use baseline.features: dense_sift or hog"
        )
    if k > len(sample):
        raise ClassiflowError(
            f"baseline.codebook_size {k} is larger than the {len(sample)} sampled descriptors; "
            "lower codebook_size or raise codebook_sample"
        )
    kmeans = MiniBatchKMeans(
        n_clusters=k,
        random_state=seed,
        batch_size=max(4096, 2 * k),
        # k-means++ over sklearn's default init_size costs more than all the updates
        init_size=min(len(sample), 3 * k),
        n_init=3,
        max_no_improvement=10,
    )
    with warnings.catch_warnings():
        # identical descriptors (e.g. many flat patches) leave fewer distinct points than k
        warnings.simplefilter("ignore", category=UserWarning)
        kmeans.fit(sample)
    return kmeans.cluster_centers_.astype(np.float32)


def histogram_length(params: BaselineParams) -> int:
    return params.codebook_size * (5 if params.spatial_pyramid else 1)


def assign(descriptors: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the nearest centre: |c|^2 - 2 d.c, one matrix product for a whole chunk."""
    center_sq = np.einsum("ij,ij->i", centers, centers)
    return np.argmin(center_sq[None, :] - 2.0 * (descriptors @ centers.T), axis=1)


def _normalise(block: np.ndarray, encoding: str) -> np.ndarray:
    if encoding == "l2":
        norm = np.linalg.norm(block, axis=-1, keepdims=True)
        return block / np.maximum(norm, 1e-12)
    total = block.sum(axis=-1, keepdims=True)
    block = block / np.maximum(total, 1e-12)
    return np.sqrt(block) if encoding == "hellinger" else block


def encode(words: np.ndarray, positions: np.ndarray, params: BaselineParams) -> np.ndarray:
    """One image's histogram from its visual words and their positions in [0, 1).

    With no words at all the result is all zeros, which the classifier sees as 'nothing
    found' rather than an error.
    """
    k = params.codebook_size
    blocks = [np.bincount(words, minlength=k).astype(np.float32)]
    if params.spatial_pyramid:
        quadrant = (positions[:, 1] >= 0.5).astype(np.int64) * 2 + (positions[:, 0] >= 0.5)
        for q in range(4):
            blocks.append(np.bincount(words[quadrant == q], minlength=k).astype(np.float32))
    blocks = _normalise(np.stack(blocks), params.encoding)
    if params.spatial_pyramid:
        blocks[1:] *= _LEVEL1_WEIGHT
    hist = blocks.reshape(-1)
    if params.encoding == "l1":
        return hist / max(float(hist.sum()), 1e-12)
    return hist / max(float(np.linalg.norm(hist)), 1e-12)
