"""The README's Prefect path: server, work pool, `prefect deploy`, worker, `deployment run --watch`."""

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[1]


def test_deployment_run_completes_against_a_local_server():
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "SOURCE")
    }
    done = subprocess.run(
        ["bash", "scripts/prefect_smoke.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Flow run finished successfully in 'Completed'" in done.stdout
    assert "prefect smoke: OK" in done.stdout and "@challenger" in done.stdout
