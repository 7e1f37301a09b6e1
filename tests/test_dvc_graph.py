"""The stage graph of ``dvc.yaml``, read as DVC reads it (an output feeds every stage that lists it or a path
under it): which stages a change reruns. tests/test_e2e.py runs one such change through ``dvc exp run``."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.pipeline_project import STAGES

DVC = yaml.safe_load((Path(__file__).resolve().parents[1] / "dvc.yaml").read_text())["stages"]


def _paths(entries: list) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries]


def _feeds(upstream: str, downstream: str) -> bool:
    spec = DVC[upstream]
    outs = _paths(spec.get("outs", []) + spec.get("metrics", []))
    return any(dep == out or dep.startswith(out + "/") for dep in DVC[downstream].get("deps", []) for out in outs)


def _rerun_by(stage: str) -> set[str]:
    """The stage and everything downstream of it."""
    found, todo = {stage}, [stage]
    while todo:
        current = todo.pop()
        for other in DVC:
            if other not in found and _feeds(current, other):
                found.add(other)
                todo.append(other)
    return found


def test_every_stage_is_one_cli_command_in_pipeline_order():
    assert tuple(DVC) == STAGES
    assert all(spec["cmd"] == f"classiflow {name}" for name, spec in DVC.items())


@pytest.mark.parametrize(
    ("changed", "rerun"),
    [
        ("download", set(STAGES)),
        ("augment", {"augment", "train", "evaluate", "prune", "export", "register", "compare"}),
        ("train", {"train", "evaluate", "prune", "export", "register", "compare"}),
        ("evaluate", {"evaluate", "prune", "export", "register", "compare"}),
        ("prune", {"prune", "export", "register"}),
        ("export", {"export", "register"}),
        ("baseline", {"baseline", "compare"}),
    ],
)
def test_a_change_reruns_the_stage_and_what_consumes_its_outputs(changed, rerun):
    assert _rerun_by(changed) == rerun


def test_each_stage_reruns_when_its_own_params_or_code_change():
    for name, spec in DVC.items():
        if name == "compare":  # a report of the other stages' metrics, with no settings of its own
            continue
        sections = {p.split(".")[0] for p in spec["params"]}
        assert name in sections or name in ("download", "prepare") and sections == {"data"}, name
        assert any(dep.startswith("classiflow/") for dep in spec["deps"]), name
