"""A timm architecture with pretrained weights through the train, evaluate, prune and export stages."""

from __future__ import annotations

import pytest
import torch

from classiflow.atomic import read_json
from classiflow.checkpoint import load_checkpoint
from classiflow.config import DataParams
from classiflow.data.download import download
from classiflow.data.prepare import prepare
from classiflow.errors import ClassiflowError
from classiflow.export.params import ExportParams
from classiflow.layout import Layout
from classiflow.models import build_model
from classiflow.models.pretrained import save_weights
from classiflow.stages import augment, evaluate, export, prune, train
from tests.conftest import shrunk_params
from tests.imagegen import write_image_folder

pytestmark = pytest.mark.integration
ARCH = "timm/test_efficientnet"
SIZE = 32


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrained")
    layout = Layout.at(root / "p")
    download(str(write_image_folder(root / "shapes", per_class=24, size=SIZE, gray=True)), layout.raw)
    prepare(layout.raw, layout.prepared, DataParams(image_size=SIZE, val_fraction=0.2))
    torch.manual_seed(1)
    weights = root / "imagenet-like.safetensors"
    source = build_model(ARCH, 3, 1000, SIZE, width=None).state_dict()
    save_weights(weights, source, {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.3, 0.4], "license": "apache-2.0"})
    params = shrunk_params(
        {"model": {"name": ARCH, "width": None, "pretrained": str(weights)}},
        {"train.epochs": 2, "train.freeze_epochs": 1, "train.backbone_lr_scale": 0.1, "train.lr": 0.01},
    )
    augment.run(layout, params)
    result = train.run(layout, params)
    return layout, params, result, source


def test_the_checkpoint_keeps_the_weights_preprocessing_and_provenance(project):
    layout, _, result, _ = project
    _, ckpt = load_checkpoint(layout.model)
    assert ckpt["mean"] == pytest.approx([0.5]) and ckpt["std"] == pytest.approx([0.3])  # one channel: averages
    assert ckpt["pretrained"]["license"] == "apache-2.0"
    assert ckpt["pretrained"]["fresh"] == ["classifier.weight", "classifier.bias"]
    assert result.tags["pretrained_sha256"] == ckpt["pretrained"]["sha256"]


def test_the_fine_tuned_model_is_evaluated_pruned_and_exported(project):
    layout, params, _, _ = project
    evaluate.run(layout, params)
    prune.run(layout, params)
    settings = ExportParams(
        latency_repeats=3, throughput_batch=8, calibration_images=32, threads=1, int8="dynamic",
        int8_min_agreement=0.0, int8_max_accuracy_drop=100.0,
    )  # fmt: skip
    metrics = export.export(layout, settings)
    for name in ("torchscript", "onnx"):
        assert metrics["trained"][name]["status"] == "verified", metrics["trained"][name]
    pre = read_json(layout.export_dir / "preprocessing.json")
    assert pre["mean"] == pytest.approx([0.5]) and pre["input"]["shape"] == ["batch", 1, SIZE, SIZE]


def test_a_mismatched_hash_stops_the_train_stage_before_any_work(project, tmp_path):
    layout, params, _, _ = project
    bad = params.model_copy(update={"model": params.model.model_copy(update={"pretrained_sha256": "0" * 64})})
    with pytest.raises(ClassiflowError, match="sha256 mismatch"):
        train.run(layout, bad)
