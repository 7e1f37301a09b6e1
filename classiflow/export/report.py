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
    verdict = "**rejected**: " if row.get("status") == "rejected" else ""
    if "decided_agreement" in row:
        return (
            f"{verdict}agreement {100 * row['decided_agreement']:.2f}% of {row['decided_images']} decided images "
            f"({100 * row['agreement']:.2f}% of all)"
        )
    if "max_abs_diff" in row:
        return f"{verdict}max abs diff {row['max_abs_diff']:.2g}"
    return "**rejected**" if verdict else "reference"


def _number(row: dict, key: str, fmt: str, scale: float = 1.0) -> str:
    return format(scale * row[key], fmt) if key in row else "-"


def _line(r: dict) -> str:
    size = _size(r["bytes"]) if "bytes" in r else "-"
    speedup = f"{r['speedup_latency']:.2f}x / {r['speedup_throughput']:.2f}x" if "speedup_latency" in r else "-"
    accuracy = _number(r, "accuracy", ".2f", 100.0)
    return (
        f"| {r['model']} | {FORMAT_NAMES.get(r['format'], r['format'])} | `{r['file']}` | {size} "
        f"| {accuracy if accuracy == '-' else accuracy + '%'} | {_check(r)} | {_number(r, 'latency_ms_median', '.3f')} "
        f"| {_number(r, 'latency_ms_p99', '.3f')} | {_number(r, 'images_per_second', '.0f')} | {speedup} |"
    )


def rejected(export: dict) -> dict[str, str]:
    """File name -> why it was left out, from ``metrics/export.json``."""
    return {
        row["file"]: row["reason"]
        for formats in export.values()
        if isinstance(formats, dict)
        for row in formats.values()
        if row.get("status") == "rejected"
    }


def markdown(rows: list[dict], threads: int, batch: int, test_images: int) -> str:
    lines = [
        "# Export",
        "",
        f"Checked on {test_images} test images; timed on the CPU with {threads} thread(s) for every runtime, "
        f"batch-1 latency after warm-up and throughput at batch {batch}. Speed-up is against eager PyTorch "
        "(batch-1 latency / throughput). int8 agreement counts the images PyTorch decides (its top two "
        "classes at least export.int8_tie_margin apart in probability).",
        "",
        f"| model | format | file | size | test accuracy | check | batch-1 median ms | batch-1 p99 ms "
        f"| batch-{batch} img/s | speed-up |",
        "|---|---|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    lines += [_line(r) for r in rows]
    left_out = [r for r in rows if r.get("status") == "rejected"]
    if left_out:
        lines += ["", "## Left out (not shipped, registered or served)", ""]
        lines += [f"- `{r['file']}`: {r['reason']}" for r in left_out]
    return "\n".join(lines) + "\n"


def metrics(rows: list[dict], threads: int) -> dict:
    """Nested model -> format -> numbers, the shape ``dvc metrics show`` flattens into readable columns."""
    out: dict = {"threads": threads}
    for r in rows:
        out.setdefault(r["model"], {})[r["format"]] = {k: v for k, v in r.items() if k not in ("model", "format")}
    return out
