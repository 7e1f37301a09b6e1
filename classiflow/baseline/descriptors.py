"""Per-image descriptors: SIFT (dense grid or detected keypoints) and HOG.

These run inside joblib workers, one chunk of images per call, so they are plain functions
of arrays. OpenCV's and BLAS's own threads are pinned to one while they run: the
parallelism comes from the workers, nested thread pools on top of them only slow both
down, and ``n_jobs=1`` then really means one core.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import cv2
import numpy as np
from skimage.feature import hog
from threadpoolctl import threadpool_limits

from classiflow.baseline.params import BaselineParams
from classiflow.errors import ClassiflowError

# OpenCV's descriptor window is 4 bins of 3 sigma each, sigma being half the keypoint size.
_WINDOW_PER_KEYPOINT_SIZE = 6.0


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        cv2.setNumThreads(previous)


def to_gray(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3 and image.shape[-1] == 3:
        return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    return np.ascontiguousarray(image.reshape(image.shape[0], image.shape[1]))


def dense_grid(height: int, width: int, params: BaselineParams) -> list:
    """Keypoints whose whole descriptor window lies inside the image."""
    half = params.size / 2.0
    if params.size > min(height, width):
        raise ClassiflowError(
            f"baseline.size {params.size} is larger than the upscaled image ({width}x{height}); "
            "lower baseline.size or raise baseline.upscale"
        )
    xs = np.arange(half, width - half + 1e-6, params.step)
    ys = np.arange(half, height - half + 1e-6, params.step)
    kp_size = params.size / _WINDOW_PER_KEYPOINT_SIZE
    return [cv2.KeyPoint(float(x), float(y), kp_size) for y in ys for x in xs]


def _prepare_for_sift(image: np.ndarray, params: BaselineParams) -> np.ndarray:
    gray = to_gray(image)
    if params.upscale > 1:
        h, w = gray.shape
        gray = cv2.resize(gray, (w * params.upscale, h * params.upscale), interpolation=cv2.INTER_LINEAR)
    return gray


def root_sift(descriptors: np.ndarray) -> np.ndarray:
    """Hellinger-map SIFT (Arandjelovic & Zisserman 2012): k-means on it clusters better."""
    d = descriptors.astype(np.float32)
    d /= d.sum(axis=1, keepdims=True) + 1e-7
    return np.sqrt(d)


def sift_descriptors(
    image: np.ndarray, params: BaselineParams, sift, grid: list | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """RootSIFT descriptors (M, 128) and their (M, 2) positions as fractions of the image side.

    M is 0 when detection finds nothing (a flat image): the caller encodes a zero histogram.
    """
    gray = _prepare_for_sift(image, params)
    h, w = gray.shape
    if params.features == "dense_sift":
        keypoints, desc = sift.compute(gray, grid if grid is not None else dense_grid(h, w, params))
    else:
        keypoints, desc = sift.detectAndCompute(gray, None)
    pts = np.array([kp.pt for kp in keypoints], dtype=np.float32).reshape(-1, 2)
    if desc is None or len(desc) == 0:
        return np.zeros((0, 128), np.float32), np.zeros((0, 2), np.float32)
    return root_sift(desc), pts / np.array([w, h], dtype=np.float32)


def new_sift():
    return cv2.SIFT_create()


def hog_vector(image: np.ndarray, params: BaselineParams) -> np.ndarray:
    colour = image.ndim == 3 and image.shape[-1] == 3
    img = image if colour else image.reshape(image.shape[0], image.shape[1])
    return hog(
        img,
        orientations=params.hog_orientations,
        pixels_per_cell=(params.hog_pixels_per_cell, params.hog_pixels_per_cell),
        cells_per_block=(params.hog_cells_per_block, params.hog_cells_per_block),
        block_norm="L2-Hys",
        channel_axis=-1 if colour else None,
        feature_vector=True,
    ).astype(np.float32)


def check_image_size(shape: tuple[int, ...], params: BaselineParams) -> None:
    """Fail before any work when the parameters cannot fit the images."""
    h, w = shape[:2]
    if params.features == "hog":
        block = params.hog_pixels_per_cell * params.hog_cells_per_block
        if block > min(h, w):
            raise ClassiflowError(
                f"a HOG block of {params.hog_cells_per_block}x{params.hog_pixels_per_cell} pixels "
                f"does not fit in {w}x{h} images; lower baseline.hog_pixels_per_cell or hog_cells_per_block"
            )
    elif params.features == "dense_sift":
        dense_grid(h * params.upscale, w * params.upscale, params)
