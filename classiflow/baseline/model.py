"""The classifier on top of the features, and the saved model that bundles both.

A saved model carries its codebook and feature parameters next to the scikit-learn
pipeline: without them the SVM cannot classify a new image, only a feature vector.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import joblib
import numpy as np
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

from classiflow.atomic import atomic_path
from classiflow.baseline.features import extract
from classiflow.baseline.params import BaselineParams
from classiflow.errors import ClassiflowError

log = logging.getLogger("classiflow.baseline")
MODEL_FORMAT = "classiflow-baseline"
MODEL_VERSION = 1


def build_pipeline(params: BaselineParams, n_samples: int, n_features: int) -> Pipeline:
    steps = []
    if params.scale:
        steps.append(("scale", StandardScaler()))
    if params.pca is not None:
        limit = min(n_samples, n_features)
        if params.pca > limit:
            raise ClassiflowError(
                f"baseline.pca {params.pca} is more than the {limit} components "
                f"{n_samples} images of {n_features} features allow; lower baseline.pca"
            )
        steps.append(("pca", PCA(n_components=params.pca, random_state=params.seed)))
    if params.classifier == "linear_svc":
        clf = LinearSVC(C=params.C, dual="auto", max_iter=5000, random_state=params.seed)
    else:
        clf = SVC(kernel="rbf", C=params.C, gamma=params.gamma, cache_size=1024, random_state=params.seed)
    steps.append(("svm", clf))
    return Pipeline(steps)


def check_labels(labels: np.ndarray) -> None:
    """Fail early: with one class there is nothing to separate, and sklearn says so cryptically."""
    present = np.unique(labels)
    if len(present) < 2:
        shown = present[0] if len(present) else "none"
        raise ClassiflowError(f"the training labels hold a single class ({shown}); an SVM needs at least two classes")


def fit_classifier(features: np.ndarray, labels: np.ndarray, params: BaselineParams) -> Pipeline:
    check_labels(labels)
    pipeline = build_pipeline(params, *features.shape)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        pipeline.fit(features, labels)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        log.warning("the SVM stopped before converging; lower baseline.C or turn on baseline.scale")
    return pipeline


@dataclass
class BaselineModel:
    params: BaselineParams
    classes: list[str]
    codebook: np.ndarray | None
    pipeline: Pipeline
    image_shape: tuple[int, int, int]
    data_hash: str | None = None
    info: dict = field(default_factory=dict)
    format: str = MODEL_FORMAT
    version: int = MODEL_VERSION

    def features(self, images: np.ndarray, cache_dir: str | Path | None = None) -> np.ndarray:
        if tuple(images.shape[1:]) != tuple(self.image_shape):
            raise ClassiflowError(
                f"the model was fitted on {self.image_shape} images, got {tuple(images.shape[1:])}; "
                "prepare the images the same way"
            )
        return extract(images, self.params, self.codebook, cache_dir, "predict features").matrix

    def predict(self, images: np.ndarray, cache_dir: str | Path | None = None) -> np.ndarray:
        """Class indices for N,H,W,C uint8 images shaped like the training images."""
        return self.pipeline.predict(self.features(images, cache_dir))


def save_model(path: str | Path, model: BaselineModel) -> int:
    """Write the model (replaced atomically) and return its size in bytes."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        joblib.dump(model, handle)
    return Path(path).stat().st_size


def load_model(path: str | Path) -> BaselineModel:
    """Load a model written by :func:`save_model`.

    Only load files this pipeline produced: joblib files are pickles, and unpickling a
    file from anyone else can run arbitrary code.
    """
    path = Path(path)
    if not path.exists():
        raise ClassiflowError(f"{path}: no baseline model; run the baseline stage first")
    try:
        model = joblib.load(path)
    except Exception as err:  # any unpickling failure means the same to the user
        raise ClassiflowError(
            f"{path}: not a readable baseline model ({type(err).__name__}); rerun the baseline stage"
        ) from None
    if getattr(model, "format", None) != MODEL_FORMAT or getattr(model, "version", None) != MODEL_VERSION:
        raise ClassiflowError(f"{path}: not a baseline model of this classiflow version; rerun the baseline stage")
    return model
