"""Checksums and safe reading of user-supplied archives (tar, tar.gz, zip).

The prepare stage reads an archive as a stream (:func:`list_members`, then :func:`read_files`) instead of
extracting tens of thousands of files and reading them back: nothing is written, so no member can land
outside a folder, and only regular files are ever read.
"""

from __future__ import annotations

import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from classiflow.errors import ClassiflowError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
MAX_MEMBER_BYTES = 1 << 30  # a member read whole into memory; no image file of a data set comes near


def is_archive_name(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def _is_zip(path: Path) -> bool:
    return path.name.lower().endswith(".zip")


def _parts(name: str) -> list[str]:
    """A member name's parts (string work: the listing of a 60,000-member archive should not be pathlib's)."""
    return [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]


def _unsafe_member_name(name: str) -> bool:
    return name.replace("\\", "/").startswith("/") or ".." in _parts(name) or (len(name) > 1 and name[1] == ":")


@dataclass
class Listing:
    files: list[str]  # regular files and links to them, normalised POSIX names
    dirs: list[str]
    members: int  # every member, links and directories included
    links: dict[str, str]  # link -> the regular file it names


def _link_target(m: tarfile.TarInfo) -> str:
    if m.islnk():  # hard links name a member of the archive
        return _normal(m.linkname)
    return _normal(f"{m.name.rsplit('/', 1)[0]}/{m.linkname}" if "/" in m.name else m.linkname)


def _refuse(path: Path, name: str, linkname: str | None = None) -> None:
    if _unsafe_member_name(name):
        raise ClassiflowError(f"{path.name}: member {name!r} escapes the target directory; refusing to extract")
    if linkname is not None and _unsafe_member_name(linkname):
        raise ClassiflowError(
            f"{path.name}: member {name!r} links outside the archive ({linkname!r}); refusing to extract"
        )


def _normal(name: str) -> str:
    return "/".join(_parts(name))


def list_members(path: Path) -> Listing:
    """The archive's files and folders; refuses an archive with a member that would escape its folder."""
    files, dirs, links, members = [], [], {}, 0
    try:
        if _is_zip(path):
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    _refuse(path, info.filename)
                    members += 1
                    (dirs if info.is_dir() else files).append(_normal(info.filename))
        else:
            with tarfile.open(path, "r|*") as tf:
                for m in tf:
                    _refuse(path, m.name, m.linkname if m.issym() or m.islnk() else None)
                    members += 1
                    if m.isfile():
                        files.append(_normal(m.name))
                    elif m.isdir():
                        dirs.append(_normal(m.name))
                    elif m.issym() or m.islnk():
                        links[_normal(m.name)] = _link_target(m)
                _check_stream_end(tf.fileobj)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as err:
        raise ClassiflowError(f"{path.name}: not a readable archive ({err})") from None
    regular = set(files)
    links = {name: target for name, target in links.items() if target in regular}
    return Listing(list(dict.fromkeys(files + list(links))), dirs, members, links)


def _check_stream_end(stream) -> None:
    """tarfile ends its listing quietly at a header cut short after the first member, so a truncated compressed
    tar reads as a smaller one: its decompressor must also have reached the end-of-stream marker."""
    while stream.read(1 << 16):
        pass
    decompressor = getattr(stream, "cmp", None)
    if decompressor is not None and not getattr(decompressor, "eof", True):
        raise EOFError("the compressed data ends before its end-of-stream marker")


def check_members(path: Path) -> int:
    """Refuse archives whose members would escape the target directory; return the member count."""
    return list_members(path).members


def read_files(path: Path, wanted: set[str], links: dict[str, str]) -> Iterator[tuple[str, bytes | None]]:
    """The ``wanted`` files of the archive as (name, content), in archive order; a link (of ``links``) comes with
    the file it names. The content is ``None`` for a file over :data:`MAX_MEMBER_BYTES`. One sequential pass,
    also for compressed tars."""
    aliases: dict[str, list[str]] = {}
    for link, target in links.items():
        if link in wanted:
            aliases.setdefault(target, []).append(link)
    try:
        for name, size, read in _regular_files(path):
            names = [name] * (name in wanted) + aliases.get(name, [])
            if names:
                data = read() if size <= MAX_MEMBER_BYTES else None
                yield from ((n, data) for n in names)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as err:
        raise ClassiflowError(f"{path.name}: reading failed ({err})") from None


def _regular_files(path: Path) -> Iterator[tuple[str, int, Callable[[], bytes]]]:
    if _is_zip(path):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    yield _normal(info.filename), info.file_size, lambda info=info: zf.read(info)
    else:
        with tarfile.open(path, "r|*") as tf:
            for m in tf:
                if m.isfile():
                    yield _normal(m.name), m.size, lambda m=m: tf.extractfile(m).read()


def extract(path: Path, dest: Path) -> None:
    """Extract with tarfile's ``data`` filter (no links out, no devices, no setuid) or checked zip."""
    check_members(path)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if _is_zip(path):
            with zipfile.ZipFile(path) as zf:
                zf.extractall(dest)
        else:
            with tarfile.open(path) as tf:
                tf.extractall(dest, filter="data")
    except tarfile.FilterError as err:
        raise ClassiflowError(f"{path.name}: unsafe member refused ({err})") from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as err:
        raise ClassiflowError(f"{path.name}: extraction failed ({err})") from None
