"""The train stage on several processes: ``classiflow train`` starts ``torchrun`` with this module, and waits.

Each rank rebuilds the stage's inputs as the stage does (same seed, so the same initial weights) and runs the same
training loop; the writer rank appends each epoch's statistics to ``epochs.jsonl`` (which the waiting stage reports
as they come) and saves the result, which the stage then turns into the checkpoint, metrics and MLflow run exactly
as for one process. Only the waiting stage process imports MLflow or writes the stage's outputs.

Run by torchrun: ``python -m classiflow.stages.train_ranks <project root> <params.json>``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from classiflow.atomic import atomic_path, write_json
from classiflow.config import Params, TrainParams, parse_params
from classiflow.cpu import usable_cores
from classiflow.errors import ClassiflowError
from classiflow.layout import Layout
from classiflow.training import distributed
from classiflow.training.device import select_device

EPOCHS_FILE = "epochs.jsonl"
RESULT_FILE = "result.pt"
PARAMS_FILE = "params.json"
POLL_SECONDS = 0.5


def torchrun_args(cfg: TrainParams, run_id: str) -> list[str]:
    """One node: ``--standalone`` (a free port on loopback). Several: c10d rendezvous at ``train.rendezvous``."""
    args = [f"--nproc-per-node={cfg.processes}", "--max-restarts=0"]
    if cfg.nodes == 1:
        return [*args, "--standalone"]
    return [*args, f"--nnodes={cfg.nodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={cfg.rendezvous}",
            f"--rdzv-id={run_id}"]  # fmt: skip


def launch(layout: Layout, params: Params, run_id: str, on_epoch_end: Callable[[dict], None] | None) -> dict | None:
    """Run the training ranks of this node and wait; with ``on_epoch_end`` this node is the primary one, which
    reports each epoch as the writer rank finishes it and returns the result (``TrainResult`` fields)."""
    folder = layout.train_ranks
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    write_json(folder / PARAMS_FILE, params.model_dump(mode="json", by_alias=True))
    command = [sys.executable, "-m", "torch.distributed.run", *torchrun_args(params.train, run_id),
               "-m", __name__, str(layout.root), str(folder / PARAMS_FILE)]  # fmt: skip
    threads = max(1, usable_cores() // params.train.processes)  # also keeps torchrun's OMP_NUM_THREADS notice away
    env = os.environ | {distributed.PRIMARY_ENV: "1" if on_epoch_end else "0", "OMP_NUM_THREADS": str(threads)}
    epochs, seen = folder / EPOCHS_FILE, 0
    with subprocess.Popen(command, env=env) as proc:
        try:
            while True:
                code = proc.poll()
                seen = _report_new(epochs, seen, on_epoch_end)
                if code is not None:
                    break
                time.sleep(POLL_SECONDS)
        except BaseException:
            proc.terminate()
            raise
    if code != 0:
        raise ClassiflowError(f"train.processes {params.train.processes}: a training process failed (exit {code})")
    if not on_epoch_end:
        return None
    result = torch.load(folder / RESULT_FILE, weights_only=True)
    shutil.rmtree(folder, ignore_errors=True)
    return result


def _report_new(epochs: Path, seen: int, on_epoch_end: Callable[[dict], None] | None) -> int:
    """Report the epochs written since the last look (whole lines only: the writer may be mid-line)."""
    if on_epoch_end is None or not epochs.exists():
        return seen
    done = epochs.read_text().split("\n")[:-1]
    for line in done[seen:]:
        on_epoch_end(json.loads(line))
    return len(done)


def _append_epoch(path: Path):
    def on_epoch_end(stats: dict) -> None:
        with path.open("a") as out:
            out.write(json.dumps(stats) + "\n")

    return on_epoch_end


def main(root: str, params_file: str) -> None:
    from classiflow.stages.train import setup
    from classiflow.training import fit

    layout = Layout.at(root)
    params = parse_params(json.loads(Path(params_file).read_text()))
    world = distributed.join(select_device(params.train.device))
    try:
        run = setup(layout, params)
        folder = layout.train_ranks
        report = _append_epoch(folder / EPOCHS_FILE) if world.is_writer else None
        result = fit(run.model, run.data, params.train, report, run.inputs, run.resume, world)
        if world.is_writer:
            with atomic_path(folder / RESULT_FILE) as tmp:
                torch.save(vars(result), tmp)
    finally:
        distributed.leave()


if __name__ == "__main__":
    main(*sys.argv[1:3])
