"""The stage table: every stage of the pipeline, once.

The CLI's stage commands, the Prefect flow's order, the Prefect tasks and MLflow's grouping of stage runs
under one pipeline run all follow this table, and a test checks ``dvc.yaml`` against it. Runners are named
as ``module:function`` strings, imported only when their stage runs, so reading the table imports nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stage:
    """One stage: what runs it, which stages' outputs it reads, and how it is logged and retried.

    ``params`` are the dotted prefixes of ``params.yaml`` logged with the stage's MLflow run; ``kind``
    (``deep`` or ``classical``) tags model runs so the UI can tell CNNs from the baseline. ``in_run``: the
    runner logs to the stage's MLflow run itself (register), so it runs where that run is open.
    """

    name: str
    runner: str
    upstream: tuple[str, ...] = ()
    params: tuple[str, ...] = ()
    kind: str | None = None
    retries: int = 0
    retry_delay_seconds: float = 0
    in_run: bool = False

    def load(self) -> Callable[..., Any]:
        module, _, function = self.runner.partition(":")
        return getattr(importlib.import_module(module), function)


STAGES: tuple[Stage, ...] = (
    Stage("download", "classiflow.stages.download:run", (), ("data.source", "data.sha256"), retries=2,
          retry_delay_seconds=10),
    Stage("prepare", "classiflow.stages.prepare:run", ("download",), ("data",)),
    Stage("augment", "classiflow.stages.augment:run", ("prepare",), ("augment",)),
    Stage("pretrain", "classiflow.stages.pretrain:run", ("prepare",), ("pretrain", "model"), "deep"),
    Stage("train", "classiflow.stages.train:run", ("prepare", "augment", "pretrain"), ("model", "train"), "deep"),
    Stage("evaluate", "classiflow.stages.evaluate:run", ("prepare", "pretrain", "train"), ("evaluate",), "deep"),
    Stage("prune", "classiflow.stages.prune:run", ("prepare", "augment", "train", "evaluate"), ("prune",), "deep"),
    Stage("export", "classiflow.stages.export:run", ("prepare", "train", "evaluate", "prune"), ("export",), "deep"),
    Stage("register", "classiflow.tracking.register:run", ("prepare", "train", "evaluate", "prune", "export"),
          ("registry",), "deep", in_run=True),
    Stage("baseline", "classiflow.stages.baseline:run", ("prepare",), ("baseline",), "classical"),
    Stage("compare", "classiflow.stages.compare:run", ("train", "evaluate", "baseline")),
)  # fmt: skip
BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}
