"""Pipeline overhead: what each ``classiflow <stage>`` process spends outside the stage's own work.

For each revision (``--against``, default ``main``, and ``HEAD``) a detached git worktree runs the whole
pipeline once on small generated images, then each stage command is run again ``--repeats`` times with its
stage function timed from inside the process. A stage's overhead is the process's wall time less that
function's time: interpreter start, the CLI's and the runner's imports, reading params.yaml, MLflow set-up
and logging. Also timed: ``classiflow --help`` and a ``dvc repro`` with nothing to do. Writes a section
of docs/benchmarks.md.

    python benchmarks/stage_overhead.py [--against main] [--repeats 3] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import machine, write_section  # noqa: E402
from tests.imagegen import write_image_folder  # noqa: E402

BIN = Path(sys.executable).parent
SHORT = {
    "train": {"epochs": 1, "min_steps": 0, "batch_size": 32},
    "prune": {"finetune_epochs": 1, "sweep": [0.5], "latency_repeats": 5},
    "export": {"latency_repeats": 5, "throughput_batch": 32, "calibration_images": 64},
    "baseline": {"codebook_size": 32, "codebook_sample": 5000},
}
# Runs one stage command with its stage function timed, and the import of the function's module (the
# libraries the stage needs) timed apart: through the stage table's Stage.load where the revision has one,
# else by importing the module before the CLI does. argv: stage, out, module, function, cli, has_table.
# has_table comes from the worktree's files: an import test would find the installed checkout's table.
TIMED = """
import atexit, importlib, json, sys, time
stage, out, module, function, cli, has_table = sys.argv[1:7]
spent, imports = [], []
def record():
    with open(out, "w") as f:
        json.dump({"work_s": sum(spent), "import_s": sum(imports), "ran": bool(spent)}, f)
atexit.register(record)
def timed(inner):
    def call(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - start)
    return call
if has_table != "1":
    start = time.perf_counter()
    target = importlib.import_module(module)
    imports.append(time.perf_counter() - start)
    setattr(target, function, timed(getattr(target, function)))
else:
    from classiflow.pipeline import Stage
    load = Stage.load
    def timed_load(self):
        start = time.perf_counter()
        runner = load(self)
        imports.append(time.perf_counter() - start)
        return timed(runner)
    Stage.load = timed_load
app = getattr(importlib.import_module(cli), "app")
app(args=[stage], prog_name="classiflow")
"""


def _worktree(rev: str, tmp: Path) -> Path:
    path = tmp / rev.replace("/", "_")
    subprocess.run(["git", "worktree", "add", "-q", "--detach", str(path), rev], cwd=REPO, check=True)
    return path


def _cli_module(tree: Path) -> str:
    return "classiflow.cli" if (tree / "classiflow" / "cli.py").exists() else "flows.cli"


def _stages(tree: Path) -> list[tuple[str, str, str]]:
    """(stage, module, function) of each stage's own work, as that revision defines it."""
    import yaml

    names = list(yaml.safe_load((tree / "dvc.yaml").read_text())["stages"])
    table = tree / "classiflow" / "pipeline.py"
    out = []
    for name in names:
        if name == "register":
            module = "classiflow.tracking.register" if table.exists() else "tasks.registry"
            out.append((name, module, "run" if table.exists() else "_version_tags"))
        else:
            out.append((name, f"classiflow.stages.{name}", "run"))
    return out


def _env(tree: Path, shim: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "PREFECT_API"))}
    env |= {"PYTHONPATH": str(tree), "PATH": f"{shim}{os.pathsep}{BIN}{os.pathsep}{env['PATH']}"}
    env |= {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _prepare(tree: Path, images: Path) -> dict:
    """The revision's own CLI on PATH as ``classiflow``, its params pointed at ``images`` and cut short."""
    import yaml

    shim = tree / ".bench-bin"
    shim.mkdir()
    cli = _cli_module(tree)
    (shim / "classiflow").write_text(f"#!{sys.executable}\nfrom {cli} import app\napp(prog_name='classiflow')\n")
    (shim / "classiflow").chmod(0o755)
    params = yaml.safe_load((tree / "params.yaml").read_text())
    params["data"]["source"] = str(images)
    for section, values in SHORT.items():
        params[section].update(values)
    (tree / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = _env(tree, shim)
    subprocess.run(["dvc", "repro", "-q"], cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    return env


def _wall(command: list[str], tree: Path, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def measure(tree: Path, images: Path, repeats: int) -> dict:
    env = _prepare(tree, images)
    cli = _cli_module(tree)
    out: dict = {"help": [], "noop_repro": [], "stages": {}}
    for _ in range(repeats):
        out["help"].append(_wall([sys.executable, "-c", f"from {cli} import app; app()", "--help"], tree, env))
        out["noop_repro"].append(_wall(["dvc", "repro"], tree, env))
    record = tree / ".bench-stage.json"
    has_table = "1" if (tree / "classiflow" / "pipeline.py").exists() else "0"
    for stage, module, function in _stages(tree):
        rows = []
        for _ in range(repeats):
            command = [sys.executable, "-c", TIMED, stage, str(record), module, function, cli, has_table]
            wall = _wall(command, tree, env)
            timed = json.loads(record.read_text())
            rows.append((wall, timed["work_s"] if timed["ran"] else 0.0, timed["import_s"]))
        out["stages"][stage] = rows
    return out


def _median(values) -> float:
    return statistics.median(values)


def _cells(rows: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    """Medians of the wall time, the stage's imports, and the overhead beyond both and the stage's work."""
    return (
        _median([w for w, _, _ in rows]),
        _median([i for _, _, i in rows]),
        _median([w - t - i for w, t, i in rows]),
    )


def table(before: dict, after: dict, labels: tuple[str, str], repeats: int) -> str:
    head = " | ".join(f"{x} wall | {x} stage imports | {x} overhead" for x in labels)
    lines = [f"| stage | {head} |", "|---|" + "---:|" * 6]
    sums, walls = [0.0, 0.0], [0.0, 0.0]
    for stage in after["stages"]:
        cells = []
        for i, result in enumerate((before, after)):
            wall, imports, over = _cells(result["stages"][stage])
            if stage != "register":
                sums[i], walls[i] = sums[i] + over, walls[i] + wall
            cells += [f"{wall:.2f}", f"{imports:.2f}", f"{over:.2f}"]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    total = " | ".join(f"**{walls[i]:.1f}** | | **{sums[i]:.1f}**" for i in (0, 1))
    lines.append(f"| **sum, register aside** | {total} |")
    help_, noop = (
        [_median(r[k]) for r in (before, after)] for k in ("help", "noop_repro")
    )  # fmt: skip
    return f"""## Pipeline overhead per stage process

`python benchmarks/stage_overhead.py --against {labels[0]} --repeats {repeats}` on {machine()}: each
revision in its own git worktree, the whole pipeline run once on 240 generated 32x32 images, then each stage
command {repeats} times (medians, seconds). *Stage imports*: importing the stage function's module, i.e. the
libraries the stage itself needs (torch, scikit-learn, OpenCV, matplotlib). *Overhead*: the process's wall
time less the stage function's own time and its imports: interpreter start, the CLI, params, and what MLflow
adds to the critical path (its imports, store set-up and logging; in `{labels[1]}` these run on a thread
beside the stage's imports and work). In `{labels[0]}` the stage imports are the stage module's own, timed
before the CLI imports it. For `register` there the registration was not separable from the task, so its whole
time counts as overhead; the sum leaves register out on both sides.

{chr(10).join(lines)}

`classiflow --help`: {help_[0]:.2f} s ({labels[0]}) vs {help_[1]:.2f} s ({labels[1]}). A `dvc repro` with
nothing to do: {noop[0]:.2f} s vs {noop[1]:.2f} s.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", default="main", help="the revision to compare HEAD with")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="overhead-") as tmp:
        tmp = Path(tmp)
        images = write_image_folder(tmp / "shapes", per_class=80, size=32)
        trees = [_worktree(rev, tmp) for rev in (args.against, "HEAD")]
        try:
            results = [measure(tree, images, args.repeats) for tree in trees]
        finally:
            for tree in trees:
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, check=False)
    markdown = table(*results, (args.against, "HEAD"), args.repeats)
    print(markdown)
    if not args.no_write:
        write_section("stage-overhead", markdown)


if __name__ == "__main__":
    main()
