"""The committed defaults on real colour photographs: what a new user's first ``make run`` on CIFAR-10 meets.

``params.yaml`` changes only in ``data.source`` (a stratified subset of the shared CIFAR-10 archive; skipped
without ``../shared/datasets``) and in sizes that keep the run short (the step floor for the subset, the repeat
counts of the latency figures, the baseline's codebook sample); every stage runs through ``dvc repro`` as
``make run`` runs it. The grayscale counterpart, on real digits, is ``tests/test_e2e.py``.
"""

from __future__ import annotations

import pytest

from tests.pipeline_project import (
    STAGES,
    check_every_export_is_verified_or_rejected,
    check_registered,
    copy_project,
    read,
    repro,
)
from tests.real_images import cifar_subset
from tests.test_e2e import SHORT

pytestmark = [pytest.mark.e2e, pytest.mark.real_data]


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("real-cifar")
    # 4,500 training images: 8 epochs instead of the step floor's 19
    proj = copy_project(tmp, cifar_subset(tmp), {"train": {"min_steps": 60}, **SHORT})
    return proj, repro(proj)


def test_the_defaults_run_every_stage_on_real_cifar10(cifar_run):
    proj, out = cifar_run
    for stage in STAGES:
        assert f"Running stage '{stage}'" in out
    assert read(proj, "data/augmented/policy.json")["params"]["flip"] is True  # photos: mirrored is fine
    exported = check_every_export_is_verified_or_rejected(proj)
    int8 = exported["trained"]["onnx-int8-static"]
    assert int8["accuracy_drop_points"] <= 0.5 and int8["decided_agreement"] >= 0.99
    evaluation = read(proj, "metrics/evaluate.json")
    version = check_registered(proj, "classiflow-cifar10-subset")
    assert version.tags["tta"] == ("flip" if evaluation["tta"]["used"] else "none")
    assert evaluation["accuracy"] > 0.4  # 10 classes: a model, not a guess
