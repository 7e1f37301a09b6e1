import io
import tarfile
import zipfile

import pytest

from classiflow.checksum import sha256_file, verify_sha256
from classiflow.data.archive import check_members, extract
from classiflow.errors import ClassiflowError


def _tar_with(path, name, data=b"x", kind=tarfile.REGTYPE, linkname=""):
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = linkname
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return path


def test_checksum_mismatch_is_refused(tmp_path):
    path = tmp_path / "a.tar.gz"
    _tar_with(path, "a/b.png")
    assert verify_sha256(path, sha256_file(path)) == sha256_file(path)
    with pytest.raises(ClassiflowError, match="sha256 mismatch"):
        verify_sha256(path, "0" * 64)


@pytest.mark.parametrize("name", ["../evil.png", "/etc/evil.png", "a/../../evil.png"])
def test_tar_members_escaping_target_are_refused(tmp_path, name):
    path = _tar_with(tmp_path / "bad.tar.gz", name)
    with pytest.raises(ClassiflowError, match="escapes the target"):
        extract(path, tmp_path / "out")
    assert not (tmp_path / "evil.png").exists()


def test_tar_symlink_out_of_archive_is_refused(tmp_path):
    path = _tar_with(tmp_path / "link.tar.gz", "a/link", kind=tarfile.SYMTYPE, linkname="../../etc/passwd")
    with pytest.raises(ClassiflowError, match="links outside"):
        extract(path, tmp_path / "out")


def test_zip_members_escaping_target_are_refused(tmp_path):
    path = tmp_path / "bad.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("../evil.png", b"x")
    with pytest.raises(ClassiflowError, match="escapes the target"):
        check_members(path)


def test_safe_archive_extracts(tmp_path):
    path = _tar_with(tmp_path / "ok.tar.gz", "root/cat/1.png", b"data")
    extract(path, tmp_path / "out")
    assert (tmp_path / "out" / "root" / "cat" / "1.png").read_bytes() == b"data"


def test_not_an_archive_is_a_clear_error(tmp_path):
    path = tmp_path / "fake.tar.gz"
    path.write_bytes(b"not a tarball")
    with pytest.raises(ClassiflowError, match="not a readable archive"):
        check_members(path)
