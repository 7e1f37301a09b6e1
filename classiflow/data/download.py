"""The download stage: bring a data source into ``data/raw`` exactly once, verified.

Sources: a torchvision built-in name, an archive (local path or URL) of an image-folder
tree, or a local image-folder directory. Archives are kept as files here and extracted
safely by the prepare stage, so DVC tracks one file instead of tens of thousands.
"""

from __future__ import annotations

import re
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from classiflow.atomic import atomic_dir, write_json
from classiflow.checksum import verify_sha256
from classiflow.config import BUILTIN_DATASETS
from classiflow.data.archive import check_members, is_archive_name
from classiflow.errors import ClassiflowError
from classiflow.progress import bytes_progress

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Source:
    kind: str  # builtin | url | archive | folder
    location: str
    name: str


def dataset_name(location: str) -> str:
    base = Path(urlparse(location).path if "://" in location else location).name or location
    for suffix in (".tar.gz", ".tgz", ".tar", ".zip"):
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
            break
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-") or "dataset"


def resolve_source(source: str, base_dir: Path | None = None) -> Source:
    """Decide what ``data.source`` names; relative paths are taken from ``base_dir``."""
    if source.lower() in BUILTIN_DATASETS:
        return Source("builtin", source.lower(), source.lower())
    if re.match(r"^(https?|ftp)://", source):
        if not is_archive_name(urlparse(source).path):
            raise ClassiflowError(f"data.source {source!r}: a URL must point at a .tar, .tar.gz, .tgz or .zip archive")
        return Source("url", source, dataset_name(source))
    path = Path(source).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.exists():
        known = ", ".join(BUILTIN_DATASETS)
        raise ClassiflowError(
            f"data.source {source!r}: no such file or directory, and not a built-in data set ({known})"
        )
    if path.is_dir():
        return Source("folder", str(path.resolve()), dataset_name(path.resolve().name))
    if not is_archive_name(path.name):
        raise ClassiflowError(f"data.source {source!r}: not a directory or a .tar/.tar.gz/.tgz/.zip archive")
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        raise ClassiflowError(f"data.source {source!r}: cannot read ({err.strerror})") from None
    return Source("archive", str(path.resolve()), dataset_name(path.name))


def _fetch_url(url: str, dest: Path, timeout: float = 60.0) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(dest, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with bytes_progress() as progress:
                task = progress.add_task(f"download {dest.name}", total=total)
                while block := resp.read(1 << 20):
                    out.write(block)
                    progress.advance(task, len(block))
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        reason = getattr(err, "reason", err)
        raise ClassiflowError(f"download of {url} failed: {reason}") from None


def _copy_folder(src: Path, dest: Path) -> int:
    """Copy an image-folder tree, skipping hidden files; hard links when the disk allows."""
    count = 0
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if any(part.startswith(".") for part in rel.parts):
            continue
        target = dest / rel
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            target.hardlink_to(path)
        except OSError:
            shutil.copy2(path, target)
        count += 1
    if count == 0:
        raise ClassiflowError(f"data.source {str(src)!r}: the directory holds no files")
    return count


def _fetch_builtin(name: str, dest: Path) -> None:
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import download_url

    from classiflow.data.archive import extract

    try:
        if name == "cifar10":
            # torchvision extracts without a tar filter (pytorch/vision#9517): fetch, then extract safely.
            download_url(tvd.CIFAR10.url, str(dest), tvd.CIFAR10.filename, tvd.CIFAR10.tgz_md5)
            archive = dest / tvd.CIFAR10.filename
            extract(archive, dest)
            archive.unlink()
        else:
            cls = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST}[name]
            cls(str(dest), train=True, download=True)
            cls(str(dest), train=False, download=True)
    except (urllib.error.URLError, RuntimeError, OSError) as err:
        raise ClassiflowError(
            f"could not download the built-in data set {name!r} ({err}); without internet, "
            "point data.source at an archive or an image folder"
        ) from None


def download(source: str, raw_dir: Path, sha256: str | None = None, base_dir: Path | None = None) -> dict:
    """Fill ``raw_dir`` (replaced atomically) and return its manifest."""
    src = resolve_source(source, base_dir)
    if src.kind in ("builtin", "folder") and sha256:
        raise ClassiflowError("data.sha256 applies to archives only; remove it or point at an archive")
    manifest: dict = {"kind": src.kind, "source": source, "name": src.name, "sha256": None}
    with atomic_dir(raw_dir) as tmp:
        if src.kind == "builtin":
            _fetch_builtin(src.location, tmp)
            manifest["path"] = "."
        elif src.kind == "folder":
            manifest["files"] = _copy_folder(Path(src.location), tmp / src.name)
            manifest["path"] = src.name
        else:
            filename = Path(urlparse(src.location).path).name if src.kind == "url" else Path(src.location).name
            target = tmp / filename
            if src.kind == "url":
                _fetch_url(src.location, target)
            else:
                shutil.copyfile(src.location, target)
            manifest["sha256"] = verify_sha256(target, sha256)
            manifest["members"] = check_members(target)
            manifest["path"] = filename
        write_json(tmp / MANIFEST, manifest)
    return manifest
