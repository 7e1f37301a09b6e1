"""Peak memory of prepare and one training epoch on a 224x224 set of 50,000 images (7.5 GB as uint8).

The images are generated (smooth random colour fields, ten classes told apart by their mean hue) as JPEG
files under ``benchmarks/.cache/large``; each stage then runs as its own process, as ``dvc repro`` runs it,
while this script samples the resident memory of that process and every process it starts (the decoder
pool), total and anonymous (the part that memory-mapped files do not explain). Writes the "large_images"
section of docs/benchmarks.md.

    python benchmarks/large_images.py [--images 50000] [--size 224] [--arch timm/mobilenetv3_small_050]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import CACHE, machine, write_section  # noqa: E402

ROOT = CACHE / "large"
CLASSES = 10


def _write_images(args: tuple[Path, int, int, int]) -> None:
    import numpy as np
    from PIL import Image

    folder, start, count, size = args
    rng = np.random.default_rng(start)
    for i in range(start, start + count):
        label = i % CLASSES
        base = np.array([label * 25.0, 128.0, 255.0 - label * 25.0])
        field = rng.normal(0.0, 40.0, (8, 8, 3)) + base
        small = Image.fromarray(field.clip(0, 255).astype(np.uint8))
        path = folder / f"class{label}" / f"{i:06d}.jpg"
        small.resize((size, size), Image.Resampling.BICUBIC).save(path, quality=90)


def generate(n: int, size: int) -> Path:
    """``n`` JPEG files in ``<class>/`` folders, written once (reused while the count and size match)."""
    folder = ROOT / f"images-{n}-{size}"
    if (folder / ".complete").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    for label in range(CLASSES):
        (folder / f"class{label}").mkdir(parents=True)
    step = 1000
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_write_images, [(folder, s, min(step, n - s), size) for s in range(0, n, step)]))
    (folder / ".complete").touch()
    return folder


def _tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _memory_kb(pid: int) -> tuple[int, int, int]:
    """RSS, PSS and anonymous PSS of one process (PSS shares a page among the processes that map it, so the
    forked decoder workers' copy of the parent is not counted once per worker)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0, 0, 0
    fields = dict(line.split(":", 1) for line in text.splitlines()[1:] if ":" in line)
    return tuple(int(fields.get(k, "0 kB").split()[0]) for k in ("Rss", "Pss", "Pss_Anon"))


def measured(cmd: list[str], cwd: Path) -> dict:
    """Run ``cmd``; its wall time and the peak memory of its process tree (GB), sampled every 0.2 s."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = [0, 0, 0]

    def sample() -> None:
        while proc.poll() is None:
            rows = [_memory_kb(p) for p in _tree(proc.pid)]
            for k in range(3):
                peak[k] = max(peak[k], sum(r[k] for r in rows))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    sampler.join()
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    rss, pss, anon = (k / 2**20 for k in peak)
    return {"seconds": time.perf_counter() - start, "rss_gb": rss, "pss_gb": pss, "anon_gb": anon}


def project(images: Path, size: int, arch: str) -> Path:
    """A project folder whose params.yaml reads ``images`` and trains ``arch`` for one epoch."""
    import yaml

    root = ROOT / "project"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(source=str(images), image_size=size)
    params["model"].update(name=arch, width=None)
    params["train"].update(epochs=1, min_steps=0, batch_size=64, lr=0.01, optimizer="adamw", scheduler="cosine")
    params["train"].update(bias_lr_scale=1.0, weight_decay=0.01)
    params["evaluate"]["batch_size"] = 64
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def table(rows: dict[str, dict], n: int, size: int, arch: str, meta: dict, train: dict) -> str:
    gb = n * size * size * 3 / 1e9
    lines = ["| stage | wall time | peak PSS | of it anonymous | peak RSS |", "|---|---:|---:|---:|---:|"]
    for stage, r in rows.items():
        memory = " | ".join(f"{r[k]:.2f} GB" for k in ("pss_gb", "anon_gb", "rss_gb"))
        lines.append(f"| {stage} | {r['seconds'] / 60:.1f} min | {memory} |")
    return f"""## Memory on a large prepared set (`benchmarks/large_images.py`)

`python benchmarks/large_images.py --images {n} --size {size} --arch {arch}` on {machine()}: {n:,} generated
{size}x{size} RGB JPEGs (ten classes), {gb:.1f} GB as uint8 arrays once prepared (splits
{meta["sizes"]}). Each stage runs as its own `classiflow <stage>` process; memory is the sum over the
process and its children (the decoder pool), sampled every 0.2 s. Training: one epoch of `{arch}` from
random weights, batch 64 ({train["train_seconds"] / 60:.1f} min in the train loop,
{train["images_per_second"]:.0f} images/s, validation accuracy {100 * train["best_val_accuracy"]:.1f}%).

{chr(10).join(lines)}

PSS (proportional set size) counts a page shared by several processes (the forked decoder workers and
their parent) once in all; RSS, summed over the processes, counts it once per process. "Anonymous" is
memory no file backs: what the stage holds itself. The rest is pages of the memory-mapped splits still
mapped at the moment of sampling; they are released every few batches and are the kernel's to reclaim in
any case.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=50_000)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--arch", default="timm/mobilenetv3_small_050")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    t = time.perf_counter()
    images = generate(args.images, args.size)
    print(f"images ready in {time.perf_counter() - t:.0f} s", flush=True)
    root = project(images, args.size, args.arch)
    exe = str(Path(sys.executable).with_name("classiflow"))
    env_off = ["env", "MLFLOW_TRACKING_URI=sqlite:///" + str(root / "mlflow.db")]
    rows = {}
    for stage in ("download", "prepare", "augment", "train"):
        rows[stage] = measured([*env_off, exe, stage], root)
        print(stage, rows[stage], flush=True)
    meta = json.loads((root / "data" / "prepared" / "meta.json").read_text())
    train = json.loads((root / "metrics" / "train.json").read_text())
    markdown = table(rows, args.images, args.size, args.arch, meta, train)
    print(markdown)
    if not args.no_write:
        write_section("large_images", markdown)


if __name__ == "__main__":
    main()
