"""Online, a snapshot that reads slowly races the package index (warmstart.race): uv installs the
same pins into a second staging folder, checked against the lock as the snapshot is, and
whichever tree is verified first is placed. Real parts: the snapshot of a wheel of about four
parts on Drive behind a real FUSE layer that caps its throughput (bench/slowfs.py), a real
index on 127.0.0.1, real uv. The index lane starts only when the read has more time left than
the index would take (for an archive this small, race.RACE_AFTER), so each Drive here is slow
enough for that, or fast."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import _write_simple_index, bootstrap, build_wheel, dead_url, needs_fuse, serve_folder, slow_drive
from test_multisource import LOCKED, archive_in, bulky, tree  # noqa: F401  (bulky: a fixture)
from test_team import VM

from warmstart.parts import PART_SIZE
from warmstart.race import RACE_AFTER

pytestmark = needs_fuse


@pytest.fixture
def filled(bulky, tmp_path):  # noqa: F811
    """A first VM filled Drive (wheels and snapshot) from the index and was wiped: the files it
    had. The next VM has the same prefix (a snapshot is made for one)."""
    recipe, url = bulky
    first = VM(tmp_path / "vm", url, {}, "")
    done = first.bootstrap(recipe)
    assert done.code == 0, done.stderr
    assert archive_in(first.drive).stat().st_size > 3 * PART_SIZE
    had = tree(first.python)
    shutil.rmtree(first.root / "venv")
    shutil.rmtree(first.root / "cache")
    return had


def wiped_vm(tmp_path: Path, index_url: str) -> VM:
    return VM(tmp_path / "vm", index_url, {}, "")


def restore_through(vm: VM, recipe: Path, tmp_path: Path, mib_per_s: float, *flags: str,
                    hang_after: int | None = None):
    """Bootstrap the wiped VM with its Drive folder read through the slow FUSE layer."""
    seconds = archive_in(vm.drive).stat().st_size / 2**20 / mib_per_s
    assert hang_after is not None or seconds > RACE_AFTER + 1, "slow enough for the index to be asked"
    with slow_drive(vm.drive, tmp_path / "slow", 5, mib_per_s, hang_after=hang_after) as mount:
        if hang_after is not None:  # VM.bootstrap reads every file on Drive after (no secrets there)
            return bootstrap(recipe, mount, vm.python, *flags, env=vm.env)
        vm.drive = mount
        return vm.bootstrap(recipe, *flags)


def leftovers(vm: VM) -> list[str]:
    return [p.name for p in (vm.python.parent.parent).glob(".warmstart-restore-*")]


def test_the_index_wins_over_a_slow_drive_and_installs_the_same_files(bulky, filled, tmp_path):  # noqa: F811
    recipe, url = bulky
    vm = wiped_vm(tmp_path, url)
    archive = archive_in(vm.drive)

    result = restore_through(vm, recipe, tmp_path, mib_per_s=2)  # about 14 s of reading

    assert result.code == 0, result.stderr
    snapshot = result.report["snapshot"]
    assert snapshot["used"] is False and snapshot["reason"] == "the package index was faster", snapshot
    assert snapshot["race"]["winner"] == "index" and "index_failed" not in snapshot["race"]
    assert result.report["installed"] == LOCKED and result.report["warnings"] == []
    assert tree(vm.python) == filled, "the files of the install the snapshot was made of, byte for byte"
    assert leftovers(vm) == [], "the snapshot's staging folder, stopped midway, is gone"
    assert archive.exists() and not list(archive.parent.glob("*.damaged-*")), "a snapshot that lost is not damaged"


def test_a_drive_that_hangs_midway_loses_to_the_index(bulky, filled, tmp_path):  # noqa: F811
    """Drive stops answering 4 MiB into the archive: the read that hangs counts as slow as it
    goes, the index is asked, and its tree is placed without waiting for Drive."""
    recipe, url = bulky
    vm = wiped_vm(tmp_path, url)

    result = restore_through(vm, recipe, tmp_path, 100, hang_after=4 << 20)

    assert result.code == 0, result.stderr
    snapshot = result.report["snapshot"]
    assert snapshot["used"] is False and snapshot["race"]["winner"] == "index", snapshot
    assert result.report["installed"] == LOCKED
    assert tree(vm.python) == filled
    assert leftovers(vm) == []


def test_an_unreachable_index_leaves_the_race_to_the_snapshot(bulky, filled, tmp_path):  # noqa: F811
    recipe, _url = bulky
    vm = wiped_vm(tmp_path, dead_url())

    result = restore_through(vm, recipe, tmp_path, mib_per_s=6)

    assert result.code == 0, result.stderr
    snapshot = result.report["snapshot"]
    # uv was asked, and lost: it failed, or still retried the connection when the snapshot was in
    assert snapshot["used"] is True and snapshot["race"]["winner"] == "snapshot", snapshot
    failed = snapshot["race"].get("index_failed")
    assert failed is None or "install the locked packages from the index" in failed, failed
    assert result.report["warnings"] == [], "a lane that lost is no warning"
    assert tree(vm.python) == filled
    assert leftovers(vm) == []


def test_an_index_serving_other_files_loses_to_the_snapshot(bulky, filled, tmp_path):  # noqa: F811
    """The index serves a bulky 1.0 that is not the locked one: uv refuses it by the lock's hash."""
    recipe, _url = bulky
    (tmp_path / "other" / "files").mkdir(parents=True)
    build_wheel(tmp_path / "other" / "files", "bulky", "1.0", extra={"bulky/blob0.bin": b"not the locked blob"})
    _write_simple_index(tmp_path / "other")
    url, server = serve_folder(tmp_path / "other")
    try:
        vm = wiped_vm(tmp_path, f"{url}/simple")
        result = restore_through(vm, recipe, tmp_path, mib_per_s=6)
    finally:
        server.shutdown()

    assert result.code == 0, result.stderr
    snapshot = result.report["snapshot"]
    assert snapshot["used"] is True and snapshot["race"]["winner"] == "snapshot", snapshot
    assert "sha256 the lock does not list" in snapshot["race"]["index_failed"]
    assert tree(vm.python) == filled
    assert leftovers(vm) == []


def test_offline_the_index_is_never_asked(bulky, filled, tmp_path):  # noqa: F811
    recipe, url = bulky
    vm = wiped_vm(tmp_path, url)

    result = restore_through(vm, recipe, tmp_path, 6, "--offline")

    assert result.code == 0, result.stderr
    assert result.report["snapshot"]["used"] is True and "race" not in result.report["snapshot"]
    assert tree(vm.python) == filled


def test_a_drive_that_keeps_up_is_not_raced(bulky, filled, tmp_path):  # noqa: F811
    """Local disk: the restore is bound by the CPUs, and a second install would only slow it."""
    recipe, url = bulky
    vm = wiped_vm(tmp_path, url)

    result = vm.bootstrap(recipe)

    assert result.code == 0, result.stderr
    assert result.report["snapshot"]["used"] is True and "race" not in result.report["snapshot"]
    assert tree(vm.python) == filled
