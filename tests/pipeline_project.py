"""A throw-away copy of the project wired to an archive, and the commands that run it, for end-to-end tests."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from classiflow.checksum import sha256_file
from classiflow.pipeline import STAGES as PIPELINE

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STAGES = tuple(stage.name for stage in PIPELINE)
COPIED = ["dvc.yaml", "params.yaml", ".dvcignore", "prefect.toml", "classiflow", "tasks", "flows", "recipes"]


# a whole pipeline in about a minute: 16x16 shapes, one epoch, a one-point prune sweep, few latency repeats
TINY = {
    "data": {"image_size": 16},
    "train": {"epochs": 1, "min_steps": 0},
    "prune": {"finetune_epochs": 1, "sweep": [0.5], "latency_repeats": 3},
    "export": {"latency_repeats": 3, "calibration_images": 16, "throughput_batch": 8},
    "baseline": {"codebook_sample": 5000},
}


def tiny_project(tmp: Path, updates: dict[str, dict] | None = None) -> Path:
    """``copy_project`` on an archive of generated shapes (24 train and 8 test images per class) with ``TINY``."""
    from tests.imagegen import write_image_folder

    folder = write_image_folder(tmp / "shapes", splits={"train": 24, "test": 8}, size=20)
    with tarfile.open(tmp / "shapes.tar.gz", "w:gz") as tf:
        tf.add(folder, arcname="shapes")
    return copy_project(tmp, tmp / "shapes.tar.gz", TINY | (updates or {}))


def copy_project(tmp: Path, archive: Path, updates: dict[str, dict]) -> Path:
    """The project's code and committed params.yaml in ``tmp/proj``, reading ``archive``, with ``updates``
    (section -> keys) applied on top, committed to a fresh git repository with DVC initialised."""
    proj = tmp / "proj"
    proj.mkdir()
    for name in COPIED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, proj / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, proj / name)
    subprocess.run(["git", "init", "-q"], cwd=proj, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=proj, check=True)
    subprocess.run(["dvc", "config", "core.analytics", "false"], cwd=proj, check=True)
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["data"].update(source=str(archive), sha256=sha256_file(archive))
    for section, values in updates.items():
        params.setdefault(section, {}).update(values)
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "add", "-A"], cwd=proj, check=True)
    identity = ["-c", "user.name=classiflow tests", "-c", "user.email=tests@classiflow.invalid"]
    subprocess.run(["git", *identity, "commit", "-qm", "project"], cwd=proj, check=True)
    return proj


def _env() -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "PREFECT_API_URL"))
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    return env


def run_in(proj: Path, *command: str, check: bool = True) -> subprocess.CompletedProcess:
    """``command`` (default ``dvc repro``) in ``proj`` with this interpreter's tools first on PATH."""
    command = command or ("dvc", "repro")
    done = subprocess.run(command, cwd=proj, env=_env(), capture_output=True, text=True, timeout=900)
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def repro(proj: Path, *command: str) -> str:
    done = run_in(proj, *command)
    return done.stdout + done.stderr


def client(proj: Path):
    import mlflow

    uri = f"sqlite:///{proj / 'mlflow.db'}"
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def read(proj: Path, name: str) -> dict:
    return json.loads((proj / name).read_text())


def check_every_export_is_verified_or_rejected(proj: Path) -> dict:
    """Every format is the reference, verified or rejected with a reason; only verified files are shipped."""
    exported = read(proj, "metrics/export.json")
    explain = read(proj, "models/export/preprocessing.json")["explain"]
    shipped = {"preprocessing.json", *([explain["weights"]] if explain else [])}
    for formats in (v for v in exported.values() if isinstance(v, dict)):
        for fmt, row in formats.items():
            assert row["status"] in ("reference", "verified", "rejected"), (fmt, row)
            if row["status"] == "rejected":
                assert row["reason"].startswith(row["file"]), row
            elif row["status"] == "verified":
                shipped.add(row["file"])
    assert {p.name for p in (proj / "models/export").iterdir()} == shipped
    assert exported["trained"]["onnx-int8-static"]["status"] == "verified", exported["trained"]["onnx-int8-static"]
    pruned = read(proj, "metrics/prune.json")
    assert pruned["status"] in ("accepted", "rejected") and pruned["reason"]
    assert ("pruned" in exported) == (pruned["status"] == "accepted")
    return exported


def check_registered(proj: Path, name: str):
    """The challenger's accuracy tag, evaluate.json and predictions.csv are one set of predictions."""
    evaluation = read(proj, "metrics/evaluate.json")
    version = client(proj).get_model_version_by_alias(name, "challenger")
    assert float(version.tags["test_accuracy"]) == pytest.approx(evaluation["accuracy"], abs=1e-6)
    rows = list(csv.DictReader(open(proj / "reports/predictions.csv")))
    assert np.mean([r["actual"] == r["predicted"] for r in rows]) == pytest.approx(evaluation["accuracy"])
    return version
