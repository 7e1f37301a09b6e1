"""The serving image's code path: `classiflow serve` with only what docker/requirements-serve.txt installs.

docker/Dockerfile.serve installs the project with --no-deps beside docker/requirements-serve.txt. Here a
real `classiflow serve` resolves models:/tiny@champion from a real MLflow server on loopback (proxied
artifacts, as in docker-compose.yml) and answers requests, in a child Python whose import hook makes every
installed package outside that file's dependency closure (read from the installed metadata) unimportable,
as in the image. Any attempt at torch, torchvision, prefect or dvc fails the test with the import chain
that tried; other refused imports are optional ones that must fall back. At exit the child reports the
modules it imported, which must all come from that closure.
"""

from __future__ import annotations

import io
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from PIL import Image

from tests.serve_fixtures import export_model_dir

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
TOKEN = "docker-test-token"
PROJECT = {"classiflow"}

# Run in the child: refuse what the image lacks (recording who asked), report sys.modules at exit, run the CLI.
BOOT = r"""
import atexit, importlib.abc, importlib.util, json, os, sys
HEAVY = {"torch", "torchvision", "prefect", "dvc"}
ABSENT = HEAVY | set(json.loads(os.environ["DOCKER_TEST_ABSENT"]))
attempts = []
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top not in ABSENT:
            return None
        chain, frame = [], sys._getframe(1)
        while frame:
            module, code = frame.f_globals.get("__name__", "?"), frame.f_code.co_name
            if code == "<module>" or module.split(".")[0] == "classiflow":
                chain.append(module if code == "<module>" else f"{module}.{code}()")
            frame = frame.f_back
        attempts.append({"heavy": top in HEAVY, "chain": " -> ".join([*reversed(chain), name])})
        raise ModuleNotFoundError(f"No module named {name!r} (not in the serving image)", name=name)
sys.meta_path.insert(0, Refuse())
_find_spec = importlib.util.find_spec
def find_spec(name, package=None):  # a presence probe: in the image the answer is None, not an error
    return None if name.split(".")[0] in ABSENT else _find_spec(name, package)
importlib.util.find_spec = find_spec
out, args = sys.argv[1], sys.argv[2:]
atexit.register(lambda: open(out, "w").write(json.dumps({"modules": sorted(sys.modules), "attempts": attempts})))
import classiflow.cli, classiflow.tracking.refs, classiflow.serving.app  # noqa: E401
classiflow.cli.app(args=args, prog_name="classiflow")
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:] if log.exists() else ""


def _wait(url: str, proc: subprocess.Popen, log: Path, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[:4]} exited {proc.returncode}:\n{_tail(log)}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    raise AssertionError(f"{url} not up after {seconds} s:\n{_tail(log)}")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """An MLflow server like the compose one (SQL store, --serve-artifacts), with model 'tiny' @champion."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("mlflow")
    port = _port()
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "art")]
    log = root / "server.log"
    with log.open("w") as out:  # a file, not a pipe: nobody drains a pipe while the tests run
        proc = subprocess.Popen([*cmd, "--serve-artifacts", "--workers", "1"], cwd=root, stdout=out, stderr=out)
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait(uri + "/health", proc, log)
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        run = client.create_run(client.create_experiment("docker-serving"))
        exported = export_model_dir(root / "export", channels=3)
        client.log_artifacts(run.info.run_id, str(exported), "model/extra_files")
        client.log_text(run.info.run_id, "flavour", "model/MLmodel")
        client.set_terminated(run.info.run_id)
        client.create_registered_model("tiny")
        version = client.create_model_version("tiny", f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
        client.set_registered_model_alias("tiny", "champion", version.version)
        yield uri
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _closure() -> set[str]:
    """Distributions that `pip install -r docker/requirements-serve.txt` brings, from the installed metadata."""
    lines = (REPO / "docker" / "requirements-serve.txt").read_text().splitlines()
    seen, todo = set(), [_norm(Requirement(x).name) for x in lines if x.strip() and not x.startswith("#")]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for line in metadata.requires(name) or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(_norm(req.name))
    return seen


ALLOWED = _closure()
OWNERS = metadata.packages_distributions()  # top-level module -> distributions that ship it
ABSENT = sorted(t for t, ds in OWNERS.items() if t not in PROJECT and not {_norm(d) for d in ds} & ALLOWED)


def _child(tmp_path: Path, args: list[str], uri: str) -> subprocess.Popen:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": uri}
    env |= {"CLASSIFLOW_CACHE": str(tmp_path / "cache"), "CLASSIFLOW_API_TOKEN": TOKEN, "DO_NOT_TRACK": "1"}
    env |= {"MLFLOW_DISABLE_TELEMETRY": "true", "DOCKER_TEST_ABSENT": json.dumps(ABSENT)}
    cmd = [sys.executable, "-c", BOOT, str(tmp_path / "imported.json"), *args]
    with (tmp_path / "child.log").open("w") as out:
        return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)


def _check_imports(tmp_path: Path) -> None:
    report = json.loads((tmp_path / "imported.json").read_text())
    heavy = [a["chain"] for a in report["attempts"] if a["heavy"]]
    assert not heavy, "the serving path tried to import:\n" + "\n".join(heavy)
    # site's .pth hooks run before the child's import hook; cython_runtime is made by Cython extensions
    tops = {m.split(".")[0] for m in report["modules"]} - PROJECT - set(sys.stdlib_module_names)
    tops -= {"__main__", "_distutils_hack", "cython_runtime"}
    outside = {t: OWNERS.get(t) for t in tops if not {_norm(d) for d in OWNERS.get(t, [])} & ALLOWED}
    outside = {t: d for t, d in outside.items() if d or not t.startswith("_")}  # _C helpers of a package
    assert not outside, f"imported but not installed by docker/requirements-serve.txt: {outside}"


def test_serve_help_without_torch_or_prefect(tmp_path):
    proc = _child(tmp_path, ["serve", "--help"], "http://127.0.0.1:9")
    proc.wait(timeout=120)
    out = _tail(tmp_path / "child.log")
    assert proc.returncode == 0, out
    assert "--model" in out and "--host" in out
    _check_imports(tmp_path)


def _multipart(data: bytes) -> tuple[bytes, str]:
    boundary = "classiflowdockertest"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
    body = (head + "Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _call(url: str, data: bytes | None = None, ctype: str | None = None, token: str | None = TOKEN):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if ctype:
        headers["Content-Type"] = ctype
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _serve(tmp_path: Path, uri: str) -> tuple[subprocess.Popen, str]:
    """The child serving @champion on a free port; another try if another process took the port meanwhile."""
    for _ in range(3):
        port = _port()
        args = ["serve", "--model", "models:/tiny@champion", "--host", "127.0.0.1", "--port", str(port)]
        proc = _child(tmp_path, args, uri)
        try:
            _wait(f"http://127.0.0.1:{port}/health", proc, tmp_path / "child.log")
            time.sleep(0.5)  # a bind failure exits at once: make sure /health was this child answering
            if proc.poll() is not None:
                raise AssertionError(f"exited {proc.returncode}:\n{_tail(tmp_path / 'child.log')}")
            return proc, f"http://127.0.0.1:{port}"
        except AssertionError:
            if proc.poll() is None or "address already in use" not in _tail(tmp_path / "child.log"):
                proc.kill()
                raise
    raise AssertionError("no free port in 3 tries")


def test_serve_the_champion_from_an_mlflow_server_without_torch_or_prefect(tmp_path, mlflow_server):
    proc, base = _serve(tmp_path, mlflow_server)
    try:
        status, body = _call(base + "/metadata")
        assert status == 200, body
        meta = json.loads(body)
        assert (meta["name"], str(meta["version"]), meta["runtime"]) == ("tiny", "1", "onnxruntime"), meta
        png = io.BytesIO()
        Image.new("RGB", (24, 24), (200, 30, 30)).save(png, format="PNG")
        status, body = _call(base + "/predict", *_multipart(png.getvalue()))
        assert status == 200, body
        predictions = json.loads(body)["predictions"]
        assert {p["class"] for p in predictions} <= {"circle", "square", "triangle"} and predictions
        assert _call(base + "/predict", png.getvalue(), "image/png", token=None)[0] == 401
        status, body = _call(base + "/metrics")
        assert status == 200 and b"# TYPE" in body
        assert proc.poll() is None, "the server died while answering"
    except AssertionError as err:
        raise AssertionError(f"{err}\n--- classiflow serve log ---\n{_tail(tmp_path / 'child.log')}") from None
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert (tmp_path / "imported.json").exists(), f"no report at exit:\n{_tail(tmp_path / 'child.log')}"
    _check_imports(tmp_path)
