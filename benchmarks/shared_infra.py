"""The shared stack's cold start, and the pipeline against it against a local SQLite store.

Starts scripts/infra_up.sh (PostgreSQL, moto S3, MLflow server) in a temp dir and times it; then runs `dvc repro`
of the same tiny generated project (tests/test_shared_infra.py's settings) once against local SQLite and once
against the server, alternating, and compares the stages' time. Writes a section of docs/benchmarks.md.

    python benchmarks/shared_infra.py [--repeats 2] [--no-write]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import machine, write_section  # noqa: E402
from tests.pipeline_project import tiny_project  # noqa: E402
from tests.team_stack import client_env, team_stack  # noqa: E402


def _repro(tmp: Path, name: str, env: dict) -> float:
    (tmp / name).mkdir()
    proj = tiny_project(tmp / name)
    start = time.perf_counter()
    subprocess.run(["dvc", "repro"], cwd=proj, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    times: dict[str, list[float]] = {"local SQLite": [], "shared server": []}
    with tempfile.TemporaryDirectory(prefix="team-") as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        with team_stack(tmp / "stack") as stack:
            cold = time.perf_counter() - start
            local_env = {k: v for k, v in client_env(stack).items() if k != "MLFLOW_TRACKING_URI"}
            for i in range(args.repeats):
                times["local SQLite"].append(_repro(tmp, f"local{i}", local_env))
                times["shared server"].append(_repro(tmp, f"server{i}", client_env(stack)))
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
