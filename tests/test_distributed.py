"""Data-parallel training through torchrun, on the real train stage and loop with tiny data.

Every comparison runs on one core with one thread per process (the test pins itself; its processes inherit it), so
that one process and two differ only by the order of their float sums, not by thread-level reduction order.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest
import torch
import yaml

from classiflow.config import DataParams, Params
from classiflow.data.download import download
from classiflow.data.prepare import prepare
from classiflow.errors import ClassiflowError
from classiflow.layout import Layout
from classiflow.stages import augment as augment_stage
from classiflow.stages import train as train_stage
from classiflow.stages.train_ranks import EPOCHS_FILE
from tests.conftest import REPO, shrunk_params
from tests.imagegen import write_image_folder

pytestmark = [pytest.mark.integration, pytest.mark.distributed]


@contextlib.contextmanager
def _on_one_core():
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, cores)


@pytest.fixture(autouse=True)
def one_core():
    with _on_one_core():
        yield


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("ddp") / "shapes", per_class=40, size=32)


def _params(model: str, **train) -> Params:
    width = None if model == "lenet5" else 8
    return shrunk_params(
        {
            "model": {"name": model, "width": width},
            "augment": {"flip": True, "translate": 2, "mix": "mixup" if model == "lenet5" else "none"},
            "train": {"epochs": 2, "lr": 0.05, "batch_size": 32, "min_steps": 0, **train},
        }
    )


def _project(root, images, params: Params) -> Layout:
    layout = Layout.at(root)
    download(str(images), layout.raw)
    prepare(layout.raw, layout.prepared, DataParams(image_size=32, val_fraction=0.2))
    augment_stage.run(layout, params)
    return layout


def _trained(tmp_path, images, name: str, params: Params) -> tuple[dict, dict]:
    layout = _project(tmp_path / name, images, params)
    value = train_stage.run(layout, params).value
    return torch.load(layout.model, weights_only=True)["state_dict"], value


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, images) -> tuple[dict, dict, Layout]:
    """lenet5 on two processes of this machine (torchrun --standalone)."""
    tmp = tmp_path_factory.mktemp("two")
    with _on_one_core():  # module-scoped: the autouse fixture has not pinned yet
        return (*_trained(tmp, images, "two", _params("lenet5", processes=2)), Layout.at(tmp / "two"))


def test_two_processes_without_norm_layers_equal_one_process_with_the_same_global_batch(
    tmp_path, images, two_processes
):
    one, one_value = _trained(tmp_path, images, "one", _params("lenet5"))
    two, two_value, layout = two_processes
    assert (one_value["world_size"], two_value["world_size"], two_value["micro_batches"]) == (1, 2, 2)
    assert _max_difference(one, two) < 1e-5
    assert two_value["best_val_accuracy"] == one_value["best_val_accuracy"]
    assert not layout.train_ranks.exists()


def test_batch_norm_on_two_processes_equals_one_process_with_two_micro_batches(tmp_path, images):
    one, _ = _trained(tmp_path, images, "one", _params("resnet8", micro_batches=2))
    two, value = _trained(tmp_path, images, "two", _params("resnet8", processes=2))
    whole, _ = _trained(tmp_path, images, "whole", _params("resnet8"))
    assert value["micro_batches"] == 2
    assert _max_difference(one, two) < 1e-5, "running statistics and weights, every step's norm per micro-batch"
    assert _max_difference(one, whole) > 1e-2, "one 32-image batch normalises differently from two of 16"
    assert (
        one["stem.1.num_batches_tracked"]
        == two["stem.1.num_batches_tracked"]
        == 2 * whole["stem.1.num_batches_tracked"]
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_meet_at_a_c10d_rendezvous_on_loopback(tmp_path, images, two_processes):
    """Two agents, each with its own copy of the project (as on two machines): the same weights as one node
    running two processes."""
    standalone = two_processes[0]
    params = _params("lenet5", nodes=2, rendezvous=f"127.0.0.1:{_free_port()}")
    lead, other = (_project(tmp_path / name, images, params) for name in ("lead", "other"))
    (other.root / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json", by_alias=True)))
    agent = subprocess.Popen(
        [sys.executable, "-m", "classiflow.cli", "train-agent"],
        cwd=other.root,
        env=os.environ | {"PYTHONPATH": str(REPO)},
    )
    try:
        value = train_stage.run(lead, params).value
        assert agent.wait(timeout=120) == 0
    finally:
        agent.kill()
    assert value["world_size"] == 2
    assert _max_difference(standalone, torch.load(lead.model, weights_only=True)["state_dict"]) < 1e-6
    assert not other.model.exists(), "only the node that leads writes the model"


def test_a_dying_rank_ends_the_stage_with_one_line_instead_of_hanging(tmp_path, images):
    params = _params("resnet8", processes=2, epochs=200)
    layout = _project(tmp_path / "dying", images, params)
    epochs = layout.train_ranks / EPOCHS_FILE

    def kill_a_rank() -> None:
        deadline = time.monotonic() + 120
        while not epochs.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        ranks = [
            p for p in psutil.Process().children(recursive=True)
            if "classiflow.stages.train_ranks" in " ".join(p.cmdline()) and "torch.distributed.run" not in p.cmdline()
        ]  # fmt: skip
        ranks[-1].kill()

    killer = threading.Thread(target=kill_a_rank)
    killer.start()
    start = time.monotonic()
    with pytest.raises(ClassiflowError, match="a training process failed"):
        train_stage.run(layout, params)
    killer.join()
    assert time.monotonic() - start < 120
    assert layout.last_checkpoint.exists(), "the epochs done stay resumable"
    assert not layout.model.exists()


def test_several_nodes_need_a_rendezvous_and_micro_batches_divide_among_processes():
    with pytest.raises(ClassiflowError, match="train.rendezvous"):
        _params("lenet5", nodes=2)
    with pytest.raises(ClassiflowError, match="not a multiple"):
        _params("lenet5", processes=2, micro_batches=3)


def test_train_agent_on_one_node_is_a_one_line_error(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(_params("lenet5").model_dump(mode="json", by_alias=True)))
    done = subprocess.run(
        [sys.executable, "-m", "classiflow.cli", "train-agent"], cwd=tmp_path, capture_output=True, text=True,
        env=os.environ | {"PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert done.returncode == 1
    assert "train.nodes is 1" in done.stderr and "Traceback" not in done.stderr
