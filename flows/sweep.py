"""``sweep-flow``: an Optuna study whose trials are ``train-flow`` runs on a Prefect work pool.

It asks the study for up to ``sweep.parallel`` trials at a time, starts each as a run of ``sweep.deployment``
(``run_deployment``, not waiting), and tells the study each trial's validation accuracy once its flow run ends;
a trial whose run fails or crashes (a worker killed) is told as failed and the sweep goes on. Each worker slot of
the pool runs one trial, so ``prefect worker start --pool local`` on another machine adds capacity.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, runtime
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment

from classiflow.config import Params, load_params
from classiflow.errors import ClassiflowError
from classiflow.layout import project_root
from classiflow.sweep.study import check_space, open_study, suggest
from classiflow.tracking.sweeps import finish_sweep, start_sweep_run, trial_tags, trial_value

POLL_SECONDS = 2.0


def _start(study, params: Params, params_file: str, overrides: dict, name: str, sweep_run: str, root: Path):
    trial = study.ask()
    values = suggest(trial, params.sweep)
    parameters = {
        "params_file": params_file,
        "overrides": overrides | values,
        "workdir": str(root / "runs" / name / f"trial-{trial.number}"),
        "tags": trial_tags(name, sweep_run),
    }
    run = run_deployment(params.sweep.deployment, parameters=parameters, timeout=0, as_subflow=True)
    return run.id, {"number": trial.number, "params": values, "flow_run_id": str(run.id), "trial": trial}


def _finish(study, params: Params, record: dict, state) -> dict:
    from optuna.trial import TrialState

    found = trial_value(params, record["flow_run_id"]) if state.is_completed() else None
    trial = record.pop("trial")
    if found is None:
        study.tell(trial, state=TrialState.FAIL)
        return record | {"state": state.name, "value": None, "pipeline_run_id": None}
    study.tell(trial, found[0])
    return record | {"state": state.name, "value": found[0], "pipeline_run_id": found[1]}


@flow(name="sweep-flow")
def sweep_flow(params_file: str = "params.yaml", overrides: dict[str, Any] | None = None, name: str | None = None):
    """Run ``sweep.trials`` trials, ``sweep.parallel`` at a time; return the best and every trial."""
    logger = get_run_logger()
    overrides = overrides or {}
    params = load_params(params_file, overrides)
    check_space(params)
    name = name or f"sweep-{runtime.flow_run.name or 'local'}"
    root = project_root()
    study, sweep_run = open_study(params.sweep, name, root), start_sweep_run(params, name)
    running: dict[Any, dict] = {}
    trials: list[dict] = []
    with get_client(sync_client=True) as client:
        while len(trials) < params.sweep.trials:
            while len(running) < params.sweep.parallel and len(trials) + len(running) < params.sweep.trials:
                flow_run_id, record = _start(study, params, params_file, overrides, name, sweep_run, root)
                running[flow_run_id] = record
                logger.info("trial %d started: %s", record["number"], record["params"])
            time.sleep(POLL_SECONDS)
            for flow_run_id in list(running):
                state = client.read_flow_run(flow_run_id).state
                if state is not None and state.is_final():
                    trials.append(_finish(study, params, running.pop(flow_run_id), state))
                    logger.info("trial %d %s: %s", trials[-1]["number"], state.name, trials[-1]["value"])
    result = finish_sweep(params, sweep_run, trials) | {"trials": trials, "study": name}
    if result["best"] is None:
        raise ClassiflowError(f"sweep {name}: none of its {len(trials)} trials completed; see the workers' logs")
    return result


if __name__ == "__main__":
    sweep_flow.serve(name="local")
