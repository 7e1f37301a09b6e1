"""The prepare stage on the shared CIFAR-10 archive, against the bare work it cannot avoid.

Times ``prepare()`` from a downloaded archive (median of ``--repeats``), a bare sequential read of every
member (gunzip and tar headers, no decoding) and, with ``--baseline DIR``, the same ``prepare()`` of another
checkout (for example the previous commit, as a git worktree) in the same run. Writes a section of
docs/benchmarks.md.

    python benchmarks/prepare.py [--repeats 3] [--baseline /tmp/old-checkout] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import machine, write_section  # noqa: E402

ARCHIVE = REPO.parent / "shared" / "datasets" / "cifar10-jpg.tar.gz"
TIMED = """
import sys, time
from pathlib import Path
from classiflow.config import DataParams
from classiflow.data.download import download
from classiflow.data.prepare import prepare
tmp = Path(sys.argv[1])
download(sys.argv[2], tmp / "raw")
start = time.perf_counter()
meta = prepare(tmp / "raw", tmp / "prepared", DataParams())
print(time.perf_counter() - start, meta["data_hash"])
"""


def _prepare(src: Path) -> tuple[float, str]:
    """One ``prepare()`` of ``src``'s code in a fresh process (no warm imports or page cache of a former run)."""
    with tempfile.TemporaryDirectory(prefix="prep-") as tmp:
        env = os.environ | {"PYTHONPATH": str(src)}
        out = subprocess.run(
            [sys.executable, "-c", TIMED, tmp, str(ARCHIVE)],
            env=env,
            cwd=tmp,
            check=True,
            capture_output=True,
            text=True,
        )
    seconds, digest = out.stdout.split()
    return float(seconds), digest


def _commit(src: Path) -> str:
    out = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "not a git checkout"


def _bare_read() -> float:
    start = time.perf_counter()
    with tarfile.open(ARCHIVE, "r|*") as tf:
        for m in tf:
            if m.isfile():
                tf.extractfile(m).read()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline", type=Path)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if not ARCHIVE.exists():
        sys.exit(f"{ARCHIVE} is absent")
    arms = {f"this checkout ({_commit(REPO)})": REPO} | (
        {f"commit {_commit(args.baseline)}": args.baseline} if args.baseline else {}
    )
    times: dict[str, list[float]] = {k: [] for k in arms}
    hashes = set()
    for _ in range(args.repeats):  # alternating, so that drift of the machine's speed hits every arm alike
        for name, src in arms.items():
            seconds, digest = _prepare(src)
            times[name].append(seconds)
            hashes.add(digest)
    bare = statistics.median(_bare_read() for _ in range(args.repeats))
    ours = statistics.median(next(iter(times.values())))
    rows = [f"| {k} | {statistics.median(v):.1f} | {', '.join(f'{x:.1f}' for x in v)} |" for k, v in times.items()]
    command = f"python benchmarks/prepare.py --repeats {args.repeats}" + (
        " --baseline <checkout>" if args.baseline else ""
    )
    markdown = f"""## Prepare: CIFAR-10 from its archive (`benchmarks/prepare.py`)

`{command}` on {machine()}: `prepare()` of the shared
CIFAR-10 JPEG archive (60,000 images; decode, split, write, statistics, sanity report), each in a
fresh process. A bare sequential read of every member (gunzip and tar headers only) takes
{bare:.1f} s, so the stage is {ours / bare:.1f}x that ceiling of one pass. Data hashes of all runs
{"agree" if len(hashes) == 1 else "DIFFER"}.

| code | median s | runs |
|---|---:|---|
{chr(10).join(rows)}
"""
    print(markdown)
    if not args.no_write:
        write_section("prepare", markdown)


if __name__ == "__main__":
    main()
