"""Every model of the zoo through export and int8 verification on real images, colour and grayscale.

Each model trains for a few hundred steps on real images (a CIFAR-10 subset, MNIST digits) and goes through
the export stage's own code with the committed checks. Every file must be verified or left out with its
reason, and for conv models the static int8 file must be verified: at most 0.5 points lost and 99% agreement
on the decided images. The dynamic file, which quantizes only a conv model's classifier head, is optional and
may be left out (narrow resnet20 here: 98.35% agreement); ViT's int8 files are optional as well.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from classiflow.augment import build_augment
from classiflow.config import AugmentParams, DataParams, TrainParams
from classiflow.data.download import download
from classiflow.data.prepare import prepare
from classiflow.data.prepared import PreparedData, load_prepared
from classiflow.export import runtime
from classiflow.export.params import ExportParams
from classiflow.export.pipeline import Images, Source, export_model
from classiflow.models import MODELS, build_model
from classiflow.tensors import WithPreprocessing
from classiflow.training import fit
from classiflow.training.loop import Inputs
from tests.real_images import cifar_subset, mnist_available, write_mnist_archive

pytestmark = [pytest.mark.integration, pytest.mark.real_data]
TRAIN_IMAGES = 3000
STEPS = {"cifar10": 200, "digits": 150}  # of 64 images: enough to learn, so that near-ties do not dominate
# Narrower versions of the costly architectures keep the tier to minutes; the structure that int8 meets (the
# stem, folded norms, residual sums, attention) is the same, and benchmarks/int8.py measures the full widths.
WIDTH = {"fastnet": 16, "resnet20": 8, "resnet56": 8, "vit": 64}
# Every model on colour. Grayscale digits (sparse, mostly black: the activation ranges that broke fastnet's int8)
# for the article's MNIST model, one plain and one residual CNN; the default model's digits run is tests/test_e2e.py
# (the committed params, whose static int8 must be verified too); deeper ResNets and ViT colour only
# resnet56 at width 8 after 200 steps is about 40% accurate and most of its test images are near-ties: int8
# keeps >= 99.5% of the decided predictions but flips enough ties to lose 0.2-2.2 points, by CPU and thread
# count (2026-12-05, Xeon with AVX-512, 1 thread: 43.5% -> 41.3%, decided agreement 99.57%). Its accuracy
# check is reported, not required; its agreement on the decided images is required.
TIE_DOMINATED = {"resnet56"}
# 5,000 CIFAR-10 test images: a short-trained fastnet (about 53%) leaves a quarter of them near-ties, and int8
# flips 1-2% of its predictions; on 1,000 images the net change of those flips alone varies by +-0.3 points
CIFAR_TEST_PER_CLASS = 500
CASES = [(name, "cifar10") for name in sorted(MODELS)] + [
    (name, "digits") for name in ("lenet5", "simplecnn", "resnet8")
]


def _prepared(archive, root, size: int) -> PreparedData:
    download(str(archive), root / "raw")
    prepare(root / "raw", root / "prepared", DataParams(image_size=size))
    data = load_prepared(root / "prepared")
    pick = np.random.default_rng(0).permutation(len(data.labels["train"]))[:TRAIN_IMAGES]
    images, labels = dict(data.images), dict(data.labels)
    images["train"], labels["train"] = images["train"][np.sort(pick)], labels["train"][np.sort(pick)]
    return PreparedData(data.meta, images, labels)


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> dict[str, PreparedData]:
    tmp = tmp_path_factory.mktemp("zoo")
    sets = {}
    if mnist_available():
        sets["digits"] = _prepared(write_mnist_archive(tmp / "d"), tmp / "digits", 28)
    try:
        sets["cifar10"] = _prepared(cifar_subset(tmp, CIFAR_TEST_PER_CLASS), tmp / "cifar", 32)
    except pytest.skip.Exception:
        pass
    return sets


def _train(name: str, data: PreparedData, steps: int) -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_model(name, data.channels, len(data.classes), data.image_size, width=WIDTH.get(name))
    if name == "fastnet":
        recipe = {"lr": 1.5, "momentum": 0.85, "nesterov": True, "weight_decay": 0.0013, "bias_lr_scale": 16.0}
    elif name == "vit":
        recipe = {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.05, "bias_lr_scale": 1.0}
    else:
        recipe = {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "bias_lr_scale": 1.0}
    cfg = TrainParams(
        **recipe, epochs=1, min_steps=steps, batch_size=64, scheduler="onecycle", warmup_epochs=0.25,
        label_smoothing=0.1, channels_last=name != "vit", device="cpu",
    )  # fmt: skip
    augment = build_augment(AugmentParams(flip=data.channels == 3, translate=2), len(data.classes))
    fit(net, data, cfg, None, Inputs(augment=augment))
    return net.eval()


@pytest.mark.parametrize(("name", "dataset"), CASES)
def test_every_zoo_model_exports_and_its_static_int8_passes_the_checks(real, name, dataset, tmp_path):
    if dataset not in real:
        pytest.skip(f"{dataset} is not available here")
    data = real[dataset]
    net = _train(name, data, STEPS[dataset])
    module = WithPreprocessing(net, data.meta["mean"], data.meta["std"]).eval()
    train = data.images["train"]
    calibration = runtime.pixels(train[np.sort(np.random.default_rng(0).choice(len(train), 256, replace=False))])
    params = ExportParams(latency_repeats=3, throughput_batch=64, threads=1)
    images = Images(data.images["test"], data.labels["test"], calibration)
    torch.save(net.state_dict(), tmp_path / "m.pt")
    exported = export_model(Source("trained", module, tmp_path / "m.pt"), tmp_path, params, images, 1)
    rows = {r["format"]: r for r in exported}
    assert set(rows) == {"pytorch", "torchscript", "onnx", "onnx-int8-dynamic", "onnx-int8-static"}
    assert rows["pytorch"]["accuracy"] > 0.3, "the model did not learn; the int8 check would be meaningless"
    for fmt, row in rows.items():
        assert row["status"] in ("reference", "verified") or row["reason"].startswith(row["file"]), (fmt, row)
    int8 = rows["onnx-int8-static"]
    if name != "vit":
        assert int8["decided_agreement"] >= 0.99, int8
        if name in TIE_DOMINATED and int8["status"] != "verified":
            assert "int8_max_accuracy_drop" in int8["reason"], int8["reason"]
        else:
            assert int8["status"] == "verified", int8["reason"]
            assert int8["accuracy_drop_points"] <= 0.5
            assert int8["bytes"] < 0.5 * rows["onnx"]["bytes"]
