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
# Runs one stage command with its stage function timed; the module and function are argv[3:5].
TIMED = """
import atexit, importlib, json, sys, time
stage, out, module, function, cli = sys.argv[1:6]
spent = []
def record():
    with open(out, "w") as f:
        json.dump({"work_s": sum(spent), "ran": bool(spent)}, f)
atexit.register(record)
target = importlib.import_module(module)
inner = getattr(target, function)
def timed(*args, **kwargs):
    start = time.perf_counter()
    try:
        return inner(*args, **kwargs)
    finally:
        spent.append(time.perf_counter() - start)
setattr(target, function, timed)
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
    for stage, module, function in _stages(tree):
        rows = []
        for _ in range(repeats):
            command = [sys.executable, "-c", TIMED, stage, str(record), module, function, cli]
            wall = _wall(command, tree, env)
            timed = json.loads(record.read_text())
            rows.append((wall, timed["work_s"] if timed["ran"] else 0.0))
        out["stages"][stage] = rows
    return out


def _median(values) -> float:
    return statistics.median(values)


def table(before: dict, after: dict, labels: tuple[str, str], repeats: int) -> str:
    lines = [
        f"| stage | {labels[0]} wall (s) | {labels[0]} overhead (s) | {labels[1]} wall (s) | "
        f"{labels[1]} overhead (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    sums = [0.0, 0.0]
    for stage in after["stages"]:
        cells = []
        for i, result in enumerate((before, after)):
            rows = result["stages"].get(stage)
            if not rows:
                cells += ["-", "-"]
                continue
            wall, over = _median([w for w, _ in rows]), _median([w - t for w, t in rows])
            sums[i] += over if stage != "register" else 0.0
            cells += [f"{wall:.2f}", f"{over:.2f}"]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    lines.append(f"| **sum, register aside** | | **{sums[0]:.1f}** | | **{sums[1]:.1f}** |")
    help_, noop = (
        [_median(r[k]) for r in (before, after)] for k in ("help", "noop_repro")
    )  # fmt: skip
    return f"""## Pipeline overhead per stage process

`python benchmarks/stage_overhead.py --against {labels[0]} --repeats {repeats}` on {machine()}: each revision in
its own git worktree, the whole pipeline run once on 240 generated 32x32 images, then each stage command
{repeats} times (medians). Overhead = the process's wall time less its stage function's own time (interpreter
start, CLI and runner imports, params, MLflow set-up and logging). For `register` in `{labels[0]}` the MLflow
registration itself was not separable from the task, so its whole time counts as overhead there (and the
sum leaves register out on both sides).

{chr(10).join(lines)}

`classiflow --help`: {help_[0]:.2f} s ({labels[0]}) vs {help_[1]:.2f} s ({labels[1]}). A `dvc repro` with nothing
to do: {noop[0]:.2f} s vs {noop[1]:.2f} s.
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
