"""warmstart.unpack: a snapshot's tar stream unpacked by warmstart itself, each file hashed from
the bytes it wrote. Real archives written by Python's tarfile (as snapshot.pack writes them)
and by GNU tar, fed in every way a stream can be cut."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from warmstart.manifest import Untrusted, signature
from warmstart.transfer import WriteFailed
from warmstart.unpack import Damaged, Unpacker

LONG = "lib/python3.12/site-packages/" + "a_rather_long_package_name/" * 5 + "module_with_a_long_name.py"
FILES = {
    "lib/python3.12/site-packages/pkg/__init__.py": b"print('hi')\n",
    "lib/python3.12/site-packages/pkg/empty.py": b"",
    "lib/python3.12/site-packages/pkg/data.bin": os.urandom(3 * 1024 * 1024 + 7),  # spans many chunks
    "lib/python3.12/site-packages/pkg/b\u00e4r.txt": b"non-ASCII name\n",
    LONG: b"x = 1\n",  # over 100 bytes: its name is in a pax header
    "bin/tool": b"#!/bin/sh\necho tool\n",
}


def archive(files: dict[str, bytes] = FILES, add=None) -> bytes:
    """A tar as snapshot.pack writes one: PAX format, files only, mtimes as pax records."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000.25
            info.mode = 0o755 if name.startswith("bin/") else 0o644
            tar.addfile(info, io.BytesIO(data))
        if add:
            add(tar)
    return raw.getvalue()


def unpack(data: bytes, root: Path, cuts: list[int] | None = None) -> dict:
    root.mkdir(exist_ok=True)
    unpacker = Unpacker(root)
    at = 0
    try:
        for size in [*(cuts or []), len(data)]:
            unpacker.feed(data[at:at + size])
            at += size
            if at >= len(data):
                break
        return unpacker.close()
    except BaseException:
        unpacker.abort()
        raise


def test_files_are_written_as_streamed_and_hashed_from_the_bytes_written(tmp_path):
    hashes = unpack(archive(), tmp_path / "out")

    assert set(hashes) == set(FILES)
    for name, data in FILES.items():
        path = tmp_path / "out" / name
        assert path.read_bytes() == data
        assert hashes[name] == (hashlib.sha256(data).hexdigest(), signature(os.lstat(path)))
    assert os.lstat(tmp_path / "out" / "bin/tool").st_mode & 0o111, "an executable stays one"
    assert not os.lstat(tmp_path / "out" / LONG).st_mode & 0o111


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(min_value=1, max_value=3000), max_size=60))
def test_how_the_stream_is_cut_changes_nothing(tmp_path, cuts):
    out = tmp_path / "cut"
    shutil.rmtree(out, ignore_errors=True)
    hashes = unpack(archive(), out, cuts)
    assert {name: got[0] for name, got in hashes.items()} == {n: hashlib.sha256(d).hexdigest() for n, d in FILES.items()}
    assert all((out / name).read_bytes() == data for name, data in FILES.items())


def test_an_archive_gnu_tar_wrote_in_the_posix_format_unpacks(tmp_path):
    tree = tmp_path / "tree"
    for name, data in FILES.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(data)
    data = subprocess.run(["tar", "--format=posix", "-cf", "-", "-C", str(tree), "lib", "bin"],
                          check=True, capture_output=True).stdout

    hashes = unpack(data, tmp_path / "out")

    assert {name: got[0] for name, got in hashes.items()} == {n: hashlib.sha256(d).hexdigest() for n, d in FILES.items()}


def link(kind: bytes, name: str, target: str):
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, target
        tar.addfile(info)
    return add


def member(name: str, data: bytes = b"evil", kind: bytes = tarfile.REGTYPE, **pax: str):
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.size, info.pax_headers = kind, len(data), pax
        tar.addfile(info, io.BytesIO(data) if data else None)
    return add


@pytest.mark.parametrize(("add", "error", "message"), [
    (link(tarfile.SYMTYPE, "lib/shadow", "/etc"), Untrusted, "it holds a link, lib/shadow, which no locked wheel installs"),
    (link(tarfile.LNKTYPE, "lib/same", "bin/tool"), Untrusted, "it holds a hard link, lib/same"),
    (member("dev/null", b"", tarfile.CHRTYPE), Untrusted, "it holds a device, dev/null"),
    (member("/etc/cron.d/evil"), Damaged, "it names '/etc/cron.d/evil', which lies outside the environment"),
    (member("lib/../../evil"), Damaged, "which lies outside the environment"),
    (member("bin/tool"), Damaged, "it holds bin/tool twice"),
    (member("bin/tool/inside"), Damaged, "it holds bin/tool both as a file and as a folder"),
    (member("lib/python3.12/site-packages/pkg", b"", tarfile.REGTYPE), Damaged, "both as a file and as a folder"),
    (member("lib/sparse", kind=tarfile.GNUTYPE_SPARSE), Damaged, "as a member of type b'S'"),
    (member("lib/x", **{"GNU.sparse.map": "0,4"}), Damaged, "a pax header sets 'GNU.sparse.map'"),
    (member("lib/x", **{"size": "4"}), Damaged, "a pax header sets 'size'"),
    (member("lib/x", **{"linkpath": "/etc/passwd"}), Damaged, "a pax header sets 'linkpath'"),
])
def test_what_warmstart_never_writes_is_refused_and_nothing_lands_outside(tmp_path, add, error, message):
    with pytest.raises(error, match=re.escape(message)):
        unpack(archive(add=add), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "nothing outside the folder"
    assert not any(p.is_symlink() for p in (tmp_path / "out").rglob("*"))


def test_a_gnu_long_name_is_refused(tmp_path):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w|", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo(LONG)
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(Damaged, match="not in the POSIX format warmstart writes"):
        unpack(raw.getvalue(), tmp_path / "out")


def test_a_damaged_header_or_a_cut_stream_is_refused(tmp_path):
    data = bytearray(archive())
    data[1024 + 10] ^= 0xFF  # the first file's name: its header follows a pax header and its record
    with pytest.raises(Damaged, match="checksum differs"):
        unpack(bytes(data), tmp_path / "a")
    whole = archive()
    with pytest.raises(Damaged, match=re.escape("it is cut short inside lib/python3.12/site-packages/pkg/data.bin")):
        unpack(whole[:len(whole) // 2], tmp_path / "b")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=1, max_value=255)),
                      min_size=1, max_size=4))
def test_any_damage_is_refused_or_unpacked_never_a_crash_never_outside(tmp_path, flips):
    small = {k: v for k, v in FILES.items() if len(v) < 1024}
    data = bytearray(archive(small))
    for at, bits in flips:
        data[at % len(data)] ^= bits
    out = tmp_path / "fuzz" / "out"
    shutil.rmtree(tmp_path / "fuzz", ignore_errors=True)
    (tmp_path / "fuzz").mkdir()
    try:
        hashes = unpack(bytes(data), out)
    except (Damaged, Untrusted):
        pass
    else:
        for name, (digest, _sig) in hashes.items():
            assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert [p.name for p in (tmp_path / "fuzz").iterdir()] == ["out"]
    assert not any(p.is_symlink() for p in out.rglob("*"))


def test_a_name_no_disk_holds_is_the_archives_fault_not_the_disks(tmp_path):
    """An archive naming a file of 300 bytes (no Linux file system holds one) fails as a plain
    OSError, which a restore takes as the snapshot's fault (the wheels instead), not as
    WriteFailed, which ends the run as a full disk does (tests/test_hostile.py)."""
    with pytest.raises(OSError) as caught:
        unpack(archive({"lib/" + "n" * 300 + ".py": b"x = 1\n"}), tmp_path / "long")
    assert not isinstance(caught.value, WriteFailed) and caught.value.errno == errno.ENAMETOOLONG
