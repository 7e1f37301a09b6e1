"""The classical baseline on real handwritten digits (scikit-learn's copy of UCI optdigits)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from pydantic import ValidationError
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from classiflow.atomic import write_json
from classiflow.baseline import bovw, compare, features
from classiflow.baseline.features import extract, fit_codebook
from classiflow.baseline.model import fit_classifier, load_model
from classiflow.baseline.params import BaselineParams
from classiflow.data.prepare import FORMAT_VERSION, SPLITS, channel_stats, content_hash, resize_batch
from classiflow.data.prepared import load_prepared
from classiflow.errors import ClassiflowError
from classiflow.layout import Layout
from classiflow.stages import baseline as stage

# Small codebook and sample: the test file stays fast, and digits need no more.
FAST_SIFT = dict(codebook_size=96, codebook_sample=15_000, n_jobs=2)


def write_prepared(out_dir, images: np.ndarray, labels: np.ndarray, classes: list[str], seed: int = 0) -> dict:
    """The files ``classiflow.data.prepare.prepare`` writes, for an in-memory data set."""
    rest_x, test_x, rest_y, test_y = train_test_split(images, labels, test_size=0.2, stratify=labels, random_state=seed)
    train_x, val_x, train_y, val_y = train_test_split(
        rest_x, rest_y, test_size=0.125, stratify=rest_y, random_state=seed
    )
    splits = {"train": (train_x, train_y), "val": (val_x, val_y), "test": (test_x, test_y)}
    mean, std = channel_stats(train_x)
    meta = {
        "format_version": FORMAT_VERSION,
        "dataset": "digits",
        "source": "sklearn.datasets.load_digits",
        "source_sha256": None,
        "classes": classes,
        "channels": int(images.shape[-1]),
        "image_size": int(images.shape[1]),
        "mean": mean,
        "std": std,
        "sizes": {k: int(len(splits[k][1])) for k in SPLITS},
        "class_counts": {k: np.bincount(splits[k][1], minlength=len(classes)).tolist() for k in SPLITS},
        "skipped_count": 0,
        "skipped": [],
        "data_hash": content_hash(splits, classes),
    }
    out_dir.mkdir(parents=True)
    for name in SPLITS:
        np.save(out_dir / f"{name}_images.npy", np.ascontiguousarray(splits[name][0]))
        np.save(out_dir / f"{name}_labels.npy", splits[name][1].astype(np.int64))
    write_json(out_dir / "meta.json", meta)
    return meta


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    digits = load_digits()
    images = (digits.images * (255 / 16)).round().astype(np.uint8)[..., None]
    return resize_batch(images, 32), digits.target.astype(np.int64)


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("workspace")
    images, labels = digit_images()
    write_prepared(Layout.at(root).prepared, images, labels, [str(i) for i in range(10)])
    return Layout.at(root)


@pytest.fixture(scope="module")
def digits(digits_root):
    return load_prepared(digits_root.prepared, ("train", "test"))


@pytest.mark.integration
def test_dense_sift_bag_of_words_on_digits(digits_root, tmp_path):
    params = BaselineParams(**FAST_SIFT)
    summary = stage.fit_baseline(digits_root, params, cache_dir=tmp_path / "cache")
    paths = stage.baseline_paths(digits_root)

    assert summary["accuracy"] >= 0.95  # measured 0.986 with these parameters, 0.99+ with the defaults
    assert summary["macro_f1"] >= 0.95
    test_size = len(np.load(digits_root.prepared / "test_labels.npy"))
    assert summary["test_size"] == test_size == 360
    assert summary["train_size"] == 1437  # train + val, never test
    assert summary["zero_histogram_images"] == 0

    matrix = np.array(summary["confusion_matrix"])
    assert matrix.sum() == test_size
    with open(paths.confusion_matrix_csv, newline="") as handle:
        rows = list(csv.reader(handle))
    assert sum(int(v) for row in rows[1:] for v in row[1:]) == test_size
    with open(paths.predictions, newline="") as handle:
        assert len(list(csv.reader(handle))) == test_size + 1
    for path in (paths.confusion_matrix_png, paths.per_class):
        assert path.stat().st_size > 0
    written = json.loads(paths.metrics.read_text())
    for key in (
        "accuracy",
        "macro_precision",
        "macro_recall",
        "macro_f1",
        "per_class",
        "test_size",
        "feature_seconds",
        "fit_seconds",
        "predict_ms_per_image",
        "model_bytes",
        "zero_histogram_images",
    ):
        assert key in written
    assert written["model_bytes"] == paths.model.stat().st_size

    model = load_model(paths.model)
    test = load_prepared(digits_root.prepared, ("test",))
    predicted = model.predict(test.images["test"][:50])
    assert (predicted == test.labels["test"][:50]).mean() >= 0.9


def test_hog_svm_on_digits(digits):
    params = BaselineParams(features="hog", scale=True, pca=128, classifier="rbf_svc", C=5.0, n_jobs=2)
    train = extract(digits.images["train"], params)
    test = extract(digits.images["test"], params)
    pipeline = fit_classifier(train.matrix, digits.labels["train"], params)
    accuracy = (pipeline.predict(test.matrix) == digits.labels["test"]).mean()
    assert accuracy >= 0.97  # measured 0.989 (0.981 with a linear SVM)
    assert test.zero_count == 0


def test_parallel_and_single_process_features_agree(digits):
    params = BaselineParams(**FAST_SIFT)
    images = digits.images["train"][:600]
    codebook, _ = fit_codebook(images, params)
    one = extract(images[:300], params.model_copy(update={"n_jobs": 1}), codebook)
    two = extract(images[:300], params, codebook)
    assert one.matrix.shape == (300, 5 * 96)
    np.testing.assert_array_equal(one.matrix, two.matrix)


def test_images_without_keypoints_get_zero_histograms(digits):
    params = BaselineParams(features="sift", codebook_size=16, codebook_sample=2000, n_jobs=1)
    images = digits.images["train"][:60].copy()
    codebook, _ = fit_codebook(images, params)
    before = extract(images, params, codebook)
    blank = np.flatnonzero(~before.zero)[:3]
    images[blank] = 0
    after = extract(images, params, codebook)
    assert after.zero_count == before.zero_count + 3
    assert set(np.flatnonzero(after.zero)) == set(np.flatnonzero(before.zero)) | set(blank)
    assert not after.matrix[after.zero].any()
    assert after.matrix[~after.zero].any(axis=1).all()


def test_only_changing_C_reuses_cached_features(digits_root, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    small = {**FAST_SIFT, "max_train": 300}
    first = stage.fit_baseline(digits_root, BaselineParams(**small, C=1.0), cache)
    assert not first["features_cached"]
    entries = sorted(p.name for p in cache.iterdir())
    assert len(entries) == 3  # codebook, train features, test features

    def no_extraction(*args, **kwargs):
        raise AssertionError("features were recomputed")

    monkeypatch.setattr(features, "run_chunks", no_extraction)
    second = stage.fit_baseline(digits_root, BaselineParams(**small, C=0.01), cache)
    assert second["features_cached"]
    assert second["feature_seconds"] == first["feature_seconds"]
    assert sorted(p.name for p in cache.iterdir()) == entries
    with pytest.raises(AssertionError, match="recomputed"):
        stage.fit_baseline(digits_root, BaselineParams(**{**small, "codebook_size": 64}), cache)


def test_codebook_larger_than_sample_is_a_clear_error(digits):
    params = BaselineParams(codebook_size=500, codebook_sample=100, n_jobs=1)
    with pytest.raises(ClassiflowError, match="codebook_size 500 is larger than the 100 sampled"):
        fit_codebook(digits.images["train"][:50], params)


def test_empty_descriptor_sample_is_a_clear_error():
    params = BaselineParams(features="sift", codebook_size=8, codebook_sample=100, n_jobs=1)
    with pytest.raises(ClassiflowError, match="no SIFT descriptor"):
        fit_codebook(np.zeros((20, 32, 32, 1), np.uint8), params)
    with pytest.raises(ClassiflowError, match="no SIFT descriptor"):
        bovw.fit_codebook(np.zeros((0, 128), np.float32), 8, 0)


def test_single_class_is_a_clear_error(tmp_path):
    images, labels = digit_images()
    with pytest.raises(ClassiflowError, match="single class"):
        fit_classifier(np.random.default_rng(0).random((30, 8)), np.zeros(30, np.int64), BaselineParams())
    ones = images[labels == 1][:60]
    write_prepared(tmp_path / "data" / "prepared", ones, np.zeros(len(ones), np.int64), ["one"])
    with pytest.raises(ClassiflowError, match="single class"):
        stage.fit_baseline(Layout.at(tmp_path), BaselineParams(**FAST_SIFT))
    assert not (tmp_path / "models").exists()


def test_parameters_that_do_not_fit_the_images_fail_early(digits, digits_root):
    with pytest.raises(ClassiflowError, match="baseline.max_train 5: no stratified sample"):
        stage.fit_baseline(digits_root, BaselineParams(features="hog", max_train=5))
    with pytest.raises(ClassiflowError, match="baseline.size 80 is larger"):
        fit_codebook(digits.images["train"][:10], BaselineParams(size=80, upscale=2))
    with pytest.raises(ClassiflowError, match="HOG block"):
        extract(digits.images["train"][:10], BaselineParams(features="hog", hog_pixels_per_cell=20))
    with pytest.raises(ClassiflowError, match="baseline.pca 5000"):
        fit_classifier(np.random.default_rng(0).random((40, 8)), np.arange(40) % 2, BaselineParams(pca=5000))


@pytest.mark.parametrize(
    "raw",
    [{"codebook_sizee": 10}, {"n_jobs": 0}, {"gamma": -1.0}, {"C": 0}, {"features": "surf"}, {"step": 0}],
)
def test_params_are_validated(raw):
    with pytest.raises(ValidationError):
        BaselineParams(**raw)


def test_model_rejects_other_images_and_untrusted_files(digits_root, tmp_path):
    with pytest.raises(ClassiflowError, match="no baseline model"):
        load_model(tmp_path / "missing.joblib")
    junk = tmp_path / "junk.joblib"
    junk.write_bytes(b"not a pickle")
    with pytest.raises(ClassiflowError, match="not a readable baseline model"):
        load_model(junk)
    stage.fit_baseline(digits_root, BaselineParams(features="hog", max_train=400, n_jobs=1))
    model = load_model(stage.baseline_paths(digits_root).model)
    assert model.info["train_size"] == 400
    with pytest.raises(ClassiflowError, match="fitted on"):
        model.predict(np.zeros((2, 16, 16, 1), np.uint8))


def test_comparison_report(tmp_path):
    rows = [
        {
            "model": "simplecnn",
            "kind": "deep",
            "accuracy": 0.71,
            "macro_f1": 0.70,
            "train_seconds": 300.0,
            "inference_ms_per_image": 0.05,
            "size_bytes": 250_000,
        },
        {
            "model": "HOG + RBF SVM",
            "kind": "classical",
            "accuracy": 0.55,
            "macro_f1": 0.54,
            "train_seconds": 120.0,
            "inference_ms_per_image": 2.5,
            "size_bytes": 40_000_000,
        },
    ]
    out = compare.write_comparison(rows, tmp_path / "reports")
    table = out["markdown"].read_text()
    assert "| simplecnn | deep | 71.00% | - | 0.7000 |" in table
    assert "| HOG + RBF SVM | classical | 55.00% |" in table
    assert out["plot"].read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ClassiflowError, match="missing macro_f1"):
        compare.write_comparison([{k: v for k, v in rows[0].items() if k != "macro_f1"}], tmp_path)
    with pytest.raises(ClassiflowError, match="kind must be"):
        compare.write_comparison([{**rows[0], "kind": "shallow"}], tmp_path)
