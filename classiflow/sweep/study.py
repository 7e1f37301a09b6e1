"""The Optuna side of a sweep: the study (TPE with a seed, in SQLite or a shared database) and each trial's overrides.

The study uses Optuna's ask-and-tell interface: the flow asks for a trial, runs it elsewhere (a Prefect worker),
and tells the study its value when it ends, so any number of trials can be in flight at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from classiflow.config import Params, parse_params
from classiflow.errors import ClassiflowError
from classiflow.sweep.params import Dimension, SweepParams

SEARCHABLE_SECTIONS = ("augment", "model", "train", "pretrain", "data")


def storage_url(cfg: SweepParams, root: Path) -> str:
    if cfg.storage:
        return cfg.storage
    (root / ".cache").mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(root / '.cache' / 'optuna.db').resolve()}"


def open_study(cfg: SweepParams, name: str, root: Path, startup_trials: int | None = None):
    """The study ``name`` (created, or reopened to add trials), maximising validation accuracy; TPE samples at
    random for its first ``startup_trials`` (Optuna's default: 10)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    startup = {} if startup_trials is None else {"n_startup_trials": startup_trials}
    sampler = optuna.samplers.TPESampler(seed=cfg.seed, **startup)
    return optuna.create_study(
        study_name=name, storage=storage_url(cfg, root), sampler=sampler, direction="maximize", load_if_exists=True
    )


def _suggest(trial, key: str, dim: Dimension) -> Any:
    if dim.choices is not None:
        return trial.suggest_categorical(key, dim.choices)
    if dim.integer:
        return trial.suggest_int(key, int(dim.low), int(dim.high), step=int(dim.step or 1), log=dim.log)
    return trial.suggest_float(key, dim.low, dim.high, step=dim.step, log=dim.log)


def suggest(trial, cfg: SweepParams) -> dict[str, Any]:
    """The trial's values for every searched parameter, as dotted overrides."""
    return {key: _suggest(trial, key, dim) for key, dim in cfg.space.items()}


def check_space(params: Params) -> None:
    """Every searched key names a parameter of a section a trial may change, and its bounds are valid values: found
    before any trial starts, in one line."""
    raw = params.model_dump(mode="json", by_alias=True)
    for key, dim in params.sweep.space.items():
        section, _, name = key.partition(".")
        if section not in SEARCHABLE_SECTIONS or name not in raw.get(section, {}):
            raise ClassiflowError(f"sweep.space: {key!r} is not a parameter of {', '.join(SEARCHABLE_SECTIONS)}")
        for value in dim.choices if dim.choices is not None else (dim.low, dim.high):
            parse_params(raw, f"sweep.space {key}", {key: int(value) if dim.integer else value})
