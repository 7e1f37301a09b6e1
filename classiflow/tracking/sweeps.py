"""A sweep's MLflow records: a parent run, each trial's value read from its own pipeline run, a plot of the
trials, and the best trial's registered version moved to the registry alias (``register.alias``, @challenger).

Trials report through MLflow, not through the flow runs' return values, so the sweep works with workers on
other machines: all they share is the tracking server.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from classiflow.config import Params
from classiflow.tracking.runs import PIPELINE_TAG
from classiflow.tracking.store import git_commit, setup

SWEEP_TAG = "classiflow.sweep"
METRIC = "best_val_accuracy"


def start_sweep_run(params: Params, name: str) -> str:
    """The sweep's parent run: its settings now, its best trial when it ends; trials' pipeline runs nest under it."""
    exp = setup(params)
    client = MlflowClient()
    tags = {SWEEP_TAG: name, "classiflow.entry": "sweep", "git_commit": git_commit()}
    run = client.create_run(exp, run_name=name, tags=tags)
    cfg = params.sweep
    settings = {"trials": cfg.trials, "parallel": cfg.parallel, "seed": cfg.seed, "deployment": cfg.deployment}
    settings["space"] = json.dumps({k: v.model_dump(exclude_none=True) for k, v in cfg.space.items()})
    client.log_batch(run.info.run_id, params=[mlflow.entities.Param(f"sweep.{k}", str(v)) for k, v in settings.items()])
    return run.info.run_id


def trial_tags(name: str, sweep_run_id: str) -> dict[str, str]:
    """Tags of a trial's pipeline run: which sweep, and its parent in the UI."""
    return {SWEEP_TAG: name, "mlflow.parentRunId": sweep_run_id}


def trial_value(params: Params, flow_run_id: str) -> tuple[float, str] | None:
    """The validation accuracy and pipeline run of the trial that flow run ran, if it got that far."""
    exp = setup(params)
    runs = MlflowClient().search_runs(
        [exp], f"tags.`{PIPELINE_TAG}` = 'true' and tags.prefect_flow_run_id = '{flow_run_id}'", max_results=1
    )
    if not runs or METRIC not in runs[0].data.metrics:
        return None
    return runs[0].data.metrics[METRIC], runs[0].info.run_id


def _plot(trials: list[dict], path: Path) -> None:
    """One panel per searched parameter: each finished trial's value against it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in trials if t["value"] is not None]
    keys = sorted({k for t in trials for k in t["params"]})
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        ax.scatter([t["params"][key] for t in done], [t["value"] for t in done], c=[t["number"] for t in done])
        ax.set_xlabel(key)
        ax.set_ylabel(METRIC)
    fig.suptitle("sweep trials (colour: trial number)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def finish_sweep(params: Params, sweep_run_id: str, trials: list[dict]) -> dict[str, Any]:
    """Record every trial and the best one, and move the registry alias to the best trial's version."""
    setup(params)
    client = MlflowClient()
    done = [t for t in trials if t["value"] is not None]
    client.log_metric(sweep_run_id, "trials_completed", len(done))
    client.log_metric(sweep_run_id, "trials_failed", len(trials) - len(done))
    columns = ["number", "state", "value", "flow_run_id", "pipeline_run_id"]
    table = {c: [t[c] for t in trials] for c in columns} | {
        k: [t["params"].get(k) for t in trials] for k in sorted({k for t in trials for k in t["params"]})
    }
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "trials.json").write_text(json.dumps(table, indent=1))
        client.log_artifact(sweep_run_id, str(Path(tmp) / "trials.json"))
        if done:
            _plot(trials, Path(tmp) / "trials.png")
            client.log_artifact(sweep_run_id, str(Path(tmp) / "trials.png"))
    if not done:
        client.set_terminated(sweep_run_id, "FAILED")
        return {"sweep_run_id": sweep_run_id, "best": None}
    best = max(done, key=lambda t: (t["value"], -t["number"]))  # ties: the earliest trial
    client.log_metric(sweep_run_id, f"best_{METRIC}", best["value"])
    for key, value in best["params"].items():
        client.set_tag(sweep_run_id, f"best.{key}", str(value))
    tags = client.get_run(best["pipeline_run_id"]).data.tags
    model, version = tags.get("registered_model"), tags.get("registered_version")
    if model and version:
        client.set_registered_model_alias(model, params.registry.alias, version)
        client.set_tag(sweep_run_id, "best.registered", f"{model}/{version}@{params.registry.alias}")
    client.set_terminated(sweep_run_id, "FINISHED")
    return {"sweep_run_id": sweep_run_id, "best": best, "registered_model": model, "registered_version": version}
