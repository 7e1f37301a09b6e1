"""The stage graph of ``dvc.yaml``, read as DVC reads it (an output feeds every stage that lists it or a path
under it): which stages a change reruns. tests/test_e2e.py runs one such change through ``dvc exp run``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from classiflow.pipeline import BY_NAME
from tests.pipeline_project import STAGES

REPO = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


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


def _module_file(module: str) -> Path | None:
    base = REPO.joinpath(*module.split("."))
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path
    return None


def _imported(path: Path) -> set[str]:
    """The classiflow modules (and possible submodules) ``path`` imports, at the top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name.split(".")[0] == "classiflow"}


def _code_of(module: str) -> set[str]:
    """Every classiflow file ``module`` runs, following its imports and its packages' ``__init__`` files
    (less those that import nothing: a docstring or a version string cannot change a stage's outputs)."""
    found: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = _module_file(name)
        if path is None or path in found:
            continue
        found.add(path)
        parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        todo += [*_imported(path), *parents]
    return {str(p.relative_to(REPO)) for p in found if not (p.name == "__init__.py" and not _imported(p))}


def test_every_stage_of_the_table_is_one_cli_command_in_its_order():
    assert tuple(DVC) == STAGES
    assert all(spec["cmd"] == f"classiflow {name}" for name, spec in DVC.items())


@pytest.mark.parametrize("name", STAGES)
def test_each_stage_reads_an_output_of_each_upstream_stage_and_of_no_other(name):
    readers_of = {other for other in DVC if other != name and _feeds(other, name)}
    assert readers_of == set(BY_NAME[name].upstream)


@pytest.mark.parametrize("name", STAGES)
def test_each_stage_depends_on_the_code_its_runner_runs(name):
    deps = DVC[name]["deps"]
    module = BY_NAME[name].runner.partition(":")[0]
    missing = {f for f in _code_of(module) if not any(f == d or f.startswith(d + "/") for d in deps)}
    assert not missing, f"dvc.yaml stage {name!r} lacks code deps: {sorted(missing)}"


@pytest.mark.parametrize(
    ("changed", "rerun"),
    [
        ("download", set(STAGES)),
        ("augment", {"augment", "train", "evaluate", "prune", "export", "register", "compare"}),
        ("pretrain", {"pretrain", "train", "evaluate", "prune", "export", "register", "compare"}),
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
