"""User mistakes give one clear line and a non-zero exit, never a traceback."""

import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from classiflow.cli import app
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


def test_stage_commands_and_prefect_tasks_follow_the_stage_table():
    from classiflow.pipeline import STAGES
    from tasks.stages import TASKS

    commands = {c.name for c in app.registered_commands}
    assert {s.name for s in STAGES} <= commands
    assert list(TASKS) == [s.name for s in STAGES]
    assert {name: t.name for name, t in TASKS.items()} == {s.name: s.name for s in STAGES}
    assert TASKS["download"].retries == 2


@pytest.mark.integration
def test_a_stage_process_imports_neither_prefect_nor_more_than_its_stage_needs():
    """The CLI itself imports no heavy library; a stage's runner pulls in what it needs, never Prefect."""
    code = (
        "import sys; from classiflow.cli import app; from classiflow.pipeline import BY_NAME; "
        "heavy = {'prefect', 'mlflow', 'torch', 'sklearn', 'cv2'}; "
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules})); "
        "BY_NAME[sys.argv[1]].load(); "
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))"
    )
    seen = {}
    for stage in ("download", "compare", "train"):
        out = subprocess.run([sys.executable, "-c", code, stage], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        seen[stage] = out.stdout.split("\n")[:2]
    assert all(cli == "[]" for cli, _ in seen.values()), seen
    assert "prefect" not in str(seen) and "torch" not in seen["download"][1], seen
