"""User mistakes give one clear line and a non-zero exit, never a traceback."""

import yaml
from typer.testing import CliRunner

from flows.cli import app
from tests.imagegen import write_image_folder

runner = CliRunner()


def _params(tmp_path, **sections):
    data = {"data": {"source": str(tmp_path / "shapes")}, **sections}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _invoke(tmp_path, monkeypatch, *args):
    monkeypatch.chdir(tmp_path)
    return runner.invoke(app, list(args))


def _assert_one_line_error(result, text):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert text in result.output.replace("\n", " ")


def test_typo_in_params(tmp_path, monkeypatch):
    path = _params(tmp_path, train={"epoch": 3})
    _assert_one_line_error(_invoke(tmp_path, monkeypatch, "check", "-p", path), "train.epoch: unknown key")


def test_missing_data_path(tmp_path, monkeypatch):
    path = _params(tmp_path)
    result = _invoke(tmp_path, monkeypatch, "download", "-p", path)
    _assert_one_line_error(result, "no such file or directory")


def test_train_before_prepare(tmp_path, monkeypatch, mlflow_uri):
    path = _params(tmp_path)
    _assert_one_line_error(_invoke(tmp_path, monkeypatch, "train", "-p", path), "run the prepare stage first")


def test_unknown_model_name(tmp_path, monkeypatch, mlflow_uri):
    write_image_folder(tmp_path / "shapes", per_class=10)
    path = _params(tmp_path, model={"name": "alexnet"})
    assert _invoke(tmp_path, monkeypatch, "download", "-p", path).exit_code == 0
    assert _invoke(tmp_path, monkeypatch, "prepare", "-p", path).exit_code == 0
    _assert_one_line_error(_invoke(tmp_path, monkeypatch, "train", "-p", path), "unknown model")
    assert not (tmp_path / "models" / "model.pt").exists()


def test_unreachable_mlflow_server(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    path = _params(tmp_path)
    _assert_one_line_error(_invoke(tmp_path, monkeypatch, "evaluate", "-p", path), "unreachable")


def test_wrong_checksum_leaves_nothing(tmp_path, monkeypatch, mlflow_uri):
    import tarfile

    folder = write_image_folder(tmp_path / "shapes", per_class=4)
    with tarfile.open(tmp_path / "shapes.tar.gz", "w:gz") as tf:
        tf.add(folder, arcname="shapes")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"data": {"source": "shapes.tar.gz", "sha256": "a" * 64}}))
    _assert_one_line_error(_invoke(tmp_path, monkeypatch, "download", "-p", str(path)), "sha256 mismatch")
    assert not (tmp_path / "data" / "raw").exists()


def test_each_stage_command_runs_its_own_prefect_task():
    from flows.cli import STAGES, TASK_MODULES, _task

    assert set(TASK_MODULES) == set(STAGES)
    assert {name: _task(name).name for name in STAGES} == {name: name for name in STAGES}
