"""A sweep for real: a Prefect server on 127.0.0.1, a process work pool with one worker of two slots, and
``classiflow sweep`` of three trials, each a whole train-flow run on tiny generated images."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from classiflow.config import load_params
from classiflow.errors import ClassiflowError
from classiflow.sweep.study import check_space
from tests.pipeline_project import BIN, REPO, tiny_project
from tests.team_stack import free_ports

pytestmark = pytest.mark.e2e
NAME = "sweep-test"


def _start(command: list[str], cwd: Path, env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        command, cwd=cwd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in reversed(procs):  # the worker first: it retries a vanished server for minutes
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    proj = tiny_project(tmp)
    shutil.copy2(REPO / "prefect.yaml", proj / "prefect.yaml")
    (port,) = free_ports(1)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_API"))}
    env |= {"PATH": f"{BIN}{os.pathsep}{env['PATH']}", "PREFECT_HOME": str(tmp / "prefect"), "PWD": str(proj)}
    env |= {"PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    procs = [
        _start(
            ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)], proj, env, tmp / "server.log"
        )
    ]
    try:
        for command in (
            ["prefect", "server", "status", "--wait", "--timeout", "120"],
            ["prefect", "work-pool", "create", "local", "--type", "process", "--overwrite"],
            ["prefect", "--no-prompt", "deploy", "--all"],
        ):
            done = subprocess.run(command, cwd=proj, env=env, capture_output=True, text=True, timeout=180)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        procs.append(
            _start(["prefect", "worker", "start", "--pool", "local", "--limit", "2"], proj, env, tmp / "worker.log")
        )
        sweep = subprocess.run(
            ["classiflow", "sweep", "-S", "sweep.trials=3", "-S", "sweep.parallel=2", "--name", NAME],
            cwd=proj, env=env, capture_output=True, text=True, timeout=1500,
        )  # fmt: skip
        assert sweep.returncode == 0, (
            sweep.stdout[-3000:] + sweep.stderr[-3000:] + (tmp / "worker.log").read_text()[-3000:]
        )
        out = "\n" + sweep.stdout
        yield proj, env, json.loads(out[out.rindex("\n{\n") :])  # the summary printed last
    finally:
        _stop(procs)


def test_three_trials_ran_on_the_pool_two_at_a_time_and_the_best_is_registered(swept):
    import mlflow
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    proj, env, result = swept
    uri = f"sqlite:///{proj / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri, registry_uri=uri)  # not the registry another test of this process set
    exp = client.get_experiment_by_name("classiflow").experiment_id
    trials = client.search_runs([exp], f"tags.`classiflow.sweep` = '{NAME}' and tags.`classiflow.pipeline` = 'true'")
    assert len(trials) == 3 and all("best_val_accuracy" in r.data.metrics for r in trials), result
    sweep_run = client.get_run(result["sweep_run_id"])
    assert sweep_run.data.metrics["trials_completed"] == 3 and sweep_run.info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {sweep_run.info.run_id}
    values = {r.data.tags["registered_version"]: r.data.metrics["best_val_accuracy"] for r in trials}
    assert sweep_run.data.metrics["best_best_val_accuracy"] == max(values.values())
    model = trials[0].data.tags["registered_model"]
    alias = client.get_model_version_by_alias(model, "challenger")
    assert values[str(alias.version)] == max(values.values()), "the best trial's version, not the last one's"
    assert sweep_run.data.tags["best.registered"] == f"{model}/{alias.version}@challenger"
    assert {"trials.json", "trials.png"} <= {a.path for a in client.list_artifacts(sweep_run.info.run_id)}

    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}), get_client(sync_client=True) as prefect:
        runs = [prefect.read_flow_run(r.data.tags["prefect_flow_run_id"]) for r in trials]
    assert all(r.state.is_completed() for r in runs)
    events = sorted([(r.start_time, 1) for r in runs] + [(r.end_time, -1) for r in runs])
    in_flight = [sum(step for _, step in events[: i + 1]) for i in range(len(events))]
    assert max(in_flight) == 2, "two trials at once, never three"


def test_a_search_space_key_that_is_no_parameter_is_a_one_line_error(tmp_path):
    params = load_params(REPO / "params.yaml", {"sweep.space": {"train.speed": {"low": 1, "high": 2}}})
    with pytest.raises(ClassiflowError, match="'train.speed' is not a parameter"):
        check_space(params)
    bad = load_params(REPO / "params.yaml", {"sweep.space": {"train.lr": {"low": -1.0, "high": 2.0}}})
    with pytest.raises(ClassiflowError, match="train.lr"):
        check_space(bad)


def test_a_range_with_int_bounds_searches_integers():
    import optuna

    from classiflow.sweep.params import Dimension, SweepParams
    from classiflow.sweep.study import suggest

    assert Dimension(low=1, high=4).integer and not Dimension(low=1, high=4.5).integer
    cfg = SweepParams(space={"augment.translate": Dimension(low=1, high=4), "train.lr": Dimension(low=0.5, high=3)})
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    chosen = suggest(trial, cfg)
    assert isinstance(chosen["augment.translate"], int) and 1 <= chosen["augment.translate"] <= 4
    assert isinstance(chosen["train.lr"], float)
