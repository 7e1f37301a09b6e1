"""``reports/export.md`` and ``metrics/export.json``: what each file costs and gains against eager PyTorch."""

from __future__ import annotations

FORMAT_NAMES = {
    "pytorch": "PyTorch eager",
    "torchscript": "TorchScript",
    "onnx": "ONNX Runtime fp32",
    "onnx-int8-dynamic": "ONNX Runtime int8 dynamic",
    "onnx-int8-static": "ONNX Runtime int8 static",
}


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _check(row: dict) -> str:
    if "agreement" in row:
        return f"agreement {100 * row['agreement']:.2f}%"
    if "max_abs_diff" in row:
        return f"max abs diff {row['max_abs_diff']:.2g}"
    return "reference"


def markdown(rows: list[dict], threads: int, batch: int, test_images: int) -> str:
    lines = [
        "# Export",
        "",
        f"Checked on {test_images} test images; timed on the CPU with {threads} thread(s) for every runtime, "
        f"batch-1 latency after warm-up and throughput at batch {batch}. Speed-up is against eager PyTorch "
        "(batch-1 latency / throughput).",
        "",
        f"| model | format | file | size | test accuracy | check | batch-1 median ms | batch-1 p99 ms "
        f"| batch-{batch} img/s | speed-up |",
        "|---|---|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {FORMAT_NAMES.get(r['format'], r['format'])} | `{r['file']}` | {_size(r['bytes'])} "
            f"| {100 * r['accuracy']:.2f}% | {_check(r)} | {r['latency_ms_median']:.3f} | {r['latency_ms_p99']:.3f} "
            f"| {r['images_per_second']:.0f} | {r['speedup_latency']:.2f}x / {r['speedup_throughput']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def metrics(rows: list[dict], threads: int) -> dict:
    """Nested model -> format -> numbers, the shape ``dvc metrics show`` flattens into readable columns."""
    out: dict = {"threads": threads}
    for r in rows:
        out.setdefault(r["model"], {})[r["format"]] = {k: v for k, v in r.items() if k not in ("model", "format")}
    return out
