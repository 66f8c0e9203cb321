"""Hostile data and remembered failures: RECORD files naming paths outside the environment,
snapshot archives from Drive with foreign owners and setuid bits, a failed check that must not
be forgotten, one run per real environment."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, strategies as st

from conftest import cli_env, installed, make_venv, run_cli
from warmstart.bootstrap import target_lock
from warmstart.cache import CacheStats
from warmstart.snapshot import _unpack_verified
from warmstart.target import remove_broken
from warmstart.transfer import redact


def site_of(python: Path) -> Path:
    return Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())


def hostile_dist(site: Path, outside: Path, name: str = "beta", version: str = "1.0") -> Path:
    """A half-installed distribution whose RECORD names files outside its environment."""
    info = site / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (site / name).mkdir()
    (site / name / "__init__.py").write_text("")
    (outside / "link-target").mkdir(exist_ok=True)
    (site / "escape").symlink_to(outside / "link-target")
    for victim in ("relative.txt", "absolute.txt", "link-target/through-link.txt"):
        (outside / victim).write_text("not the environment's")
    depth = len(site.relative_to(outside).parts) if site.is_relative_to(outside) else 8
    (info / "RECORD").write_text("\n".join([
        f"{name}/__init__.py,,", f"{name}/missing.py,,",  # gone: what makes it half-installed
        "../" * depth + "relative.txt,,", f"{outside / 'absolute.txt'},,", "escape/through-link.txt,,",
        f"{info.name}/RECORD,,"]) + "\n")
    return info


def test_record_paths_outside_the_prefix_are_never_removed(tmp_path):
    python = make_venv(tmp_path / "env")
    info = hostile_dist(site_of(python), tmp_path)

    refused = remove_broken([info], tmp_path / "env")

    assert len(refused) == 3
    for victim in ("relative.txt", "absolute.txt", "link-target/through-link.txt"):
        assert (tmp_path / victim).read_text() == "not the environment's"
    assert not info.exists() and not (site_of(python) / "beta" / "__init__.py").exists()


def test_bootstrap_over_a_hostile_half_installed_distribution_keeps_outside_files(demo, drive, tmp_path, index):
    python = make_venv(tmp_path / "env")
    hostile_dist(site_of(python), tmp_path)

    result = run_cli("bootstrap", "--recipe", str(demo), "--drive", str(drive), "--python", str(python),
                     env=cli_env(index.url))

    assert result.code == 0, result.stderr
    assert "left alone 3 paths" in result.stderr
    assert (tmp_path / "absolute.txt").exists() and (tmp_path / "relative.txt").exists()
    assert installed(python)["beta"] == "2.0"


def test_a_snapshot_archive_cannot_give_files_a_foreign_owner_or_special_bits(tmp_path):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, mode in (("bin/tool", 0o4755), ("lib/shared.dat", 0o666), ("lib/group", 0o2775)):
            info = tarfile.TarInfo(name)
            info.mode, info.uid, info.gid, info.size = mode, 4321, 4321, 4
            tf.addfile(info, io.BytesIO(b"data"))
    archive = tmp_path / "snap.tar.zst"
    archive.write_bytes(zstandard.ZstdCompressor().compress(raw.getvalue()))
    staging = tmp_path / "staging"

    umask = os.umask(0)  # as in some containers: tar's --no-same-permissions then keeps o+w
    try:
        _unpack_verified(archive, hashlib.sha256(archive.read_bytes()).hexdigest(), staging, CacheStats())
    finally:
        os.umask(umask)

    for name in ("bin/tool", "lib/shared.dat", "lib/group"):
        st = os.lstat(staging / name)
        assert st.st_uid == os.getuid(), f"{name} belongs to whoever restores it"
        assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID | stat.S_IWOTH), oct(st.st_mode)


CHECKED = '\n[[checks]]\nname = "the flag file is there"\nrun = "test -e {flag}"\n'


def test_a_failed_check_is_run_again_until_it_passes(demo, drive, tmp_path, index):
    flag = tmp_path / "ok"
    demo.write_text(demo.read_text() + CHECKED.format(flag=flag))
    python = make_venv(tmp_path / "env")
    args = ("--recipe", str(demo), "--drive", str(drive), "--python", str(python))
    env = cli_env(index.url)

    first = run_cli("bootstrap", *args, env=env)
    again = run_cli("bootstrap", *args, env=env)
    status = run_cli("status", *args, "--json", env=env)
    flag.touch()
    fixed = run_cli("bootstrap", *args, env=env)
    quiet = run_cli("bootstrap", *args, env=env)

    assert first.code == 1 and "checks failed" in first.stderr
    assert again.code == 1 and "checks failed here last time (the flag file is there)" in again.stderr
    assert status.code == 1 and status.report["checks_failed"] == ["the flag file is there"]
    assert status.report["action"] == "run the checks that failed last time again"
    assert fixed.code == 0 and "1 of 1 passed" in fixed.stderr
    assert quiet.code == 0 and "checks" not in quiet.stderr.split("nothing to do", 1)[1]


def test_one_lock_per_real_environment_in_a_folder_only_its_user_can_write(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    python = make_venv(tmp_path / "env")

    spellings = {target_lock(str(p)).lock_file for p in (python, python.with_name("python3"),
                                                          tmp_path / "env" / ".." / "env" / "bin" / "python")}

    assert len(spellings) == 1
    folder = Path(spellings.pop()).parent
    assert folder.is_relative_to(tmp_path / "cache") and stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert target_lock(sys.executable).lock_file != target_lock(str(python)).lock_file


def test_a_lock_timeout_that_is_no_number_is_bad_input(demo, drive, tmp_path, index):
    result = run_cli("bootstrap", "--recipe", str(demo), "--drive", str(drive),
                     "--python", str(make_venv(tmp_path / "env")),
                     env=cli_env(index.url, WARMSTART_LOCK_TIMEOUT="ten minutes"))
    assert result.code == 2
    assert result.stderr.strip().endswith("WARMSTART_LOCK_TIMEOUT must be a number of seconds, got 'ten minutes'")
    assert "Traceback" not in result.stderr


_USERINFO = st.text(st.characters(blacklist_characters="/?#", blacklist_categories=("Zs", "Cc", "Zl", "Zp")),
                    min_size=1, max_size=30)


@given(user=_USERINFO, password=_USERINFO)
def test_no_part_of_a_password_survives_redaction(user, password):
    text = f"error: cannot fetch https://{user}:{password}@index.example/simple/pkg/ (timed out)"
    assert redact(text) == "error: cannot fetch https://***@index.example/simple/pkg/ (timed out)"
