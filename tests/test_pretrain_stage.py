"""The pretrain stage on generated images: label scarcity in prepare, SimCLR, the encoder the train stage
starts from, the refusals, and a kill -9 mid-run that resumes to the same encoder."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from classiflow.config import DataParams
from classiflow.data.download import download
from classiflow.data.prepare import prepare
from classiflow.data.prepared import load_meta
from classiflow.errors import ClassiflowError
from classiflow.layout import Layout
from classiflow.stages import augment as augment_stage
from classiflow.stages import evaluate as evaluate_stage
from classiflow.stages import pretrain as pretrain_stage
from classiflow.stages import train as train_stage
from tests.conftest import REPO, shrunk_params
from tests.imagegen import write_image_folder

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]
SIMCLR = {"method": "simclr", "epochs": 3, "batch_size": 32, "hidden_dim": 32, "projection_dim": 16, "knn_k": 5}
MODEL = {"name": "simplecnn", "width": None}


def _params(pretrain: dict | None = None, model: dict | None = None, **data):
    raw = {"model": MODEL | (model or {}), "pretrain": pretrain or {}, "data": {"image_size": 32} | data}
    return shrunk_params(raw, {"train.epochs": 2})


def _project(tmp_path, name: str, fraction: float = 0.25) -> Layout:
    folder = tmp_path / "shapes"
    if not folder.exists():
        write_image_folder(folder, per_class=40, size=32)
    layout = Layout.at(tmp_path / name)
    download(str(folder), layout.raw)
    prepare(layout.raw, layout.prepared, DataParams(image_size=32, val_fraction=0.2, label_fraction=fraction))
    return layout


def test_few_labels_hide_train_labels_only(tmp_path):
    full, scarce = _project(tmp_path, "full", 1.0), _project(tmp_path, "scarce", 0.25)
    a, b = load_meta(full.prepared), load_meta(scarce.prepared)
    assert "unlabelled" not in a["sizes"] and b["label_fraction"] == 0.25
    assert b["sizes"]["val"] == a["sizes"]["val"] and b["sizes"]["test"] == a["sizes"]["test"]
    assert b["sizes"]["train"] + b["sizes"]["unlabelled"] == a["sizes"]["train"]
    assert b["sizes"]["train"] == round(0.25 * a["sizes"]["train"])
    counts = np.array(b["class_counts"]["train"])
    assert counts.min() >= 1 and counts.max() - counts.min() <= 1  # stratified
    for split in ("val", "test"):
        np.testing.assert_array_equal(np.load(full.prepared / f"{split}_images.npy"),
                                      np.load(scarce.prepared / f"{split}_images.npy"))  # fmt: skip
    with pytest.raises(ClassiflowError, match=r"data.label_fraction 0.01 leaves class '\w+' with no labelled image"):
        _project(tmp_path, "none", 0.01)


def test_simclr_makes_an_encoder_that_the_train_stage_starts_from(tmp_path):
    layout = _project(tmp_path, "p")
    params = _params(SIMCLR)
    result = pretrain_stage.run(layout, params)
    spec = json.loads((layout.pretrain_dir / "spec.json").read_text())
    assert spec["method"] == "simclr" and spec["model"]["name"] == "simplecnn"
    assert result.value["images"] == load_meta(layout.prepared)["sizes"]["train"] * 4  # labelled + 3x hidden
    assert 0.0 <= result.value["knn_accuracy"] <= 1.0 and np.isfinite(result.value["final_loss"])
    history = layout.pretrain_history.read_text().splitlines()
    assert history[0].startswith("epoch,loss,knn_accuracy") and len(history) == 4
    encoder = load_file(str(layout.encoder))
    assert not any(k.startswith("classifier.5.") for k in encoder) and not layout.pretrain_last.exists()

    augment_stage.run(layout, params)
    trained = _params(SIMCLR, {"pretrained": "pretrain"})
    train_stage.run(layout, trained)
    ckpt = torch.load(layout.model, weights_only=True)
    assert ckpt["pretrained"]["file"] == "encoder.safetensors"
    assert ckpt["pretrained"]["fresh"] == ["classifier.5.weight", "classifier.5.bias"]  # the new classifier
    assert set(ckpt["state_dict"]) == set(encoder) | set(ckpt["pretrained"]["fresh"])

    evaluated = evaluate_stage.run(layout, trained)
    assert all(isinstance(v, float) for v in evaluated.metrics.values())  # what MLflow can log
    assert {"frozen_linear_probe_accuracy", "frozen_knn_accuracy"} <= set(evaluated.metrics)
    frozen = evaluated.value["pretrained_features"]
    assert 0.0 <= frozen["linear_probe_accuracy"] <= 1.0 and 0.0 <= frozen["knn_accuracy"] <= 1.0
    assert frozen["labelled_images"] == load_meta(layout.prepared)["sizes"]["train"] and frozen["features"] > 0


def test_refusals_name_the_problem(tmp_path, caplog):
    layout = _project(tmp_path, "r")
    augment_stage.run(layout, _params())
    pretrain_stage.run(layout, _params())  # method none
    assert json.loads((layout.pretrain_dir / "spec.json").read_text())["method"] == "none"
    assert not layout.encoder.exists()
    with pytest.raises(ClassiflowError, match="ran with pretrain.method: none"):
        train_stage.run(layout, _params(model={"pretrained": "pretrain"}))
    pretrain_stage.run(layout, _params(SIMCLR | {"epochs": 1}))
    assert "pretrain.batch_size 32: under 64, each image has few negatives" in caplog.text
    with pytest.raises(ClassiflowError, match=r"an encoder of name 'simplecnn'.*the model has name 'resnet8'"):
        train_stage.run(layout, _params(model={"name": "resnet8", "pretrained": "pretrain"}))
    with pytest.raises(ClassiflowError, match="pretrain.temperature: Input should be greater than 0"):
        _params(SIMCLR | {"temperature": 0})


def test_killed_pretrain_stage_resumes_to_the_same_encoder(tmp_path):
    killed = _project(tmp_path, "killed")
    straight = Layout.at(tmp_path / "straight")
    shutil.copytree(killed.prepared, straight.prepared)
    params = _params(SIMCLR | {"epochs": 6})
    code = (
        "import json, sys; from classiflow.config import parse_params; from classiflow.layout import Layout;"
        "from classiflow.stages import pretrain;"
        "pretrain.run(Layout.at(sys.argv[1]), parse_params(json.loads(sys.argv[2])))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(killed.root), json.dumps(params.model_dump(by_alias=True))],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not killed.pretrain_last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert not killed.encoder.exists()
    resumed = pretrain_stage.run(killed, params).value
    assert 1 <= resumed["resumed_from_epoch"] < 6
    assert pretrain_stage.run(straight, params).value["resumed_from_epoch"] == 0
    a, b = load_file(str(killed.encoder)), load_file(str(straight.encoder))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
