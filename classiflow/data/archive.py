"""Checksums and safe extraction of user-supplied archives (tar, tar.gz, zip)."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from classiflow.errors import ClassiflowError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")


def is_archive_name(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def _unsafe_member_name(name: str) -> bool:
    p = PurePosixPath(name.replace("\\", "/"))
    return p.is_absolute() or ".." in p.parts or (len(name) > 1 and name[1] == ":")


def check_members(path: Path) -> int:
    """Refuse archives whose members would escape the target directory; return the member count."""
    try:
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        else:
            with tarfile.open(path) as tf:
                members = tf.getmembers()
                names = [m.name for m in members]
                for m in members:
                    if (m.issym() or m.islnk()) and _unsafe_member_name(m.linkname):
                        raise ClassiflowError(
                            f"{path.name}: member {m.name!r} links outside the archive "
                            f"({m.linkname!r}); refusing to extract"
                        )
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as err:
        raise ClassiflowError(f"{path.name}: not a readable archive ({err})") from None
    for name in names:
        if _unsafe_member_name(name):
            raise ClassiflowError(f"{path.name}: member {name!r} escapes the target directory; refusing to extract")
    return len(names)


def extract(path: Path, dest: Path) -> None:
    """Extract with tarfile's ``data`` filter (no links out, no devices, no setuid) or checked zip."""
    check_members(path)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                zf.extractall(dest)
        else:
            with tarfile.open(path) as tf:
                tf.extractall(dest, filter="data")
    except tarfile.FilterError as err:
        raise ClassiflowError(f"{path.name}: unsafe member refused ({err})") from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as err:
        raise ClassiflowError(f"{path.name}: extraction failed ({err})") from None
