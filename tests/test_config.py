from pathlib import Path

import pytest

from classiflow.config import Params, load_params, parse_params
from classiflow.errors import ClassiflowError

REPO = Path(__file__).resolve().parents[1]


def test_committed_params_file_is_valid():
    params = load_params(REPO / "params.yaml")
    assert params.model.name == "fastnet"
    assert params.data.source == "cifar10"
    assert params.flat()["register.alias"] == "challenger"


def test_the_code_defaults_are_the_committed_params_file():
    """One set of defaults: a key added to the code and not to params.yaml (or changed in one) fails here."""
    assert load_params(REPO / "params.yaml") == Params()


def test_unknown_key_names_the_key():
    with pytest.raises(ClassiflowError, match=r"train\.epochz: unknown key"):
        parse_params({"train": {"epochz": 3}})


def test_wrong_type_names_the_key_and_value():
    with pytest.raises(ClassiflowError) as err:
        parse_params({"train": {"epochs": "ten"}})
    assert "train.epochs" in str(err.value) and "'ten'" in str(err.value)
    assert "\n" not in str(err.value)


def test_out_of_range_value_is_refused():
    with pytest.raises(ClassiflowError, match="data.val_fraction"):
        parse_params({"data": {"val_fraction": 0.9}})


def test_bad_yaml_is_one_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train: [epochs: 1\n")
    with pytest.raises(ClassiflowError) as err:
        load_params(path)
    assert "not valid YAML" in str(err.value) and "\n" not in str(err.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ClassiflowError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_overrides_apply_dotted_keys_and_are_validated():
    params = parse_params({}, overrides={"train.epochs": 2, "data.source": "x.tar"})
    assert params.train.epochs == 2 and params.data.source == "x.tar"
    with pytest.raises(ClassiflowError, match="train.epochs"):
        parse_params({}, overrides={"train.epochs": 0})


def test_champion_alias_is_reserved_for_promote():
    with pytest.raises(ClassiflowError, match="champion"):
        parse_params({"register": {"alias": "champion"}})


def test_flat_has_every_section():
    sections = {k.split(".")[0] for k in Params().flat()}
    expected = {"data", "model", "augment", "pretrain", "train", "evaluate", "prune", "export", "register", "promote"}
    assert sections == expected | {"baseline", "tracking", "serve", "sweep"}


@pytest.mark.parametrize(
    ("section", "value", "message"),
    [
        ("prune", {"amount": 1.0}, r"prune.amount: .*must be in \[0, 1\)"),
        ("prune", {"method": "random"}, "prune.method"),
        ("export", {"formats": ["torchscript"], "int8": "static"}, "add 'onnx' to formats"),
        ("promote", {"policy": "always"}, "promote.policy"),
        ("promote", {"alpha": 1.5}, "promote.alpha"),
    ],
)
def test_prune_export_and_promote_sections_are_validated(section, value, message):
    with pytest.raises(ClassiflowError, match=message):
        parse_params({section: value})
