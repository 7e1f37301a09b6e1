"""The shared stack's cold start, and the pipeline against it against a local SQLite store.

Starts scripts/infra_up.sh (PostgreSQL, moto S3, MLflow server) in a temp dir and times it; then runs `dvc repro`
of the same tiny generated project (tests/test_shared_infra.py's settings) once against local SQLite and once
against the server, alternating, and compares the stages' time. Writes a section of docs/benchmarks.md.

    python benchmarks/shared_infra.py [--repeats 2] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import machine, write_section  # noqa: E402
from tests.imagegen import write_image_folder  # noqa: E402
from tests.pipeline_project import BIN, copy_project  # noqa: E402
from tests.test_shared_infra import SHORT, _client_env, _ports, _read_env  # noqa: E402


def _stack(tmp: Path) -> tuple[dict, dict, float]:
    pgdata = Path(tempfile.mkdtemp(prefix="classiflow-pg-", dir="/var/tmp"))
    if os.getuid() == 0:
        shutil.chown(pgdata, "postgres")
    pg, s3, mlflow = _ports(3)
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PG_FSYNC": "off", "PGDATA_DIR": str(pgdata)}
    env |= {"PG_PORT": str(pg), "S3_PORT": str(s3), "MLFLOW_PORT": str(mlflow)}
    start = time.perf_counter()
    subprocess.run(["bash", REPO / "scripts/infra_up.sh", tmp / "stack"], env=env, check=True)
    seconds = time.perf_counter() - start
    return {**_read_env(tmp / "stack" / "team.env"), "pgdata": str(pgdata)}, env, seconds


def _repro(tmp: Path, archive: Path, name: str, env: dict) -> float:
    (tmp / name).mkdir()
    proj = copy_project(tmp / name, archive, SHORT)
    start = time.perf_counter()
    subprocess.run(["dvc", "repro"], cwd=proj, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="team-") as tmp:
        tmp = Path(tmp)
        folder = write_image_folder(tmp / "shapes", splits={"train": 24, "test": 8}, size=20)
        with tarfile.open(tmp / "shapes.tar.gz", "w:gz") as tf:
            tf.add(folder, arcname="shapes")
        stack, stack_env, cold = _stack(tmp)
        local_env = {k: v for k, v in _client_env(stack).items() if k != "MLFLOW_TRACKING_URI"}
        try:
            times: dict[str, list[float]] = {"local SQLite": [], "shared server": []}
            for i in range(args.repeats):
                times["local SQLite"].append(_repro(tmp, tmp / "shapes.tar.gz", f"local{i}", local_env))
                times["shared server"].append(_repro(tmp, tmp / "shapes.tar.gz", f"server{i}", _client_env(stack)))
        finally:
            subprocess.run(["bash", REPO / "scripts/infra_down.sh", tmp / "stack"], env=stack_env, check=False)
            shutil.rmtree(stack["pgdata"], ignore_errors=True)
    local, server = (statistics.median(times[k]) for k in times)
    rows = [f"| {k} | {statistics.median(v):.1f} | {', '.join(f'{x:.1f}' for x in v)} |" for k, v in times.items()]
    markdown = f"""## The shared stack (`benchmarks/shared_infra.py`)

`python benchmarks/shared_infra.py --repeats {args.repeats}` on {machine()}. Cold start of
`scripts/infra_up.sh` (initdb, PostgreSQL, moto S3, the MLflow server answering `/health`): **{cold:.1f} s**.
`dvc repro` of a tiny generated project (every stage, seconds of work each, so tracking is a large share)
tracked in a local SQLite file against the MLflow server on PostgreSQL with S3 artifacts, alternating
(seconds): the server runs the pipeline at **{local / server:.2f}x** the speed of the local store.

| tracking | median s | runs |
|---|---:|---|
{chr(10).join(rows)}
"""
    print(markdown)
    if not args.no_write:
        write_section("shared-infra", markdown)


if __name__ == "__main__":
    main()
