"""One function runs any stage of the table and records it: the CLI calls it, the Prefect tasks wrap it.

MLflow costs a stage process about 1.5 s of imports and store set-up, so it happens on a thread of its
own while the stage imports what it needs and works: the thread opens the stage's run and logs its params
(a failed run still shows what it was asked to do), logs what the stage reports as it goes (the train
stage's epochs), then its ``StageResult``, the same way for every stage. An unreachable tracking server
is found before the work starts; any other tracking error fails the stage when it ends.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from classiflow.config import Params
from classiflow.errors import ClassiflowError
from classiflow.layout import Layout
from classiflow.pipeline import BY_NAME, Stage
from classiflow.stages.result import StageResult
from classiflow.tracking.uri import check_reachable, tracking_uri

log = logging.getLogger("classiflow")
_FAILED = object()


class _StageFailed(Exception):
    """Raised inside the stage's MLflow run so that it ends FAILED."""


def stage_params(stage: Stage, params: Params) -> dict[str, Any]:
    """The entries of ``params.yaml`` under the stage's ``params`` prefixes."""
    return {
        key: value
        for key, value in params.flat().items()
        if any(key == p or key.startswith(p + ".") for p in stage.params)
    }


def log_result(result: StageResult, pipeline_run_id: str) -> None:
    """Record a stage's result in the active (stage) run and its pipeline run."""
    import mlflow

    from classiflow.tracking.runs import log_to_pipeline

    if result.params:
        mlflow.log_params(result.params)
    if result.metrics:
        mlflow.log_metrics({k: float(v) for k, v in result.metrics.items()})
    if result.tags:
        mlflow.set_tags(result.tags)
    for path, folder in result.artifacts.items():
        mlflow.log_artifact(str(path), folder or None)
    for name, document in result.documents.items():
        mlflow.log_dict(document, name)
    for name, table in result.tables.items():
        mlflow.log_table(table, name)
    log_to_pipeline(pipeline_run_id, metrics=result.pipeline_metrics, tags=result.pipeline_tags)


class StageTracker(threading.Thread):
    """The stage's MLflow run, kept by this thread from start to end; the stage reports to it through a
    queue (``metrics``, then :meth:`finish` or :meth:`fail`), so only this thread ever touches MLflow."""

    def __init__(self, stage: Stage, layout: Layout, params: Params, pipeline_run_id: str | None):
        super().__init__(name=f"mlflow-{stage.name}", daemon=True)
        self.stage, self.layout, self.params, self.pipeline_run_id = stage, layout, params, pipeline_run_id
        self.messages: queue.SimpleQueue = queue.SimpleQueue()
        self.error: BaseException | None = None

    def metrics(self, values: Mapping[str, float], step: int) -> None:
        self.messages.put(("metrics", dict(values), step))

    def finish(self, result: StageResult) -> None:
        self.messages.put(("result", result, None))
        self.join()
        if self.error is not None:
            raise self.error

    def call(self, runner, layout: Layout, params: Params) -> StageResult:
        """Run ``runner`` on this thread, inside the stage's MLflow run: for a stage that logs to it itself."""
        replies: queue.SimpleQueue = queue.SimpleQueue()
        self.messages.put(("call", (runner, layout, params, replies), None))
        while True:
            try:
                result, error = replies.get(timeout=0.2)
                break
            except queue.Empty:
                if not self.is_alive():  # the run never opened: its error, not a silent wait
                    raise self.error or RuntimeError("the MLflow thread stopped") from None
        if error is not None:
            raise error
        return result

    def fail(self) -> None:
        self.messages.put(_FAILED)
        self.join()

    def run(self) -> None:
        try:
            self._record()
        except _StageFailed:
            pass
        except BaseException as err:  # noqa: BLE001 - handed to the stage's thread by finish()
            self.error = err

    def _record(self) -> None:
        import mlflow

        from classiflow.tracking.runs import stage_run

        stage, extra = self.stage, {}
        with stage_run(stage.name, self.layout, self.params, self.pipeline_run_id, stage.kind, extra) as pipeline:
            if logged := stage_params(stage, self.params):
                mlflow.log_params(logged)
            while (message := self.messages.get()) is not _FAILED:
                kind, payload, step = message
                if kind == "metrics":
                    mlflow.log_metrics(payload, step=step)
                elif kind == "call":
                    self._call(*payload)
                else:
                    log_result(payload, pipeline)
                    extra.update(payload.record)
                    return
            raise _StageFailed

    def _call(self, runner, layout: Layout, params: Params, replies: queue.SimpleQueue) -> None:
        try:
            replies.put((runner(layout, params), None))
        except BaseException as err:  # noqa: BLE001 - raised again on the stage's thread by call()
            replies.put((None, err))
            raise _StageFailed from None


def run_stage(name: str, root: str | Path, params: Params, pipeline_run_id: str | None = None) -> dict[str, Any]:
    """Run stage ``name`` in ``root`` as a nested MLflow run (joining or opening its pipeline run)."""
    stage = BY_NAME[name]
    check_reachable(tracking_uri())
    layout = Layout.at(root)
    tracker = StageTracker(stage, layout, params, pipeline_run_id)
    tracker.start()
    try:
        runner = stage.load()
        result = tracker.call(runner, layout, params) if stage.in_run else runner(layout, params, tracker)
    except BaseException:
        tracker.fail()
        raise
    try:
        tracker.finish(result)
    except ClassiflowError:
        raise
    except Exception as err:  # noqa: BLE001 - MLflow's client raises its own and requests' errors
        line = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ClassiflowError(
            f"{name}: MLflow at {tracking_uri()} failed while recording the stage ({line}); its outputs are on "
            "disk, and a rerun records them"
        ) from None
    for path in result.keep_until_recorded:
        Path(path).unlink(missing_ok=True)
    for line in result.summary:
        log.info("%s", line)
    return result.value
