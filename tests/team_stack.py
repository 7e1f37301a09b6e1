"""The stack of scripts/infra_up.sh as a context manager, and the environment of a machine that only uses it; for
tests/test_shared_infra.py and benchmarks/shared_infra.py."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.pipeline_project import BIN, REPO

CLIENT_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL", "PGPASSWORD")


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


@contextlib.contextmanager
def team_stack(folder: Path) -> Iterator[dict]:
    """Start the stack in ``folder`` on free ports (a throw-away cluster, fsync off) and stop it afterwards. Yields
    team.env and secrets.env as one dict, plus ``dir`` and ``up_env`` (what starts it again)."""
    pgdata = Path(tempfile.mkdtemp(prefix="classiflow-pg-", dir="/var/tmp"))  # reachable by the postgres user
    if os.getuid() == 0:
        shutil.chown(pgdata, "postgres")
    pg, s3, mlflow = free_ports(3)
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PG_FSYNC": "off", "PGDATA_DIR": str(pgdata)}
    env |= {"PG_PORT": str(pg), "S3_PORT": str(s3), "MLFLOW_PORT": str(mlflow)}
    up = subprocess.run(["bash", REPO / "scripts/infra_up.sh", folder], env=env, capture_output=True, text=True)
    try:
        if up.returncode != 0:
            raise RuntimeError(f"scripts/infra_up.sh failed:\n{up.stdout}{up.stderr}")
        yield {"dir": folder, "up_env": env, **_read_env(folder / "team.env"), **_read_env(folder / "secrets.env")}
    finally:
        subprocess.run(["bash", REPO / "scripts/infra_down.sh", folder], env=env, capture_output=True)
        shutil.rmtree(pgdata, ignore_errors=True)


def client_env(stack: dict, **extra: str) -> dict:
    """What a team member's machine has: the server's URL, no S3 or database credentials."""
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_SECRETS and not k.startswith("MLFLOW_")}
    env |= {"PATH": f"{BIN}{os.pathsep}{env['PATH']}", "MLFLOW_TRACKING_URI": stack["MLFLOW_TRACKING_URI"]}
    return env | extra
