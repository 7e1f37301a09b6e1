"""A throw-away copy of the project wired to a tiny generated archive, for end-to-end tests."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path

import yaml

from classiflow.data.archive import sha256_file
from tests.imagegen import write_image_folder

REPO = Path(__file__).resolve().parents[1]
COPIED = ["dvc.yaml", "params.yaml", ".dvcignore", "prefect.toml", "classiflow", "tasks", "flows", "recipes"]


def make_project(tmp: Path, **param_updates) -> Path:
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
    folder = write_image_folder(tmp / "shapes", splits={"train": 24, "test": 8}, size=20)
    archive = tmp / "shapes.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(folder, arcname="shapes")
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["data"].update(source=str(archive), sha256=sha256_file(archive), image_size=16, val_fraction=0.2)
    params["train"].update(epochs=2, batch_size=16, lr=0.01, device="cpu")
    params["baseline"] = {"codebook_size": 32, "codebook_sample": 2000}
    params["prune"].update(finetune_epochs=1, sweep=[0.5], latency_repeats=3)
    # 24 test images: one flipped prediction is 4 points, so the int8 gates are checked by tests/test_export.py
    params["export"].update(
        calibration_images=16,
        latency_repeats=3,
        throughput_batch=8,
        int8_max_accuracy_drop=100.0,
        int8_min_agreement=0.0,
    )
    for dotted, value in param_updates.items():
        section, key = dotted.split("__")
        params[section][key] = value
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "add", "-A"], cwd=proj, check=True)
    identity = ["-c", "user.name=classiflow tests", "-c", "user.email=tests@classiflow.invalid"]
    subprocess.run(["git", *identity, "commit", "-qm", "project"], cwd=proj, check=True)
    return proj
