"""Which model `classiflow serve` loads (tasks/serving.resolve on a real sqlite registry) and the command itself."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import mlflow
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from classiflow.config import Params, parse_params
from classiflow.errors import ClassiflowError
from classiflow.tracking.refs import latest_version, parse_ref, resolve, version_metrics
from tests.serve_fixtures import export_model_dir

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]
TAGS = {"test_accuracy": "0.812500", "macro_f1": "0.8", "latency_ms_batch1": "0.42", "data_hash": "0" * 64}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return export_model_dir(tmp_path_factory.mktemp("model") / "export", channels=3)


@pytest.fixture(scope="module")
def registry(tmp_path_factory, exported):
    """'tiny': version 1 exported (@champion), version 2 registered before the export stage (no extra_files).

    Module-scoped (a new sqlite store costs seconds); a test that moves the alias puts it back."""
    root = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setenv("CLASSIFLOW_CACHE", str(root / "cache"))
        mp.chdir(root)
        params = Params()
        from classiflow.tracking.store import setup

        experiment = setup(params)
        client = MlflowClient()
        client.create_registered_model("tiny")

        def add(files: bool, tags: dict) -> str:
            with mlflow.start_run(experiment_id=experiment) as run:
                if files:
                    mlflow.log_artifacts(str(exported), "model/extra_files")
                mlflow.log_text("flavour", "model/MLmodel")
            version = client.create_model_version("tiny", f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
            for key, value in tags.items():
                client.set_model_version_tag("tiny", version.version, key, value)
            return str(version.version)

        v1 = add(True, TAGS | {"git_commit": "abc", "pipeline_run_id": "123", "classes": '["a"]'})
        v2 = add(False, {})
        client.set_registered_model_alias("tiny", "champion", v1)
        yield params, client, v1, v2, root


def test_references_parse_into_registry_names_or_directories(exported):
    params = parse_params({"register": {"model_name": "m"}})
    assert (parse_ref(None, params).name, parse_ref(None, params).alias) == ("m", "champion")
    assert (parse_ref("models:/m@staging", params).alias, parse_ref("m/3", params).version) == ("staging", "3")
    assert parse_ref("models:/m/7", params).version == "7" and parse_ref("m", params).alias == "champion"
    assert parse_ref(str(exported), params).path == exported.resolve()
    with pytest.raises(ClassiflowError, match="no such directory"):
        parse_ref("./not/here", params)
    with pytest.raises(ClassiflowError, match="expected"):
        parse_ref("models:/m/a/b", params)
    with pytest.raises(ClassiflowError, match="which registered model"):
        parse_ref(None, Params())  # no register.model_name and no reports/registration.json here


def test_version_metrics_keep_numbers_and_provenance_only():
    tags = TAGS | {"classes": '["a","b"]', "previous_champion": "2", "promotion.p_value": "0.3", "git_commit": "x"}
    metrics = version_metrics(tags)
    assert metrics == {"test_accuracy": 0.8125, "macro_f1": 0.8, "latency_ms_batch1": 0.42} | {
        "data_hash": "0" * 64,
        "git_commit": "x",
    }


def test_resolve_by_alias_version_and_path_downloads_once(registry, exported, tmp_path):
    params, client, v1, _, root = registry
    path, name, version, metrics = resolve("models:/tiny@champion", params)
    assert (
        (name, version) == ("tiny", v1) and (path / "model.onnx").is_file() and (path / "preprocessing.json").exists()
    )
    assert path.is_relative_to(root / "cache" / "serving" / "tiny")
    assert metrics["test_accuracy"] == 0.8125 and metrics["data_hash"] == "0" * 64 and "pipeline_run_id" not in metrics
    stamp = (path / "model.onnx").stat().st_mtime_ns
    for ref in ("tiny@champion", f"tiny/{v1}", f"models:/tiny/{v1}", "tiny"):
        assert resolve(ref, params)[:3] == (path, "tiny", v1)
    assert (path / "model.onnx").stat().st_mtime_ns == stamp  # cached, not downloaded again
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    local = resolve(str(exported), params)
    assert local[0] == exported.resolve() and local[1] == "local" and local[3] == {"data_hash": "0" * 64}
    (tmp_path / "dl" / "extra_files").mkdir(parents=True)
    for f in exported.iterdir():
        (tmp_path / "dl" / "extra_files" / f.name).write_bytes(f.read_bytes())
    assert resolve(str(tmp_path / "dl"), params)[0] == (tmp_path / "dl" / "extra_files").resolve()


def test_wrong_references_say_what_exists(registry):
    params, client, v1, v2, _ = registry
    with pytest.raises(ClassiflowError, match=r"no registered model named 'nope' \(registered: tiny\)"):
        resolve("models:/nope@champion", params)
    with pytest.raises(ClassiflowError, match=rf"tiny has no @staging \(@champion -> version {v1}\)"):
        resolve("tiny@staging", params)
    with pytest.raises(ClassiflowError, match=rf"tiny has no version 9 \(versions: {v1}, {v2}\)"):
        resolve("models:/tiny/9", params)
    with pytest.raises(ClassiflowError, match="registered before the export stage.*re-run the pipeline"):
        resolve(f"tiny/{v2}", params)


def test_latest_version_follows_the_alias(registry, exported):
    params, client, v1, v2, _ = registry
    assert latest_version("tiny@champion", params) == v1
    client.set_registered_model_alias("tiny", "champion", v2)
    try:
        assert latest_version("models:/tiny@champion", params) == v2
    finally:
        client.set_registered_model_alias("tiny", "champion", v1)
    assert latest_version(str(exported), params) is None
    with pytest.raises(ClassiflowError, match="no registered model"):
        latest_version("nope@champion", params)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CLASSIFLOW_API_TOKEN", "MLFLOW_TRACKING_URI")}
    env |= {"PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    return env | {"CLASSIFLOW_CACHE": str(tmp_path / "cache"), "MLFLOW_DISABLE_TELEMETRY": "true"} | extra


def _serve(tmp_path: Path, *args: str, **env: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "classiflow.cli", "serve", *args]
    return subprocess.Popen(
        cmd, cwd=tmp_path, env=_env(tmp_path, **env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_serve_with_a_wrong_model_exits_1_before_listening(tmp_path):
    port = _free_port()
    proc = _serve(tmp_path, "--model", "models:/nope@champion", "--port", str(port))
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 1, out
    assert "error: no registered model named 'nope'" in out and "Traceback" not in out
    assert "Uvicorn running" not in out and "Started server" not in out


SLIM = """
import sys, uvicorn
seen = {}
uvicorn.run = lambda app, **kw: seen.update(kw, app=app)
from classiflow.cli import app
try:
    app(["serve", "--model", sys.argv[1], "--host", "0.0.0.0", "--port", "9123"], prog_name="classiflow")
except SystemExit as stop:
    assert not stop.code, stop.code
heavy = [m for m in ("torch", "prefect", "mlflow") if m in sys.modules]
print("RESULT", seen["host"], seen["port"], type(seen["app"]).__name__, heavy)
"""


def test_serve_imports_neither_torch_nor_prefect_and_options_override_params(tmp_path, exported):
    (tmp_path / "params.yaml").write_text("serve:\n  port: 8111\n  host: 127.0.0.1\n")
    done = subprocess.run(
        [sys.executable, "-c", SLIM, str(exported)],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "RESULT 0.0.0.0 9123 FastAPI []" in done.stdout  # what the slim image (no torch, no prefect) needs
    assert "without CLASSIFLOW_API_TOKEN" in done.stderr


def test_serve_answers_with_the_local_model_and_requires_the_token(tmp_path, exported):
    port = _free_port()
    proc = _serve(tmp_path, "--model", str(exported), "--port", str(port), CLASSIFLOW_API_TOKEN="s3cret")
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.3)
        buf = io.BytesIO()
        Image.new("L", (30, 20), 200).save(buf, "PNG")  # gray, and not square: converted and resized
        files = {"file": ("x.png", buf.getvalue(), "image/png")}
        assert httpx.post(f"{base}/predict", files=files, timeout=10).status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        answer = httpx.post(f"{base}/predict", files=files, headers=auth, params={"top_k": 2}, timeout=10)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model"] == "local" and body["version"] == str(exported.resolve())
        assert len(body["predictions"]) == 2 and 0.0 <= body["predictions"][0]["probability"] <= 1.0
        meta = httpx.get(f"{base}/metadata", headers=auth, timeout=10).json()
        assert meta["runtime"] == "onnxruntime" and meta["metrics"] == {"data_hash": "0" * 64}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode is not None
