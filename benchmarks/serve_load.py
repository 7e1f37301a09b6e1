"""Load-test `classiflow serve` on loopback: single-image requests/s and latency, batch throughput vs raw ORT.

The server is the real command (``classiflow serve --model <export dir>``) in its own process, on a ResNet-20
ONNX export; the load generator (benchmarks/http_load.py: raw keep-alive sockets, see there why) runs in this
process. Both share the machine's cores, as on a one-box deployment, and the CPU time each used is reported so
a reader can see which side was the bottleneck.

Phases: ``--clients`` clients each sending one 32x32 CIFAR-10 test PNG per request for ``--seconds``; one
client alone (latency without queueing); ``--batch-clients`` clients sending ``--batch-size`` images per POST
/predict/batch; then, with the server stopped, ONNX Runtime's ``session.run`` on the same images, decoded, in
batches of the same size with the same thread setting.

Usage::

    python benchmarks/serve_load.py --seconds 60 --doc      # the full run; writes the "serve" section
    python benchmarks/serve_load.py --seconds 5             # a quick check; prints JSON and the table only
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import http_load  # noqa: E402
from benchmarks.common import CACHE, REPO, machine, write_section  # noqa: E402

DEFAULT_MODEL = CACHE / "compress" / "resnet20" / "models" / "export"
TEST_IMAGES = CACHE / "cifar10-jpg" / "prepared" / "test_images.npy"
RANDOM_MODEL = CACHE / "serve" / "random-resnet20"
DISTINCT_IMAGES = 1000
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def export_random_resnet20(out: Path) -> Path:
    """A random-weight ResNet-20 in the export stage's format: the same graph and cost, meaningless answers."""
    if (out / "preprocessing.json").exists():
        return out
    import torch

    from classiflow.atomic import atomic_dir, write_json
    from classiflow.export.convert import INPUT_NAME, OUTPUT_NAME, example_input, to_onnx
    from classiflow.export.params import ExportParams
    from classiflow.models import build_model
    from classiflow.tensors import WithPreprocessing

    torch.manual_seed(0)
    mean, std = [125.3, 123.0, 113.9], [63.0, 62.1, 66.7]
    module = WithPreprocessing(build_model("resnet20", 3, 10, 32).eval(), mean, std).eval()
    with atomic_dir(out) as tmp:
        to_onnx(module, example_input(3, 32), tmp / "model.onnx", ExportParams().opset)
        shape = {"input": ["batch", 3, 32, 32], "output": ["batch", 10]}
        spec = {
            "input": {"name": INPUT_NAME, "shape": shape["input"], "dtype": "float32", "layout": "NCHW"},
            "output": {"name": OUTPUT_NAME, "shape": shape["output"], "meaning": "logits"},
            **{"mean": mean, "std": std, "classes": CIFAR10, "image_size": 32, "channels": 3, "model": "resnet20"},
            **{"data_hash": "random-weights", "files": {"trained": {"onnx": "model.onnx"}}},
        }
        write_json(tmp / "preprocessing.json", spec)
    return out


def model_dir(arg: str | None) -> tuple[Path, str]:
    if arg:
        return Path(arg).resolve(), "given with --model"
    if (DEFAULT_MODEL / "preprocessing.json").exists() and (DEFAULT_MODEL / "model.onnx").exists():
        return DEFAULT_MODEL, "trained by the compress benchmark"
    print(f"{DEFAULT_MODEL}: no export; exporting a random-weight ResNet-20 instead", file=sys.stderr)
    return export_random_resnet20(RANDOM_MODEL), "random weights: no trained export was found"


def cifar_pngs(count: int) -> tuple[list[bytes], str]:
    from PIL import Image

    if TEST_IMAGES.exists():
        images, source = np.load(TEST_IMAGES, mmap_mode="r")[:count], "CIFAR-10 test split"
    else:
        images = np.random.default_rng(0).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
        source = "random pixels: no prepared CIFAR-10 was found"
    out = []
    for image in images:
        buf = io.BytesIO()
        Image.fromarray(np.asarray(image)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out, source


def start_server(args: argparse.Namespace, directory: Path, port: int, work: Path) -> subprocess.Popen:
    params = work / "params.yaml"
    serve = {"max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms, "threads": args.threads}
    params.write_text(json.dumps({"serve": serve}))  # JSON is YAML
    cmd = [sys.executable, "-m", "classiflow.cli", "serve", "--model", str(directory), "--port", str(port)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("CLASSIFLOW_API_TOKEN", None)
    log = work / "server.log"
    proc = subprocess.Popen(
        [*cmd, "--params", str(params)], cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r:
            if r.status == 200:
                return proc
        time.sleep(0.25)
    proc.kill()
    raise SystemExit(f"the server was not ready within 180 s:\n{log.read_text()[-3000:]}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def model_calls(port: int) -> tuple[int, int]:
    """(model calls, images) since the server started, from its Prometheus batch-size histogram."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = [re.search(rf"^classiflow_batch_size_{k}\s+(\S+)", text, re.M) for k in ("count", "sum")]
    return tuple(int(float(m.group(1))) if m else 0 for m in found)


def load_phase(pid: int, port: int, requests: list[bytes], clients: int, seconds: float, items: int, kind: str):
    cpu, (calls, images) = cpu_seconds(pid), model_calls(port)
    result = http_load.run("127.0.0.1", port, requests, clients, seconds, warmup=min(3.0, seconds / 4), kind=kind)
    out = result.summary(items)
    calls_after, images_after = model_calls(port)
    out["server_cpu_percent"] = 100.0 * (cpu_seconds(pid) - cpu) / result.seconds  # includes the warm-up's tail
    out["client_cpu_percent"] = 100.0 * result.client_cpu_s / result.seconds
    out["mean_batch"] = (images_after - images) / max(1, calls_after - calls)
    sample = json.loads(result.sample) if result.sample else {}
    out["answers_checked"] = bool(sample.get("predictions") or sample.get("results"))
    return out


def raw_ort(directory: Path, encoded: list[bytes], batch: int, threads: int | None, seconds: float) -> dict:
    """session.run on decoded batches (decoding not timed): the ceiling the server's batch path is held to."""
    from classiflow.serving.images import decode
    from classiflow.serving.model import load_model_dir

    model = load_model_dir(directory, threads=threads)
    pixels = np.stack([decode(b, model.image_size, model.channels) for b in encoded])
    pixels = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2), dtype=np.float32)
    batches = [pixels[i : i + batch] for i in range(0, len(pixels) - batch + 1, batch)]
    for b in batches[:3]:
        model.run_logits(b)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for b in batches:
            model.run_logits(b)
            done += len(b)
    return {"images_per_s": done / (time.perf_counter() - start), "batch": batch}


def markdown(r: dict) -> str:
    s, one, b, raw = r["single"], r["alone"], r["batch"], r["raw_ort"]
    errors = s["errors"] + one["errors"] + b["errors"]
    mark = lambda ok: "met" if ok else "**missed**"  # noqa: E731
    st = r["settings"]
    lines = [
        f"Machine: {r['machine']}. Model: ResNet-20 ONNX, {r['model_source']} ({r['model_dir']}). Images: "
        f"{r['images_source']}, {DISTINCT_IMAGES} distinct 32x32 PNGs. Server: `classiflow serve`, one process "
        f"(workers 1), max_batch {st['max_batch']}, max_wait_ms {st['max_wait_ms']}, ONNX Runtime threads "
        f"{st['threads'] or 'default (all cores)'}, uvicorn with {r['http_impl']}, no access log. Load generator: "
        f"benchmarks/http_load.py ({r['client']}: keep-alive sockets, requests built once) in another process on the "
        "same cores. A row with **httpx** clients, where present, sends the same requests through httpx.AsyncClient: "
        "its client CPU per request is what a full Python HTTP client would take from the cores the server needs.",
        "",
        "| phase | clients | requests/s | images/s | p50 ms | p99 ms | max ms | errors | images per model call "
        "| server CPU | client CPU (us/request) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row, clients in (
        (f"POST /predict, 1 image ({r['body']} body), {s['seconds']:.0f} s", s, r["clients"]),
        (f"POST /predict, 1 image, one client alone, {one['seconds']:.0f} s", one, 1),
        (f"POST /predict/batch, {r['batch_size']} images, {b['seconds']:.0f} s", b, r["batch_clients"]),
        *(
            [(f"POST /predict, 1 image, **httpx** clients, {r['httpx']['seconds']:.0f} s", r["httpx"], r["clients"])]
            if "httpx" in r
            else []
        ),
    ):
        lines.append(
            f"| {name} | {clients} | {row['requests_per_s']:.0f} | {row['items_per_s']:.0f} | {row['p50_ms']:.1f} "
            f"| {row['p99_ms']:.1f} | {row['max_ms']:.1f} | {row['errors']} | {row['mean_batch']:.1f} "
            f"| {row['server_cpu_percent']:.0f}% | {row['client_cpu_percent']:.0f}% ({row['client_cpu_us']:.0f}) |"
        )
    lines += [
        f"| ONNX Runtime `session.run` alone, batches of {raw['batch']}, decoded images | - | - "
        f"| {raw['images_per_s']:.0f} | | | | | | | |",
        "",
        f"Bars: >= 500 single-image requests/s at {r['clients']} clients: {s['requests_per_s']:.0f}, "
        f"{mark(s['requests_per_s'] >= 500)}; p99 < 50 ms: {s['p99_ms']:.1f} ms, {mark(s['p99_ms'] < 50)}; "
        f"batch throughput within 2x of raw ONNX Runtime: {r['batch_vs_raw']:.2f} of it, "
        f"{mark(r['batch_vs_raw'] >= 0.5)}; zero errors: {errors}, {mark(errors == 0)}.",
    ]
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help=f"export directory (default {DEFAULT_MODEL.relative_to(REPO)})")
    p.add_argument("--seconds", type=float, default=60.0, help="length of the many-client phase")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--body", choices=("raw", "multipart"), default="raw", help="how /predict gets its image")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batch-clients", type=int, default=4)
    p.add_argument("--batch-seconds", type=float, help="default: a third of --seconds, at least 5")
    p.add_argument("--max-batch", type=int, default=32, help="serve.max_batch")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="serve.max_wait_ms")
    p.add_argument("--threads", type=int, help="serve.threads: ONNX Runtime intra-op threads (default all cores)")
    p.add_argument("--client", choices=("raw", "httpx"), default="raw", help="load generator (see http_load.py)")
    p.add_argument("--httpx-seconds", type=float, default=10.0, help="then the same with httpx clients (0: skip)")
    p.add_argument("--doc", action="store_true", help="write the 'serve' section of docs/benchmarks.md")
    p.add_argument("--json", help="also write the results to this file")
    return p.parse_args(argv)


def http_impl() -> str:
    import importlib.util

    has = lambda name: importlib.util.find_spec(name) is not None  # noqa: E731
    return f"{'httptools' if has('httptools') else 'h11'} on {'uvloop' if has('uvloop') else 'asyncio'}"


def requests_for(encoded: list[bytes], args: argparse.Namespace) -> tuple[list[bytes], list[bytes]]:
    host, one, many = "127.0.0.1", [], []
    for data in encoded:
        body = (
            (data, "image/png") if args.body == "raw" else http_load.multipart([("file", "x.png", data, "image/png")])
        )
        one.append(http_load.request("POST", "/predict", host, *body))
    for start in range(0, len(encoded) - args.batch_size + 1, args.batch_size):
        parts = [("files", f"{i}.png", encoded[i], "image/png") for i in range(start, start + args.batch_size)]
        many.append(http_load.request("POST", "/predict/batch", host, *http_load.multipart(parts)))
    return one, many


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    directory, source = model_dir(args.model)
    encoded, images_source = cifar_pngs(DISTINCT_IMAGES)
    single, batch = requests_for(encoded, args)
    batch_seconds = args.batch_seconds or max(5.0, args.seconds / 3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        proc = start_server(args, directory, port, Path(tmp))
        try:

            def phase(reqs: list[bytes], clients: int, seconds: float, items: int, kind: str = args.client) -> dict:
                return load_phase(proc.pid, port, reqs, clients, seconds, items, kind)

            results = {"single": phase(single, args.clients, args.seconds, 1)}
            results["alone"] = phase(single, 1, max(3.0, args.seconds / 10), 1)
            results["batch"] = phase(batch, args.batch_clients, batch_seconds, args.batch_size)
            if args.httpx_seconds > 0 and args.client != "httpx":  # what a full HTTP client would cost
                results["httpx"] = phase(single, args.clients, args.httpx_seconds, 1, "httpx")
        finally:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)
            if proc.poll() is None:
                proc.kill()
    results["raw_ort"] = raw_ort(directory, encoded, args.batch_size, args.threads, max(3.0, batch_seconds / 2))
    with contextlib.suppress(ValueError):
        directory = directory.relative_to(REPO)
    results.update(
        machine=machine(),
        model_dir=str(directory),
        model_source=source,
        images_source=images_source,
        http_impl=http_impl(),
        body=args.body,
        client=args.client,
        clients=args.clients,
        batch_size=args.batch_size,
        batch_clients=args.batch_clients,
        settings={"max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms, "threads": args.threads, "workers": 1},
        batch_vs_raw=results["batch"]["items_per_s"] / results["raw_ort"]["images_per_s"],
    )
    print(json.dumps(results, indent=2))
    text = "## Serving under load (`benchmarks/serve_load.py`)\n\n" + markdown(results)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if args.doc:
        write_section("serve", text)
    return results


if __name__ == "__main__":
    main()
