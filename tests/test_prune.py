"""Pruning: the source's l1_unstructured, global and structured pruning, safe save/load, and the prune stage."""

import os

import pytest
import torch
from pydantic import ValidationError

from classiflow.atomic import read_json
from classiflow.checkpoint import load_checkpoint
from classiflow.config import DataParams, TrainParams
from classiflow.data.download import download
from classiflow.data.prepare import prepare
from classiflow.errors import ClassiflowError
from classiflow.layout import Layout
from classiflow.models import build_model
from classiflow.prune.measure import count_parameters
from classiflow.prune.params import PruneParams
from classiflow.prune.saving import load_pruned, save_pruned
from classiflow.prune.schedule import prune_steps
from classiflow.prune.structured import structured
from classiflow.prune.unstructured import (
    detach_masked_weights,
    global_unstructured,
    l1_unstructured,
    make_permanent,
    sparsity,
)
from classiflow.stages import augment as augment_stage
from classiflow.stages import evaluate as evaluate_stage
from classiflow.stages import prune as prune_stage
from classiflow.stages import train as train_stage
from classiflow.training import fit
from tests.conftest import shrunk_params, shrunk_train
from tests.imagegen import write_image_folder
from tests.test_models_training import _toy_data

META = {"classes": [str(i) for i in range(10)], "mean": [0.5] * 3, "std": [0.25] * 3, "data_hash": "h"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def _spec(name: str, size: int = 32) -> dict:
    return {"name": name, "in_channels": 3, "num_classes": 10, "image_size": size, "attention": "none"}


def test_the_source_call_prunes_that_layer_by_the_fraction_and_permanently():
    model = build_model(**_spec("simplecnn"))
    conv2 = model.features[3]
    other = model.features[0].weight.detach().clone()
    l1_unstructured(model, 0.2, layers=["features.3"])
    make_permanent(model)
    zeros = int((conv2.weight == 0).sum())
    assert zeros == round(0.2 * conv2.weight.numel())
    kept = conv2.weight[conv2.weight != 0].abs()
    assert kept.min() > 0 and torch.equal(model.features[0].weight, other)
    assert not any(k.endswith(("weight_orig", "weight_mask")) for k in model.state_dict())
    assert isinstance(conv2.weight, torch.nn.Parameter)


def test_global_pruning_reaches_the_target_overall_and_spares_the_classifier():
    model = build_model(**_spec("resnet8"))
    head = model.head.weight.detach().clone()
    global_unstructured(model, 0.6)
    make_permanent(model)
    assert sparsity(model) == pytest.approx(0.6, abs=1e-3)
    assert torch.equal(model.head.weight, head)


def test_finetuning_with_ema_keeps_the_pruned_weights_at_zero(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 1)  # fit() would otherwise take every core
    model = build_model("simplecnn", 1, 2, 16)
    global_unstructured(model, 0.5)
    before = model.features[3].weight_orig.detach().clone()
    fit(detach_masked_weights(model), _toy_data(), shrunk_train(batch_size=32, lr=0.05, ema=0.9))
    assert not torch.equal(model.features[3].weight_orig, before)
    assert sparsity(make_permanent(model)) == pytest.approx(0.5, abs=1e-3)


def test_an_iterative_schedule_reaches_the_same_target():
    model = build_model(**_spec("resnet8"))
    seen = [sparsity(model) for _ in prune_steps(model, "global_unstructured", 0.5, steps=2)]
    assert seen == [pytest.approx(0.25, abs=1e-3), pytest.approx(0.5, abs=1e-3)]


@pytest.mark.parametrize("name", ["resnet8", "fastnet"])
def test_structured_pruning_shrinks_the_model_and_round_trips_safely(name, tmp_path):
    spec = _spec(name, 16)
    model = build_model(**spec).eval()
    original = build_model(**spec).eval()
    original.load_state_dict(model.state_dict())
    structured(model, 0.5, torch.randn(1, 3, 16, 16))
    x = torch.randn(2, 3, 16, 16)
    assert count_parameters(model) < 0.4 * count_parameters(original)
    assert sparsity(model, original) > 0.5
    with torch.no_grad():
        out = model.eval()(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    if name == "fastnet":
        assert model.whiten.weight.shape[0] == model.groups[0].conv1.weight.shape[1] == 12
        assert not model.whiten.weight.requires_grad and not model.groups[0].norm1.weight.requires_grad

    path = tmp_path / "pruned.pt"
    save_pruned(path, model, spec, META, {"pruning": {"method": "structured"}})
    assert torch.load(path, weights_only=True)["pruning"] == {"method": "structured"}
    loaded, payload = load_pruned(path)
    assert payload["classes"] == META["classes"] and count_parameters(loaded) == count_parameters(model)
    with torch.no_grad():
        assert torch.equal(loaded(x), out)
    if name == "fastnet":
        assert not loaded.whiten.weight.requires_grad


def test_a_frozen_layers_channels_are_ranked_by_the_learned_layer_that_reads_them():
    model = build_model(**_spec("fastnet", 16)).eval()
    with torch.no_grad():
        model.whiten.weight.normal_()
        model.whiten.weight[1::2] *= 1000.0  # the largest frozen filters...
        model.groups[0].conv1.weight[:, 1::2] = 0.0  # ...are the ones the next conv ignores
    kept = model.whiten.weight.clone()[0::2]
    structured(model, 0.5, torch.randn(1, 3, 16, 16))
    assert torch.equal(model.whiten.weight, kept)
    model.data_init(torch.randn(8, 3, 16, 16))  # fine-tuning's fit calls it: the kept subset must stay
    assert torch.equal(model.whiten.weight, kept)


def test_unstructured_models_save_as_plain_weights(tmp_path):
    model = build_model(**_spec("lenet5"))
    global_unstructured(model, 0.5)
    save_pruned(tmp_path / "p.pt", model, _spec("lenet5"), META, {})
    loaded, _ = load_pruned(tmp_path / "p.pt")
    assert sparsity(loaded) == pytest.approx(0.5, abs=1e-3)


def test_mistakes_give_clear_errors(tmp_path):
    with pytest.raises(ValidationError, match=r"must be in \[0, 1\)"):
        PruneParams(amount=1.0)
    with pytest.raises(ValidationError, match=r"must be in \[0, 1\)"):
        PruneParams(sweep=[0.5, -0.1])
    model = build_model(**_spec("simplecnn"))
    with pytest.raises(ClassiflowError, match=r"prune.amount 1.5"):
        l1_unstructured(model, 1.5)
    with pytest.raises(ClassiflowError, match=r"'conv2'.*valid: features.0, features.3"):
        list(prune_steps(model, "l1_unstructured", 0.2, layers=["conv2"]))
    with pytest.raises(ClassiflowError, match="structured.*not supported"):
        structured(build_model(**_spec("vit")), 0.5, torch.randn(1, 3, 32, 32))
    with pytest.raises(ClassiflowError, match="run the prune stage first"):
        load_pruned(tmp_path / "missing.pt")


def _project(tmp_path):
    folder = write_image_folder(tmp_path / "shapes", per_class=20, size=16)
    layout = Layout.at(tmp_path / "project")
    download(str(folder), layout.raw)
    prepare(layout.raw, layout.prepared, DataParams(image_size=16, val_fraction=0.2))
    return layout


class _Steps:
    """A stage report that keeps the steps it was told about."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def metrics(self, values: dict, step: int) -> None:
        self.steps.append(step)


def test_the_stage_prunes_finetunes_measures_and_sweeps(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 1)  # fit() would otherwise take every core
    layout = _project(tmp_path)
    params = shrunk_params({"model": {"name": "resnet8", "width": 8}})
    prune_params = PruneParams(amount=0.5, steps=2, finetune_epochs=1, sweep=[0.5], latency_repeats=3)
    params = params.model_copy(update={"prune": prune_params})
    with pytest.raises(ClassiflowError, match="run the train stage first"):
        prune_stage.run(layout, params)
    for stage in (augment_stage, train_stage, evaluate_stage):
        stage.run(layout, params)
    epochs = _Steps()
    result = prune_stage.run(layout, params, epochs).value

    assert epochs.steps == [1, 2] and [s["step"] for s in result["steps_history"]] == [1, 2]
    assert result["steps_history"][0]["sparsity"] < result["steps_history"][1]["sparsity"] == result["sparsity"]
    metrics = read_json(layout.prune_metrics)
    assert metrics["method"] == "structured" and 0.6 < metrics["sparsity"] < 0.9
    assert metrics["params_after"] < metrics["params_before"]
    assert metrics["size_bytes_after"] < metrics["size_bytes_before"]
    for key in ("test_accuracy_before", "test_accuracy_after"):
        assert 0.0 <= metrics[key] <= 1.0
    drop = 100 * (metrics["test_accuracy_before"] - metrics["test_accuracy_after"])
    assert metrics["accuracy_drop_points"] == pytest.approx(drop)
    assert metrics["status"] == ("rejected" if drop > 1.0 else "accepted")
    assert metrics["reason"].startswith(f"lost {drop:.2f} points") and payload_status(layout) == metrics["status"]
    assert metrics["latency_ms_median_after"] > 0 and metrics["speedup"] > 0
    model, payload = load_pruned(layout.pruned_model)
    assert count_parameters(model) == metrics["params_after"] and payload["pruning"]["steps"] == 2

    rows = layout.prune_sweep_csv.read_text().splitlines()
    assert rows[0].startswith("method,amount,sparsity,params") and len(rows) == 5
    methods = [r.split(",")[0] for r in rows[1:]]
    assert methods[0] == "unpruned" and methods[-1] == "structured+finetune"
    assert set(methods[1:-1]) == {"global_unstructured", "structured"}
    assert layout.prune_sweep_png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ClassiflowError, match="not a classiflow checkpoint"):
        load_checkpoint(layout.pruned_model)  # a shrunk model never passes for a full one


def payload_status(layout) -> str:
    return load_pruned(layout.pruned_model)[1]["pruning"]["status"]


def test_a_pruned_model_over_the_accuracy_budget_is_rejected():
    assert prune_stage.verdict("structured", 5.35, 1.0) == (
        "rejected",
        "lost 5.35 points of test accuracy > prune.max_accuracy_drop 1",
    )
    assert prune_stage.verdict("structured", 0.4, 1.0)[0] == "accepted"
    assert prune_stage.verdict("structured", -0.2, 0.0)[0] == "accepted"  # a pruned model may gain
    assert prune_stage.verdict("none", 0.0, 1.0)[0] == "none"


def test_the_finetuning_rate_follows_the_optimisers_scale_unless_given():
    sgd, adamw = TrainParams(lr=1.5), TrainParams(optimizer="adamw", lr=0.002)
    assert prune_stage.finetune_config(sgd, PruneParams()).lr == pytest.approx(0.5)
    assert prune_stage.finetune_config(adamw, PruneParams()).lr == pytest.approx(0.002 / 3)
    assert prune_stage.finetune_config(adamw, PruneParams(finetune_lr=0.01)).lr == 0.01
