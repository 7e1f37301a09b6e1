"""Grad-CAM: the heat map lands where the evidence is, for built-in and timm conv nets; the gallery's choice."""

import numpy as np
import pytest
import torch

from classiflow.data.prepared import PreparedData
from classiflow.errors import ClassiflowError
from classiflow.explain import WEIGHTS_FILE, gallery, grad_cam, load_explainable, plot_gallery, save_explainable
from classiflow.models import build_model
from classiflow.tensors import Normalizer, to_nchw
from classiflow.training import fit
from tests.conftest import shrunk_train


def _blobs(n=320, size=16, seed=0):
    """Noise (class 0) or noise with one bright 4x4 blob somewhere (class 1): the evidence is the blob."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.integers(0, 80, (n, size, size, 1)).astype(np.uint8)
    where = rng.integers(0, size - 4, (n, 2))
    for i in np.flatnonzero(labels):
        y, x = where[i]
        images[i, y : y + 4, x : x + 4] = 230
    meta = {"classes": ["plain", "blob"], "channels": 1, "image_size": size, "mean": [0.2], "std": [0.2],
            "data_hash": "blobs"}  # fmt: skip
    split = {"train": slice(0, 240), "val": slice(240, 280), "test": slice(280, n)}
    data = PreparedData(meta, {k: images[s] for k, s in split.items()}, {k: labels[s] for k, s in split.items()})
    return data, where[split["test"]]


def test_the_heat_map_of_a_trained_net_lies_on_the_blob_that_decides_the_class():
    data, where = _blobs()
    model = build_model("simplecnn", 1, 2, 16)
    result = fit(model, data, shrunk_train(epochs=6, batch_size=16, lr=0.01, scheduler="step"))
    assert result.best_val_accuracy >= 0.9
    images, labels = data.images["test"], data.labels["test"]
    x = Normalizer([0.2], [0.2])(to_nchw(images).float())
    cams = grad_cam(model, x, torch.ones(len(labels), dtype=torch.long))
    assert cams.shape == (len(labels), 16, 16) and cams.min() >= 0 and cams.max() <= 1 + 1e-6
    inside = []
    for cam, (y, x0), label in zip(cams, where, labels, strict=True):
        if label == 1:
            mask = np.zeros_like(cam, bool)
            mask[y : y + 4, x0 : x0 + 4] = True
            inside.append(cam[mask].mean() > cam[~mask].mean())
    assert np.mean(inside) >= 0.8


def test_timm_models_are_explained_and_the_vit_is_refused():
    torch.manual_seed(0)
    timm_net = build_model("timm/test_efficientnet", 3, 4, 32, width=None)
    cams = grad_cam(timm_net, torch.randn(2, 3, 32, 32), torch.tensor([0, 3]))
    assert cams.shape == (2, 32, 32) and np.isfinite(cams).all()
    vit = build_model("vit", 3, 4, 32)
    with pytest.raises(ClassiflowError, match="has no convolution"):
        grad_cam(vit, torch.randn(1, 3, 32, 32), torch.tensor([0]))


def test_weights_round_trip_for_conv_nets_and_a_vit_gets_none(tmp_path, caplog):
    for name, arch in [("fastnet", {"width": 16}), ("timm/test_efficientnet", {"width": None})]:
        torch.manual_seed(0)
        spec = {"name": name, "in_channels": 1, "num_classes": 3, "image_size": 32, **arch}
        net, out = build_model(**spec).eval(), tmp_path / name.replace("/", "-")
        out.mkdir()
        entry = save_explainable(net, spec, out)
        assert entry["weights"] == WEIGHTS_FILE and entry["architecture"] == spec and entry["layer"]
        x = torch.randn(2, 1, 32, 32)
        with torch.no_grad():
            assert torch.equal(load_explainable(out, entry)(x), net(x))
    spec = {"name": "vit", "in_channels": 3, "num_classes": 4, "image_size": 32}
    assert save_explainable(build_model(**spec), spec, tmp_path) is None
    assert "no explanations: Grad-CAM: " in caplog.text and not (tmp_path / WEIGHTS_FILE).exists()
    with pytest.raises(ClassiflowError, match="model.safetensors: missing"):
        load_explainable(tmp_path, {"weights": WEIGHTS_FILE, "architecture": spec})


def test_the_gallery_shows_the_most_confident_mistakes_first_then_some_hits(tmp_path):
    labels = np.array([0, 0, 0, 0, 1, 1])
    probs = np.array([[0.2, 0.8], [0.4, 0.6], [0.9, 0.1], [0.7, 0.3], [0.1, 0.9], [0.6, 0.4]])
    rows = gallery(labels, probs, mistakes=2, correct=1)
    assert rows[:2] == [0, 1] and rows[2] in (2, 3)  # class 0: wrong at 0.8, then 0.6; one hit
    assert rows[3:] == [5, 4]  # class 1: its one mistake, its one hit
    images = np.zeros((len(rows), 8, 8, 1), np.uint8)
    plot_gallery(tmp_path / "g.png", images, np.zeros((len(rows), 8, 8)), ["x"] * len(rows), [True] * len(rows))
    assert (tmp_path / "g.png").stat().st_size > 0
