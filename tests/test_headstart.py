"""uv from the index, begun by warmstart.sh before its bootstrap plans (warmstart.headstart), and
taken over by that bootstrap as its race's index lane. Real parts: the snapshot of a wheel of
about seven parts on a real FUSE Drive (bench/slowfs.py), read ahead by a real child; real uv
from a real index on 127.0.0.1; the real bootstrap command, started as warmstart.sh starts it
(tools._bootstrap) with what this process began handed on through real pipes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import cli_command, dead_url, needs_fuse, serve_folder, slow_drive, wait_until
from test_multisource import LOCKED, archive_in, bulky, tree  # noqa: F401  (bulky: a fixture)
from test_race import filled, leftovers, wiped_vm  # noqa: F401  (filled: a fixture)

from warmstart import config, early, headstart, home, locktext, prefetch, tools
from warmstart.background import ChildRead
from warmstart.errors import WarmstartError
from warmstart.lock import parse_lock
from warmstart.settings import Options
from warmstart.store import DriveStore

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _nothing_begun():
    """Each test is a warmstart.sh of its own (one that ended closes the module for good)."""
    headstart._begun, headstart._closed = None, False
    yield
    early.drop()
    headstart.close()


def test_the_lines_read_from_a_lock_s_text_are_those_its_pins_install():
    """warmstart.sh reads them with the standard library; the bootstrap compares them with what
    its plan would have uv install (Pin.requirement_line): they must come out the same."""
    path = next((REPO / "requirements" / "colab-2026.07").glob("hyperlpr-py312-*.txt"))
    pins = parse_lock(path).pins
    wanted = [f"{p.name}=={p.version}" for p in pins if p.name in ("hyperlpr3", "loguru", "onnxruntime-gpu")]

    lines = locktext.requirement_lines(path.read_text(), wanted)

    assert lines == [p.requirement_line() for p in pins if f"{p.name}=={p.version}" in wanted]
    assert len(lines) == 3
    assert locktext.requirement_lines(path.read_text(), [*wanted, "numpy==0.0.1"]) is None  # one not in the lock


def test_the_lock_is_found_beside_the_in_file_the_recipe_names(tmp_path):
    """A project's own recipe whose `.in` is not requirements/<recipe>.in (here deps/requirements.in):
    its locks are named from that file (lock.lock_path), and warmstart.sh finds the one whose body's
    sha256 the snapshot names, by the recipe's file or by its name in a checkout."""
    lock = next((REPO / "requirements" / "colab-2026.07").glob("hyperlpr-py312-*.txt"))
    text = lock.read_text()
    wanted = [f"{p.name}=={p.version}" for p in parse_lock(lock).pins if p.name in ("hyperlpr3", "loguru")]
    project = tmp_path / "app"
    (project / "deps" / "colab-2026.07").mkdir(parents=True)
    (project / "deps" / "colab-2026.07" / "requirements-py312-manylinux_x86_64.txt").write_text(text)
    (project / "deps" / "requirements-py312-manylinux_x86_64.txt").write_text(text + "# another lock\n")
    (project / "recipes").mkdir()
    recipe = project / "recipes" / "app.toml"
    recipe.write_text('name = "app"\n[requirements]\nin = "deps/requirements.in"\n')
    sha256 = locktext.body_sha256(text)

    lines = locktext.requirement_lines(text, wanted)
    assert lines and len(lines) == 2
    assert headstart.locked_lines(str(recipe), REPO, "py312", sha256, wanted) == lines
    assert headstart.locked_lines("app", project, "py312", sha256, wanted) == lines
    assert headstart.locked_lines(str(recipe), REPO, "py313", sha256, wanted) is None  # another Python's
    assert headstart.locked_lines(str(recipe), REPO, "py312", "0" * 64, wanted) is None  # no lock of that sha256
    recipe.write_text("name = [")
    assert headstart.locked_lines(str(recipe), REPO, "py312", sha256, wanted) is None  # left to the bootstrap


def test_a_recipe_on_drive_named_by_name_has_its_lock_found_where_the_bootstrap_finds_it(tmp_path, monkeypatch):
    """A recipe in the Drive's recipe folder, given by name (`warmstart.sh myproj`): its lock was
    looked for in the checkout's requirements/ alone, so warmstart.sh never began uv for it and its
    race with the index began only with the bootstrap. It is looked for as the bootstrap looks:
    the checkout's recipes/, then WARMSTART_RECIPES, else the Drive's recipe folder."""
    lock = next((REPO / "requirements" / "colab-2026.07").glob("hyperlpr-py312-*.txt"))
    text = lock.read_text()
    wanted = [f"{p.name}=={p.version}" for p in parse_lock(lock).pins if p.name in ("hyperlpr3", "loguru")]
    sha256 = locktext.body_sha256(text)
    lines = locktext.requirement_lines(text, wanted)
    assert lines and len(lines) == 2
    drive = tmp_path / "drive"
    ours = drive / ".warmstart"
    (ours / "recipes").mkdir(parents=True)
    (ours / "recipes" / "myproj.toml").write_text('name = "myproj"\n[requirements]\nin = "requirements/myproj.in"\n')
    (ours / "requirements" / "colab-2026.07").mkdir(parents=True)
    (ours / "requirements" / "colab-2026.07" / "myproj-py312-manylinux_x86_64.txt").write_text(text)
    monkeypatch.delenv("WARMSTART_RECIPES", raising=False)

    assert headstart.locked_lines("myproj", REPO, "py312", sha256, wanted, drive) == lines
    assert headstart.locked_lines("myproj", REPO, "py312", sha256, wanted) is None  # no Drive: not found
    assert headstart.locked_lines("myproj", REPO, "py313", sha256, wanted, drive) is None  # another Python's
    monkeypatch.setenv("WARMSTART_RECIPES", str(tmp_path / "elsewhere"))
    assert headstart.locked_lines("myproj", REPO, "py312", sha256, wanted, drive) is None  # not the folder used
    monkeypatch.setenv("WARMSTART_RECIPES", str(ours / "recipes"))
    assert headstart.locked_lines("myproj", REPO, "py312", sha256, wanted, tmp_path / "no-drive") == lines


def test_the_question_finds_the_lock_in_what_warmstart_sh_read_ahead(tmp_path):
    """warmstart.sh reads the recipe's file and locks at once from its checkout on Drive
    (config.reading_ahead): the lock the online question looks for comes from there, not from
    an open of Drive's each. Changed on disk after it was read ahead, it is still the one read."""
    lock = next((REPO / "requirements" / "colab-2026.07").glob("hyperlpr-py312-*.txt"))
    text = lock.read_text()
    wanted = [f"{p.name}=={p.version}" for p in parse_lock(lock).pins if p.name == "loguru"]
    project = tmp_path / "checkout"
    (project / "requirements" / "colab-2026.07").mkdir(parents=True)
    (project / "recipes").mkdir()
    (project / "recipes" / "hyperlpr.toml").write_text('name = "hyperlpr"\n')
    ours = project / "requirements" / "colab-2026.07" / lock.name
    ours.write_text(text)
    sha256 = locktext.body_sha256(text)
    config.read_ahead(project, [], ["requirements/*/hyperlpr-py*.txt"])
    try:
        # read, not only begun: a change on disk before the read would be what it reads
        wait_until(lambda: config._listed.is_set() and (read := config._ahead.get(ours)) is not None and read.done(),
                   10, "nothing was read ahead")
        ours.write_text("# another lock\n")
        assert headstart.locked_lines("hyperlpr", project, "py312", sha256, wanted) == \
            locktext.requirement_lines(text, wanted)
    finally:
        config.forget_ahead()
    assert headstart.locked_lines("hyperlpr", project, "py312", sha256, wanted) is None  # read now: changed


@contextmanager
def _read_ahead(mount: Path, recipe: Path) -> Iterator[prefetch.Ahead]:
    """What warmstart.sh's read ahead has once its thread has read the archive's index; ended
    before the Drive is unmounted, whatever happens (its child holds the archive open)."""
    store = DriveStore(mount)
    archive = early.likely_archive(store, recipe.stem, None)
    assert archive
    ahead = prefetch.Ahead(store.where("snapshots", archive), ChildRead(store.path("snapshots", archive)),
                        most=prefetch.HANDED_AHEAD)
    early._begun = ahead
    try:
        early._read_index(ahead, store, archive)
        assert ahead.index, "the index was read"
        yield ahead
    finally:
        early.drop()
        headstart.close()


def _on_this_vm(monkeypatch, vm) -> None:
    """warmstart.sh's environment is the bootstrap's: the index, the caches."""
    for name, value in vm.env.items():
        monkeypatch.setenv(name, value)


def _bootstrap_as_warmstart_sh(recipe: Path, mount: Path, vm, capfd) -> tuple[int, dict]:
    code = tools._bootstrap(cli_command("bootstrap", "--recipe", str(recipe), "--drive", str(mount), "--python",
                                        str(vm.python), "--json"), vm.env)
    return code, json.loads(capfd.readouterr().out)


@needs_fuse
def test_uv_begun_by_warmstart_sh_is_the_bootstrap_s_index_lane(bulky, filled, tmp_path, monkeypatch, capfd):  # noqa: F811
    """Behind a Drive far slower than the index, warmstart.sh begins uv before the bootstrap
    starts; the bootstrap waits for it instead of starting its own, checks its tree and places
    it. warmstart has run on this VM (its run locks are there): the bootstrap begins no read of
    its own, so what it restores comes from what warmstart.sh began."""
    recipe, _url = bulky
    url, server = serve_folder(recipe.parents[2] / "index", delay=0.5)  # uv takes a second or more
    try:
        vm = wiped_vm(tmp_path, f"{url}/simple")
        home.run_locks(vm.env).mkdir(parents=True)
        _on_this_vm(monkeypatch, vm)
        with slow_drive(vm.drive, tmp_path / "slow", 5, 1) as mount, _read_ahead(mount, recipe) as ahead:
            # about 28 s of reading: uv at the lowest priority, on a loaded machine, may take 20 s and more.
            # A recipe given as a file: its lock is looked for in its own project, not in the checkout.
            headstart.consider(ahead, Options(recipe=str(recipe)), str(vm.python), (), REPO)

            begun = headstart._begun
            assert begun is not None, "the read would lose to the index: uv began"
            assert begun.folder.parent == vm.python.parent.parent  # the target's prefix
            code, report = _bootstrap_as_warmstart_sh(recipe, mount, vm, capfd)
    finally:
        server.shutdown()

    race = report["snapshot"]["race"]
    assert code == 0 and race["winner"] == "index" and race["index_begun_by"] == "warmstart.sh", str(race)
    assert race["index_started_s"] < 0  # before the restore began
    assert report["snapshot"]["used"] is False
    assert tree(vm.python) == filled  # the same files as the snapshot's
    assert not leftovers(vm) and not begun.folder.exists() and not begun.requirements.exists()


@needs_fuse
def test_uv_on_other_pins_is_stopped_by_the_bootstrap_and_its_folder_removed(bulky, filled, tmp_path, monkeypatch,  # noqa: F811
                                                                              capfd):
    """A lock whose lines differ from the plan's (here one more hash) is not the plan's install:
    the bootstrap stops it at once and races the index itself, with its own uv."""
    recipe, _url = bulky
    url, server = serve_folder(recipe.parents[2] / "index", delay=1.0)
    try:
        vm = wiped_vm(tmp_path, f"{url}/simple")
        home.run_locks(vm.env).mkdir(parents=True)
        _on_this_vm(monkeypatch, vm)
        lock = next((recipe.parents[1] / "requirements").glob("demo-py*.txt"))
        lines = [line + " --hash=sha256:" + "0" * 64 for line in
                 locktext.requirement_lines(lock.read_text(), [f"bulky=={LOCKED['bulky']}"]) or []]
        with slow_drive(vm.drive, tmp_path / "slow", 5, 2) as mount, _read_ahead(mount, recipe):
            prefix = vm.python.parent.parent
            begun = headstart._begun = headstart.HeadStart(str(vm.python), lines, prefix / ".warmstart-restore-x", ())

            code, report = _bootstrap_as_warmstart_sh(recipe, mount, vm, capfd)
    finally:
        server.shutdown()

    race = report["snapshot"]["race"]
    assert code == 0 and "index_begun_by" not in race and race["index_started_s"] >= 0, report
    assert tree(vm.python) == filled
    assert not leftovers(vm) and not begun.folder.exists()


@needs_fuse
def test_uv_for_a_snapshot_the_plan_does_not_restore_is_stopped_when_the_install_begins(bulky, filled, tmp_path,  # noqa: F811
                                                                                       monkeypatch, capfd):
    """warmstart.sh began uv for the snapshot its read ahead guessed; the bootstrap's plan restores
    none (here the snapshot is gone from Drive; on Colab, an image that drifted has another set to
    install), so it installs the wheels from Drive itself. uv, still waiting on a slow index, went
    on beside that install until the run ended; it is stopped as the install begins."""
    recipe, _url = bulky
    url, server = serve_folder(recipe.parents[2] / "index", delay=5.0)  # keeps uv waiting
    stopped: list[float] = []
    try:
        vm = wiped_vm(tmp_path, f"{url}/simple")
        home.run_locks(vm.env).mkdir(parents=True)
        _on_this_vm(monkeypatch, vm)
        with slow_drive(vm.drive, tmp_path / "slow", 5, 8) as mount, _read_ahead(mount, recipe) as ahead:
            headstart.consider(ahead, Options(recipe=str(recipe)), str(vm.python), (), recipe.parents[1])
            begun = headstart._begun
            assert begun is not None
            for made in (vm.drive / ".warmstart" / "v1" / "snapshots").iterdir():
                made.unlink()

            def note_the_stop() -> None:
                wait_until(lambda: begun._stopped, 60, "never stopped")
                stopped.append(time.monotonic())

            threading.Thread(target=note_the_stop, daemon=True).start()
            code, report = _bootstrap_as_warmstart_sh(recipe, mount, vm, capfd)
            ended = time.monotonic()
    finally:
        server.shutdown()

    assert code == 0 and "snapshot" not in report, report  # none restored, nothing raced
    assert tree(vm.python) == filled  # from Drive's wheels, read at 8 MiB/s: seconds
    assert stopped and stopped[0] < ended - 2, "uv ran on until the run ended"


@needs_fuse
def test_uv_that_fails_leaves_the_restore_to_the_snapshot(bulky, filled, tmp_path, monkeypatch, capfd):  # noqa: F811
    recipe, _url = bulky
    vm = wiped_vm(tmp_path, dead_url())  # nothing answers there
    home.run_locks(vm.env).mkdir(parents=True)
    _on_this_vm(monkeypatch, vm)
    with slow_drive(vm.drive, tmp_path / "slow", 5, 4) as mount, _read_ahead(mount, recipe) as ahead:
        headstart.consider(ahead, Options(recipe=str(recipe)), str(vm.python), (), recipe.parents[1])
        assert headstart._begun is not None

        code, report = _bootstrap_as_warmstart_sh(recipe, mount, vm, capfd)

    race = report["snapshot"]["race"]
    assert code == 0 and race["winner"] == "snapshot" and race["index_begun_by"] == "warmstart.sh", report
    assert "install the locked packages from the index" in race["index_failed"]
    assert report["snapshot"]["used"] is True and tree(vm.python) == filled
    assert not leftovers(vm)


class _Timed:
    """What _read_left sees of a read ahead (prefetch.Ahead): its pace so far, and whether it waits."""

    def __init__(self, busy: float, timed: int, full: bool, came: int) -> None:
        self.measured, self.full, self.came, self.ended = (busy, timed), full, came, False


def test_the_target_is_asked_its_version_and_prefix_by_the_path_as_given(tmp_path, monkeypatch):
    """warmstart.sh's --python as typed (`--python venv/bin/python`, from the folder it is in): the
    question runs it from `/` (a project's json.py stays out of it), where that path names nothing,
    and the race was silently not run."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
    monkeypatch.chdir(tmp_path)
    version, prefix = headstart._version_and_prefix(os.path.join("venv", "bin", "python"))
    assert version == "{}.{}".format(*sys.version_info[:2]) and prefix == str(tmp_path / "venv")


def test_drive_s_pace_is_taken_from_what_a_full_read_ahead_timed():
    """A read ahead that stopped for room with less than PACE_BYTES timed (the pipe's backlog is
    counted out of its pace) would otherwise keep warmstart.sh from the tools' wheels for
    ASK_WAIT, and leave the question unanswered."""
    MiB = 1 << 20
    assert headstart._read_left(_Timed(0.05, MiB, False, 2 * MiB), 20 * MiB) == pytest.approx(0.9)
    assert headstart._read_left(_Timed(0.05, MiB // 2, True, 2 * MiB), 20 * MiB) == pytest.approx(1.8)
    began = time.monotonic()
    assert headstart._read_left(_Timed(0.05, MiB // 2, False, MiB), 20 * MiB) is None  # still reading: no pace yet
    assert time.monotonic() - began >= headstart.PACE_WAIT


def test_no_uv_begins_offline_with_pip_or_where_drive_keeps_up(bulky, filled, tmp_path, monkeypatch):  # noqa: F811
    """Drive on local disk reads faster than any index: nothing to race."""
    recipe, _url = bulky
    vm = wiped_vm(tmp_path, dead_url())
    _on_this_vm(monkeypatch, vm)
    with _read_ahead(vm.drive, recipe) as ahead:
        for options in (Options(recipe=str(recipe)), Options(recipe=str(recipe), offline=True),
                        Options(recipe=str(recipe), installer="pip")):
            headstart.consider(ahead, options, str(vm.python), (), recipe.parents[1])
            assert headstart._begun is None, options
    assert archive_in(vm.drive).exists()


def test_the_bootstrap_stops_uv_through_the_pipe_it_was_handed(tmp_path, monkeypatch):
    """Both ends in this process: what warmstart.sh hands on, as the bootstrap receives it."""
    url, server = serve_folder(tmp_path, delay=5.0)  # an index that keeps uv waiting
    try:
        monkeypatch.setenv("PIP_INDEX_URL", f"{url}/simple")
        prefix = tmp_path / "prefix"
        line = "bulky==1.0 --hash=sha256:" + "0" * 64
        begun = headstart._begun = headstart.HeadStart(sys.executable, [line], prefix / ".warmstart-restore-z", ())
        wait_until(lambda: begun._child is not None, 10, "uv did not start")
        monkeypatch.setenv(headstart.HANDED, begun.environ[headstart.HANDED])
        headstart.receive()
        received = headstart.received()
        assert received is not None and headstart.HANDED not in os.environ  # not for its children
        (tmp_path / "same.txt").write_text(line + "\n")
        (tmp_path / "other.txt").write_text(line.replace("1.0", "1.1") + "\n")
        assert received.installs(tmp_path / "same.txt", prefix)
        assert not received.installs(tmp_path / "other.txt", prefix)
        assert not received.installs(tmp_path / "same.txt", tmp_path)  # another prefix

        received.stop()

        wait_until(lambda: begun._child.poll() is not None, 5, "uv went on after the bootstrap stopped it")
        with pytest.raises(WarmstartError, match="stopped"):
            received.wait(threading.Event())
    finally:
        headstart._received = None  # its ends are the HeadStart's, closed with it
        server.shutdown()


def test_a_head_start_never_handed_on_is_ended_and_removed(tmp_path, monkeypatch):
    """warmstart.sh failed before its bootstrap (the tools would not install): uv stops, and
    nothing it wrote stays."""
    url, server = serve_folder(tmp_path, delay=5.0)  # an index that keeps uv waiting
    try:
        monkeypatch.setenv("PIP_INDEX_URL", f"{url}/simple")
        folder = tmp_path / "prefix" / ".warmstart-restore-y"
        begun = headstart._begun = headstart.HeadStart(sys.executable,
                                                       ["bulky==1.0 --hash=sha256:" + "0" * 64], folder, ())
        wait_until(lambda: begun._child is not None, 10, "uv did not start")

        headstart.close()

        assert begun._child.poll() is not None
        assert not folder.exists() and not begun.requirements.exists()
    finally:
        server.shutdown()
