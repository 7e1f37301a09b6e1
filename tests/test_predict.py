"""Batch prediction: `classiflow predict` over files and folders, and the Prefect batch-predict-flow with MLflow."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from classiflow.cli import app
from classiflow.serving.batch import collect, header, predict_files, summarize
from classiflow.serving.images import decode
from classiflow.serving.model import load_model_dir
from tests.imagegen import write_image_folder
from tests.serve_fixtures import CLASSES, SIZE, export_model_dir

runner = CliRunner()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return export_model_dir(tmp_path_factory.mktemp("model") / "export", channels=3)


@pytest.fixture
def folder(tmp_path):
    """Six good images in class folders, one corrupt PNG, one truncated JPEG, a text file and a nested GIF."""
    root = write_image_folder(tmp_path / "incoming", per_class=2, size=20)
    (root / "circle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 10, 10)).save(buf, "JPEG")
    (root / "square" / "cut.jpg").write_bytes(buf.getvalue()[:200])
    (root / "notes.txt").write_text("not an image")
    (root / "deep" / "deeper").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "deep" / "deeper" / "anim.gif")
    return root


def _rows(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_collect_walks_folders_keeps_image_suffixes_and_names_missing_paths(folder, tmp_path):
    inputs = collect([folder, folder / "circle" / "0000.png", folder / "notes.txt"])
    names = [p.name for p in inputs.files]
    assert len(names) == 9 and names.count("0000.png") == 3  # one per class folder, the repeat not twice
    assert "notes.txt" in names  # named explicitly: tried (and will fail as not an image)
    assert [p.name for p in inputs.skipped] == ["anim.gif"]
    from classiflow.errors import ClassiflowError

    with pytest.raises(ClassiflowError, match="no such file or directory"):
        collect([tmp_path / "nope"])


def test_batch_rows_match_single_predictions_and_bad_files_become_errors(folder, exported):
    model = load_model_dir(exported)
    files = collect([folder]).files
    rows = predict_files(model, files, batch_size=3)
    assert [r.path for r in rows] == [str(p) for p in files]
    bad = {r.path.rsplit("/", 1)[-1]: r.error for r in rows if r.error}
    assert set(bad) == {"broken.png", "cut.jpg"} and "truncated or corrupt" in bad["cut.jpg"]
    for path, row in zip(files, rows, strict=True):
        if row.error is None:
            alone = model.predict(decode(path.read_bytes(), SIZE, 3)[None])[0]
            np.testing.assert_allclose(row.probabilities, alone, atol=1e-5)
    summary = summarize(rows, model.classes, skipped=2)
    assert (summary.images, summary.failed, summary.skipped) == (6, 2, 2)
    assert sum(summary.counts.values()) == 6 and set(summary.counts) == set(CLASSES)
    assert sum(summary.shares.values()) == pytest.approx(1.0)


def test_predict_cli_writes_every_file_with_an_error_column(folder, exported, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml here: the defaults apply
    out = tmp_path / "out" / "predictions.csv"
    result = runner.invoke(app, ["predict", str(folder), "--model", str(exported), "--out", str(out), "--top-k", "2"])
    assert result.exit_code == 0, result.output
    assert "2 of 8 files could not be read" in result.stderr and "skipped 2 files" in result.stderr
    rows = _rows(out)
    expected = ["path", "predicted", "probability", "top2", "top2_probability", *(f"prob_{c}" for c in CLASSES)]
    assert list(rows[0]) == header(CLASSES, 2) == [*expected, "decision", "error"]
    good = [r for r in rows if not r["error"]]
    assert len(rows) == 8 and len(good) == 6
    for row in good:
        probs = {c: float(row[f"prob_{c}"]) for c in CLASSES}
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-4)
        assert row["predicted"] == max(probs, key=probs.get) and float(row["probability"]) == max(probs.values())
        assert row["top2"] != row["predicted"] and float(row["top2_probability"]) <= float(row["probability"])
        assert row["decision"] == row["predicted"]  # no operating point: the answer is the top class
    for row in rows:
        if row["error"]:
            assert row["predicted"] == row["probability"] == row[f"prob_{CLASSES[0]}"] == ""
    assert f"6 images predicted with the model in {exported}" in result.stdout
    assert not list(out.parent.glob(".*.tmp"))  # the atomic write left no temporary file


def test_predict_cli_exits_1_when_nothing_decodes_and_on_missing_paths(exported, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"GIF89a not a png")
    result = runner.invoke(app, ["predict", "bad", "--model", str(exported), "--out", "p.csv"])
    assert result.exit_code == 1 and "none of the 1 files could be decoded" in result.stderr
    assert "GIF images are not accepted" in _rows(tmp_path / "p.csv")[0]["error"]
    empty = runner.invoke(app, ["predict", str(tmp_path), "missing.png", "--model", str(exported)])
    assert empty.exit_code == 1 and "missing.png: no such file or directory" in empty.stderr
    wrong = runner.invoke(app, ["predict", "bad", "--model", str(tmp_path / "bad")])
    assert wrong.exit_code == 1 and "no preprocessing.json" in wrong.stderr


@pytest.mark.integration
def test_batch_predict_flow_logs_counts_distribution_and_csv(folder, exported, tmp_path, monkeypatch, mlflow_uri):
    import mlflow
    from prefect.testing.utilities import prefect_test_harness

    from flows.predict import batch_predict_flow

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    (tmp_path / "params.yaml").write_text("tracking:\n  experiment: batch\n")
    out = tmp_path / "flow.csv"
    with prefect_test_harness(server_startup_timeout=120):
        result = batch_predict_flow(str(folder), model=str(exported), out=str(out))
    assert (result["images"], result["failed"], result["skipped"]) == (6, 2, 2)
    assert len(_rows(out)) == 8
    client = mlflow.MlflowClient(mlflow_uri)
    run = client.get_run(result["run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "batch"
    assert run.data.tags["classiflow.kind"] == "predict" and run.info.status == "FINISHED"
    assert run.data.params["model.version"] == str(exported) and run.data.params["input.files"] == "8"
    metrics = run.data.metrics
    assert (metrics["images"], metrics["failed"], metrics["skipped"]) == (6, 2, 2)
    assert sum(metrics[f"count.{c}"] for c in CLASSES) == 6
    assert sum(metrics[f"share.{c}"] for c in CLASSES) == pytest.approx(1.0)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"flow.csv", "class_distribution.png", "class_counts.json"}
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="class_counts.json")
    assert json.loads(open(local).read())["counts"] == result["counts"]
    png = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="class_distribution.png")
    assert Image.open(png).format == "PNG"


def test_prefect_yaml_deploys_the_flow_with_parameters_it_takes():
    import inspect
    from pathlib import Path

    import yaml

    from flows.predict import batch_predict_flow
    from flows.sweep import sweep_flow
    from flows.train import train_flow

    spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "prefect.yaml").read_text())
    entrypoints = {d["entrypoint"]: d for d in spec["deployments"]}
    for flow, entrypoint in ((train_flow, "flows/train.py:train_flow"), (sweep_flow, "flows/sweep.py:sweep_flow")):
        assert entrypoints[entrypoint]["name"] == "local"  # what `<flow name>/local` runs, e.g. sweep.deployment
        assert set(entrypoints[entrypoint]["parameters"]) <= set(inspect.signature(flow.fn).parameters)
    folder = {d["name"]: d for d in spec["deployments"]}["folder"]
    assert (
        folder["entrypoint"] == "flows/predict.py:batch_predict_flow"
        and batch_predict_flow.name == "batch-predict-flow"
    )
    assert set(folder["parameters"]) <= set(inspect.signature(batch_predict_flow.fn).parameters)
    assert "folder" in folder["parameters"]  # the one required parameter has a default in the deployment
