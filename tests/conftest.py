import logging
import os
import sys
from pathlib import Path

import pytest

from classiflow.config import Params, TrainParams, apply_overrides, parse_params

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _isolate_xdist_worker() -> None:
    """Under ``pytest -n N`` each worker gets its share of the cores, inherited by the pipeline processes it
    starts (N workers each running torch and ONNX Runtime on every core made OpenMP threads fight for them),
    and its own Prefect home, so that two temporary Prefect APIs never write one SQLite database."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker or count < 2:
        return
    home = Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect"))
    os.environ["PREFECT_HOME"] = str(home / f"pytest-{worker}")
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_setaffinity") else []
    if len(cores) >= count:  # a worker that replaces a crashed one is numbered on (gw2 of 2): wrap around
        os.sched_setaffinity(0, cores[int(worker.removeprefix("gw")) % count :: count])


_isolate_xdist_worker()
REPO = Path(__file__).resolve().parents[1]
# Minutes each (whole pipelines, servers); run first so that parallel workers finish together
LONGEST_FIRST = ("test_real_zoo.py", "test_e2e.py", "test_real_data.py", "test_prefect_deployment.py")
SHARED_DATASETS = REPO.parent / "shared" / "datasets"
sys.path.insert(0, str(REPO))

from tests.imagegen import write_image_folder  # noqa: E402

TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items):
    """A test without a tier marker is a unit test (in-process, no servers, a few training steps at most); one
    in two tiers is a mistake. Longest files first. pytest-xdist schedules by node id, so two items sharing one
    would run once (on pytest 9 every operation of schemathesis' ``test_api`` had the same id, and 6 of its 7
    silently never ran)."""
    if len({item.nodeid for item in items}) != len(items):
        raise pytest.UsageError("two test items share a node id; pytest-xdist would run only one of them")
    for item in items:
        tiers = [tier for tier in TIERS if item.get_closest_marker(tier)]
        if len(tiers) > 1:
            raise pytest.UsageError(f"{item.nodeid}: in tiers {', '.join(tiers)}; a test belongs to one")
        if not tiers:
            item.add_marker(pytest.mark.unit)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its order


@pytest.fixture(autouse=True)
def _mlflow_env_restored():
    """mlflow.set_tracking_uri/set_registry_uri also export MLFLOW_*_URI: without this, a temp store of one
    test leaked into every later subprocess (a pipeline run then registered in one store and was read from another)."""
    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = {k: os.environ.get(k) for k in keys}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(autouse=True)
def _classiflow_logger_restored():
    """An in-process CLI call gives the ``classiflow`` logger its own console handler and stops propagation:
    left behind, a later test on the same worker saw no records in ``caplog`` (which one depended on test order)."""
    logger = logging.getLogger("classiflow")
    saved = logger.handlers[:], logger.propagate, logger.level
    yield
    logger.handlers[:], logger.propagate = saved[0], saved[1]
    logger.setLevel(saved[2])


# The one shrunk configuration in-process tests start from, as lightning-hydra-template's conftest builds one:
# the committed defaults (equal to params.yaml) with every run cut to seconds on toy data.
SHRUNK = {
    "train.epochs": 1,
    "train.min_steps": 0,
    "train.batch_size": 16,
    "train.device": "cpu",
    "prune.finetune_epochs": 1,
    "prune.latency_repeats": 3,
    "export.latency_repeats": 3,
}


def shrunk_params(raw: dict | None = None, overrides: dict | None = None) -> Params:
    """The shrunk defaults, then ``raw`` sections and dotted ``overrides`` on top (a test's own settings win)."""
    merged = apply_overrides({}, SHRUNK)
    for section, values in (raw or {}).items():
        merged.setdefault(section, {}).update(values)
    return parse_params(merged, "shrunk test params", overrides)


def shrunk_train(**fields) -> TrainParams:
    return TrainParams(**(shrunk_params().train.model_dump() | fields))


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "shapes", per_class=20)


@pytest.fixture
def mlflow_uri(tmp_path: Path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine OpenMP contention made them ~50x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
