"""A snapshot archive's read, begun before the plan names it (warmstart.early). Real parts: a real
child (`cat`) reading real files, a real FUSE Drive (bench/slowfs.py), the real command restoring
a wiped VM from it."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, bootstrap, cli_command, dead_url, make_venv, needs_fuse, slow_drive, wait_until
from test_multisource import bulky, tree  # noqa: F401  (bulky: a fixture)
from test_race import filled, wiped_vm  # noqa: F401  (filled: a fixture)

from warmstart import early, home, prefetch, settings, tools
from warmstart.background import ChildRead
from warmstart.layout import LAYOUT
from warmstart.profiles import select_profile
from warmstart.readahead import ReadAhead
from warmstart.snapshot import Snapshot, SnapshotUnusable
from warmstart.store import DriveStore
from warmstart.tiered import TieredStore

MiB = 1 << 20


def _filled_to_the_end(ahead: prefetch.Ahead) -> None:
    # it waits when full, and stops at the end
    wait_until(lambda: ahead._ended or ahead._held >= ahead._most, 10, "the read ahead did not stop")


def _read_as_a_restore(stream, size: int = 4 * MiB) -> bytes:
    """256 KiB first, then 4 MiB at a time, as snapshot.ReadAhead asks."""
    got, ask = bytearray(), ReadAhead.FIRST
    while block := stream.read(ask):
        got += block
        ask = size
    return bytes(got)


def test_what_was_read_ahead_and_the_rest_come_out_whole_and_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(prefetch, "AHEAD", 2 * MiB)
    data = os.urandom(5 * MiB + 12345)
    (tmp_path / "a.tar.zst").write_bytes(data)

    ahead = prefetch.Ahead("a", ChildRead(tmp_path / "a.tar.zst"))
    _filled_to_the_end(ahead)
    taken = ahead.take()
    with taken:
        assert taken.ahead == 2 * MiB  # no more than AHEAD waits in memory
        assert _read_as_a_restore(taken) == data


def test_a_held_read_ahead_reads_nothing_more_until_it_resumes(tmp_path):
    """As warmstart.sh holds it while the uv it began runs (warmstart.headstart)."""
    data = os.urandom(6 * MiB)
    (tmp_path / "a.tar.zst").write_bytes(data)
    with prefetch.Ahead("a", ChildRead(tmp_path / "a.tar.zst"), most=MiB) as ahead:
        ahead.hold(30)
        taken = next(ahead.drain())  # one chunk goes: room for more
        time.sleep(0.3)
        assert ahead.came == len(taken) + ahead._held and ahead._held < MiB and not ahead.ended, "it waits"

        ahead.resume()

        got = taken + b"".join(ahead.drain())
        assert got == data and ahead.ended


def test_a_read_begun_for_drive_s_pace_alone_reads_on_once_begun_again_with_more_room(tmp_path, monkeypatch):
    """Online, warmstart.sh begins the read before the tools' wheels are off Drive, holding no more
    than what tells Drive's pace, then begins it again for the rest (tools.py)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # a wiped VM: warmstart never ran
    data = os.urandom(8 * MiB)
    (tmp_path / "a.tar.zst").write_bytes(data)
    ahead = early._begun = prefetch.Ahead("a", ChildRead(tmp_path / "a.tar.zst"), most=prefetch.PACE_AHEAD)
    try:
        _filled_to_the_end(ahead)
        time.sleep(0.1)
        assert ahead.came == prefetch.PACE_AHEAD and not ahead.ended

        assert early.begin({"recipe": "demo"}, tmp_path, prefetch.HANDED_AHEAD) is None  # no second read

        wait_until(lambda: ahead.ended, 10, "the read did not go on")
        assert ahead.came == len(data) and early._begun is ahead
    finally:
        early.drop()


def test_a_file_shorter_than_the_read_ahead_comes_out_whole(tmp_path):
    data = os.urandom(3 * MiB + 1)
    (tmp_path / "a.tar.zst").write_bytes(data)
    ahead = prefetch.Ahead("a", ChildRead(tmp_path / "a.tar.zst"))
    _filled_to_the_end(ahead)
    with ahead.take() as taken:
        assert taken.ahead == len(data)
        assert _read_as_a_restore(taken) == data


def test_a_read_ahead_of_another_archive_is_ended_and_none_is_taken_twice(tmp_path, monkeypatch):
    (tmp_path / "a.tar.zst").write_bytes(os.urandom(4 * MiB))
    ahead = prefetch.Ahead("a", ChildRead(tmp_path / "a.tar.zst"))
    monkeypatch.setattr(early, "_begun", ahead)

    assert early.take("b") is None
    assert ahead._stream._child.poll() is not None  # the child ended
    assert early.take("a") is None  # nothing is read ahead after the first take


def test_a_child_that_fails_is_said_by_the_restores_read(tmp_path):
    ahead = prefetch.Ahead("a", ChildRead(tmp_path / "missing.tar.zst"))
    _filled_to_the_end(ahead)
    with ahead.take() as taken, pytest.raises(FileNotFoundError):
        taken.read(ReadAhead.FIRST)


def _archive(store: DriveStore, name: str, mtime: float, data: bytes = b"zstd") -> None:
    path = store.path("snapshots", name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))


def test_the_likely_archive_is_the_recipe_s_newest_and_only_a_file_drive_holds(tmp_path):
    """Found by its name in the listing (no file on Drive is opened to find it): the recipe's
    own, for the Python asked for, the newest; a link, a folder or a name of another shape is
    never read."""
    store = DriveStore(tmp_path / "drive")
    hexes = iter(f"{n:016x}" for n in range(1, 100))

    def archive(recipe_and_python: str, mtime: float) -> str:
        name = f"{recipe_and_python}-{next(hexes)}-{next(hexes)}.tar.zst"
        _archive(store, name, mtime)
        return name

    archive("demo-py312", 1000)
    new = archive("demo-py312", 2000)
    other = archive("demo-py313", 3000)
    archive("demodemo-py312", 4000)
    _archive(store, f"demo-py312-{'e' * 16}.tar.zst", 4500)  # no sha: not a snapshot's name
    _archive(store, f"demo-py312-{'a' * 16}-{'b' * 16}.tar.zst.part", 4600)
    assert early.likely_archive(DriveStore(store.drive), "demo", "py312") == new
    assert early.likely_archive(DriveStore(store.drive), "demo", None) == other  # any Python
    first, second = sorted(f"demo-py312-{n * 16}-{n * 16}.tar.zst" for n in "ab")
    # of two as new, the first by name, whichever lists them (the guess's find lists in no order)
    assert prefetch.newest_archive("demo", "py312", [(second, 1.0), (first, 1.0)]) == first
    assert early.likely_archive(DriveStore(store.drive), "nothing", None) is None

    link = store.path("snapshots", f"demo-py312-{'c' * 16}-{'d' * 16}.tar.zst")
    link.symlink_to(store.path("snapshots", new))
    os.utime(link, (5000, 5000), follow_symlinks=False)
    folder = store.path("snapshots", f"demo-py312-{'f' * 16}-{'f' * 16}.tar.zst")
    folder.mkdir()
    os.utime(folder, (6000, 6000))
    assert early.likely_archive(DriveStore(store.drive), "demo", "py312") == new


class _Source:
    """A source stand-in as ReadAhead uses one: a stream and its own context, with nothing to close."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


class _Served(_Source):
    """As prefetch.Ahead, taken over: `ahead` bytes read ahead and 2 MiB more on their way (the pipe,
    the read under way) come at once, then the rest at `mib_per_s`."""

    def __init__(self, data: bytes, ahead: int, mib_per_s: float) -> None:
        self.data, self.at, self.ahead, self.rate = data, 0, ahead, mib_per_s * MiB
        self.at_once = ahead + 2 * MiB

    def read(self, size: int = -1, /) -> bytes:
        block = self.data[self.at:self.at + size]
        time.sleep(max(0, self.at + len(block) - max(self.at, self.at_once)) / self.rate)
        self.at += len(block)
        return block


def _pace_once_past(reading: ReadAhead, size: int, past: int) -> float:
    """The pace (MiB/s) the read's estimate of its time left implies, once `past` bytes are in."""
    while reading.size < past:
        reading.read(ReadAhead.BLOCK)
    left = reading.seconds_left()
    assert left is not None
    return (size - reading.size) / MiB / left


def test_the_pace_counts_from_the_first_byte_that_was_not_read_ahead():
    """A race asks the read for the time it has left: the bytes read ahead, and those on their way
    when the restore took the read over, came at no pace of the source, so they must not make a
    16 MiB/s Drive look fast (the index would not be asked)."""
    size = 64 * MiB
    reading = ReadAhead(_Served(bytes(size), 24 * MiB, 16), limit=size)
    try:
        pace = _pace_once_past(reading, size, 42 * MiB)  # 16 MiB past what came at once
        # sleeping (and a loaded machine) only ever makes it slower: the floor leaves it half the pace;
        # counting the 24 MiB read ahead: about 40 MiB/s, the 2 MiB on their way: about 18
        assert 8 < pace < 17.5, f"{pace:.1f} MiB/s"
    finally:
        reading.close()


@needs_fuse
def test_a_race_knows_drive_s_pace_from_the_read_ahead_before_the_restore_reads(tmp_path):
    """The restore's read takes over a read ahead (a real `cat` of a real FUSE Drive at 16 MiB/s)
    whose bytes come at once, so its own reads tell nothing of Drive's pace at first. A race asks
    for the time left at once all the same: the pace the read ahead measured answers it (without
    it, the index waited 0.2 s before it was asked)."""
    size = 64 * MiB
    (tmp_path / "drive").mkdir()
    (tmp_path / "drive" / "demo.tar.zst").write_bytes(os.urandom(size))
    with slow_drive(tmp_path / "drive", tmp_path / "slow", 5, 16) as mount:
        ahead = prefetch.Ahead("demo.tar.zst", ChildRead(mount / "demo.tar.zst"))
        time.sleep(0.5)  # about 8 MiB
        reading = ReadAhead(ahead.take(), limit=size)
        try:
            left = reading.seconds_left()
            assert left is not None, "no pace before the restore's own reads"
            pace = (size - ahead.at_once) / MiB / left  # what came at once is not left to read
            # sleeping (and a loaded machine) only ever makes it slower: the floor leaves it half the pace
            assert 8 < pace < 17.5, f"{pace:.1f} MiB/s"
        finally:
            reading.close()


@needs_fuse
def test_the_read_ahead_knows_drive_s_pace_before_its_second_whole_chunk(tmp_path):
    """The first chunk of the pipe, which also waited for Drive's first byte, is not timed; it
    and the ones after it are small until 1 MiB is timed, so a race knows Drive's pace after
    1 MiB and one small chunk, not two whole ones (at 15 MiB/s, 0.08 s in, not 0.13 s)."""
    (tmp_path / "drive").mkdir()
    (tmp_path / "drive" / "demo.tar.zst").write_bytes(os.urandom(8 * MiB))
    with slow_drive(tmp_path / "drive", tmp_path / "slow", 5, 4) as mount:
        ahead = prefetch.Ahead("demo.tar.zst", ChildRead(mount / "demo.tar.zst"))
        try:
            wait_until(lambda: ahead.measured[1], 10, "no pace measured", every=0.001)
            assert ahead._held < 2 * prefetch.CHUNK, "the pace waited for a second whole chunk"
            wait_until(lambda: ahead.measured[1] >= prefetch.TIMED_FIRST, 10, "no pace measured", every=0.001)
            assert ahead.came < prefetch.CHUNK + prefetch.TIMED_FIRST, "the timing waited for a first whole chunk"
            busy, timed = ahead.measured
            # Sleeping only slows it; what can speed it is one of the timed chunks' reads having
            # waited on Drive before its window began (seen: 4.52 MiB/s on CI), so at most the
            # whole timed in the time of all its chunks but one. A backlog counted in would double it.
            fastest = 4 * prefetch.TIMED_FIRST / (prefetch.TIMED_FIRST - prefetch.TIMED_CHUNK)
            assert 3 < timed / MiB / busy < fastest * 1.02, f"{timed / MiB / busy:.2f} MiB/s"
        finally:
            ahead.close()


class _LateChildRead(ChildRead):
    """A child's read whose reader comes late once its first chunk is in (its thread kept off the
    CPUs meanwhile), so the pipe holds what came since."""

    first = True

    def read(self, size: int = -1, /) -> bytes:
        data = super().read(size)
        if self.first:
            self.first = False
            time.sleep(0.15)
        return data


@needs_fuse
def test_a_read_ahead_that_came_late_to_the_pipe_counts_only_what_came_in_its_time(tmp_path):
    """Drive's pace counts the bytes that came in each chunk's time: what already waited in the
    pipe when the timing began is not among them (it once measured 5.1 MiB/s behind 4 MiB/s,
    on CI's busy CPUs; with the reader 0.15 s late here, twice Drive's pace and more). The
    bound above is 1.5 times the pace: on CI's four busy workers the backlog's own timing once
    put it at 4.6 MiB/s."""
    (tmp_path / "drive").mkdir()
    (tmp_path / "drive" / "demo.tar.zst").write_bytes(os.urandom(8 * MiB))
    with slow_drive(tmp_path / "drive", tmp_path / "slow", 5, 4) as mount:
        ahead = prefetch.Ahead("demo.tar.zst", _LateChildRead(mount / "demo.tar.zst"))
        try:
            wait_until(lambda: ahead.measured[1] >= prefetch.TIMED_FIRST, 10, "no pace measured")
            busy, timed = ahead.measured
            assert 3 < timed / MiB / busy < 6, f"{timed / MiB / busy:.1f} MiB/s"
        finally:
            ahead.close()


def test_a_read_handed_on_is_timed_by_the_restore_s_reads_alone(tmp_path):
    """warmstart.sh hands its read on with up to 96 MiB in its own memory: they come through the
    pipe at once, at no pace of Drive's. Timed as Drive's, they would make a 10 MiB/s Drive look
    fast long after and keep the index unraced: a handed read measures nothing, and the pace is
    the restore's reads' past what came at once."""
    size, at_once = 32 * MiB, 8 * MiB
    data_in, data_out = os.pipe()
    outcome_in, outcome_out = os.pipe()

    def send() -> None:  # 8 MiB from memory, then the rest at 10 MiB/s
        try:
            with open(data_out, "wb", buffering=0) as pipe:
                pipe.write(bytes(at_once))
                for _ in range((size - at_once) // (256 << 10)):
                    time.sleep(0.025)
                    pipe.write(bytes(256 << 10))
            os.write(outcome_out, b"ok")
        except OSError:
            pass  # the restore stopped reading
        finally:
            os.close(outcome_out)

    sender = threading.Thread(target=send)
    sender.start()
    ahead = prefetch.Ahead("a", prefetch.HandedRead(data_in, outcome_in))
    while ahead._held < at_once:
        time.sleep(0.01)
    reading = ReadAhead(ahead.take(), limit=size)
    try:
        pace = _pace_once_past(reading, size, ahead.at_once + 4 * MiB)
        # sleeping only ever makes it slower; the 8 MiB timed as Drive's: about 25 MiB/s
        assert 7 < pace < 11, f"{pace:.1f} MiB/s"
    finally:
        reading.close()
        sender.join()


@needs_fuse
def test_a_wiped_vm_restores_with_the_read_begun_before_the_plan(bulky, filled, tmp_path):  # noqa: F811
    """On a FUSE Drive the command begins reading the snapshot before the plan names it; the
    restore takes the read over and installs the same files. A VM where warmstart has run reads
    nothing ahead (a no-op run would only waste Drive's time)."""
    recipe, _url = bulky
    vm = wiped_vm(tmp_path, dead_url())
    with slow_drive(vm.drive, tmp_path / "slow", 5, 16) as mount:
        # not VM.bootstrap: it reads all of Drive after, through this slow layer, for credentials
        # this VM has none of
        result = bootstrap(recipe, mount, vm.python, "--offline", env=vm.env)
        assert result.code == 0, result.stderr
        assert result.report["snapshot"]["used"] is True, result.report["snapshot"]
        # taken over; what it had read by then depends on how fast the plan was
        assert result.report["cache"]["read_begun_early"] is True
        assert 0 <= result.report["cache"]["read_ahead"] <= prefetch.AHEAD
        assert tree(vm.python) == filled

        shutil.rmtree(vm.root / "venv")  # wiped again, but for warmstart's own folder
        make_venv(vm.root / "venv")
        again = bootstrap(recipe, mount, vm.python, "--offline", env=vm.env)
        assert again.code == 0, again.stderr
        assert again.report["snapshot"]["used"] is True
        assert again.report["cache"]["read_begun_early"] is False
        assert again.report["cache"]["read_ahead"] == 0
        assert tree(vm.python) == filled


def test_the_bootstrap_task_begins_no_read_for_a_dry_run_or_where_warmstart_ran(tmp_path, monkeypatch):
    monkeypatch.setattr(early.threading, "Thread", lambda **kw: pytest.fail(f"a read was begun: {kw}"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    early.begin({"recipe": None}, Path())  # no recipe: the run says so
    early.begin({"recipe": "demo", "dry_run": True}, Path())
    (tmp_path / "cache" / "warmstart" / "locks").mkdir(parents=True)
    early.begin({"recipe": "demo"}, Path())
    assert early._begun is None


@needs_fuse
def test_the_index_read_ahead_is_the_restore_s_and_is_checked_as_its_own_read(tmp_path, monkeypatch):
    """The thread that reads ahead reads the archive's index too, once the archive's read has
    begun (the restore's own read of it cost a race 50 ms on the Drive stand-in). The restore
    takes that one, and refuses it as it refuses any index it reads."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no run has been here: a wiped VM
    stem, facts = f"demo-py312-{'1' * 16}", {"format": "test"}
    backing = DriveStore(tmp_path / "drive")
    _archive(backing, f"{stem}-{'2' * 16}.tar.zst", 1000)

    def write_index(**index: object) -> None:
        backing.path("snapshots", f"{stem}.json").write_text(json.dumps(index))

    written = {"facts": facts, "archive": f"{stem}-{'2' * 16}.tar.zst", "sha256": "3" * 64, "size": 8,
               "tar_bytes": 8}
    for index, then in ((written, {**written, "facts": {"format": "another"}}), ({**written, "size": "8"}, written)):
        write_index(**index)
        with slow_drive(tmp_path / "drive", tmp_path / "slow", 20, 16) as mount:
            try:
                early.begin({"recipe": "demo", "drive": str(mount), "python": "/usr/bin/python3.12"}, Path())
                wait_until(lambda: isinstance(early._begun, prefetch.Ahead) and early._begun.index, 10,
                           "the index was not read ahead")
                write_index(**then)  # Drive's copy changes: the restore does not read it again
                store = TieredStore.at(mount)
                if index is written:
                    assert Snapshot(stem, facts).read_index(store) == written
                else:
                    with pytest.raises(SnapshotUnusable, match="not one warmstart wrote"):
                        Snapshot(stem, facts).read_index(store)
            finally:
                early.drop()


@needs_fuse
def test_a_restore_that_names_the_archive_while_the_thread_still_looks_for_it_takes_its_read(
        tmp_path, monkeypatch):
    """A plan can name the archive before the thread `begin` started has found it (a fast plan,
    a busy machine): the restore waits for that thread, bounded, and takes its read, rather than
    dropping it and reading the archive anew. Each open on this Drive waits 150 ms, so the
    thread is still looking when the restore asks."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no run has been here: a wiped VM
    archive = f"demo-py312-{'1' * 16}-{'2' * 16}.tar.zst"
    data = os.urandom(3 * MiB)
    DriveStore(tmp_path / "drive").path("snapshots", archive).parent.mkdir(parents=True)
    DriveStore(tmp_path / "drive").path("snapshots", archive).write_bytes(data)
    with slow_drive(tmp_path / "drive", tmp_path / "slow", 150, 64) as mount:
        try:
            early.begin({"recipe": "demo", "drive": str(mount), "python": "/usr/bin/python3.12"}, Path())
            assert not isinstance(early._begun, prefetch.Ahead), "still looking"

            taken = early.take(DriveStore(mount).where("snapshots", archive))

            assert taken is not None, "the read the thread began is the restore's"
            with taken:
                assert _read_as_a_restore(taken) == data
        finally:
            early.drop()


@needs_fuse
def test_given_the_platform_profile_the_read_begins_without_reading_the_checkout_s_envs(tmp_path, monkeypatch):
    """warmstart.sh has the profile already: the thread that looks for the archive takes it, so a
    checkout on Drive is not opened for it again (here the root has no envs/ at all)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # a wiped VM
    archive = f"demo-py312-{'1' * 16}-{'2' * 16}.tar.zst"
    _archive(DriveStore(tmp_path / "drive"), archive, 1000)
    flags = {"recipe": "demo", "python": "/usr/bin/python3.12"}
    with slow_drive(tmp_path / "drive", tmp_path / "slow", 0, 64) as mount:
        for profile in (None, select_profile(REPO)):
            try:
                looking = early.begin({**flags, "drive": str(mount)}, tmp_path / "no-checkout", profile=profile)
                assert looking is not None
                looking.join(10)
                assert isinstance(early._begun, prefetch.Ahead) is (profile is not None)
            finally:
                early.drop()


# -- warmstart.sh's guess, begun as its interpreter starts (warmstart.prefetch.guess) ----------

def _ours() -> str:
    """An archive of the recipe demo for this Python, by its name."""
    return f"demo-{home.python_tag()}-{'1' * 16}-{'2' * 16}.tar.zst"


def _guessed(drive: Path, *argv: str) -> prefetch.Ahead:
    """warmstart.sh's guess with its command line `argv`, its checkout in `drive`: the read it began."""
    prefetch.guess(list(argv), drive)
    guessed = wait_until(lambda: prefetch._guess and prefetch._guess._ahead, 10, "the guess began no read")
    wait_until(lambda: guessed.came, 10, "the guessed read read nothing")
    return guessed


def _ended(ahead: prefetch.Ahead) -> bool:
    """Whether the child reading `ahead` has ended: with AHEAD at 1 MiB, before the end of a file
    of 4 MiB only when it was ended."""
    return ahead._stream._child.poll() is not None


@needs_fuse
def test_warmstart_sh_s_guess_is_the_read_the_run_takes_when_its_own_look_names_the_same_archive(
        tmp_path, monkeypatch):
    """warmstart.sh begins reading the recipe's newest archive for its Python, found by name in
    the Drive root its checkout lies in, before it imports the rest of warmstart; the run's own
    look (`begin`, by the run's settings) names the same file and takes that very read over,
    reading the archive no second time."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # a wiped VM
    tag, data, newest = home.python_tag(), os.urandom(3 * MiB), _ours()
    _archive(DriveStore(tmp_path / "drive"), newest, 2000, data)
    _archive(DriveStore(tmp_path / "drive"), f"demo-{tag}-{'3' * 16}-{'4' * 16}.tar.zst", 1000, b"older")
    _archive(DriveStore(tmp_path / "drive"), f"demo-py20-{'5' * 16}-{'6' * 16}.tar.zst", 3000, b"another Python's")
    with slow_drive(tmp_path / "drive", tmp_path / "slow", 20, 64) as mount:
        try:
            guessed = _guessed(mount, "demo", "--offline")
            assert guessed.where == DriveStore(mount).where("snapshots", newest)

            looking = early.begin({"recipe": "demo", "drive": str(mount), "offline": True}, REPO,
                                  prefetch.HANDED_AHEAD, profile=select_profile(REPO))
            assert looking is not None
            looking.join(10)

            assert early._begun is guessed, "the guessed read is the run's"
            assert prefetch._guess is None
            taken = early.take(DriveStore(mount).where("snapshots", newest))
            assert taken is guessed
            with taken:
                assert _read_as_a_restore(taken) == data
        finally:
            early.drop()


@needs_fuse
def test_a_guess_the_run_s_own_look_does_not_confirm_is_ended(tmp_path, monkeypatch):
    """The run's Drive root is another (--drive): the guessed read's child is ended, and the run
    reads its own archive."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(prefetch, "AHEAD", MiB)
    tag = home.python_tag()
    guessed_name, own = f"demo-{tag}-{'1' * 16}-{'2' * 16}.tar.zst", f"demo-{tag}-{'3' * 16}-{'4' * 16}.tar.zst"
    _archive(DriveStore(tmp_path / "drive" / "checkout's"), guessed_name, 1000, os.urandom(4 * MiB))
    _archive(DriveStore(tmp_path / "drive" / "given"), own, 1000, os.urandom(4 * MiB))
    with slow_drive(tmp_path / "drive", tmp_path / "slow", 5, 64) as mount:
        try:
            guessed = _guessed(mount / "checkout's", "demo")

            looking = early.begin({"recipe": "demo", "drive": str(mount / "given")}, REPO, prefetch.PACE_AHEAD,
                                  profile=select_profile(REPO))
            assert looking is not None
            looking.join(10)

            wait_until(lambda: _ended(guessed), 10, "the guessed read goes on")
            assert isinstance(early._begun, prefetch.Ahead) and early._begun is not guessed
            assert early._begun.where == DriveStore(mount / "given").where("snapshots", own)
            assert prefetch._guess is None
        finally:
            early.drop()


def test_a_guess_is_ended_by_a_run_that_reads_nothing_ahead_and_by_the_run_s_end(tmp_path, monkeypatch):
    """--dry-run reads no archive ahead: what warmstart.sh guessed at is ended; so is a guess
    that nothing confirmed when the run ends (early.drop)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(prefetch, "AHEAD", MiB)
    _archive(DriveStore(tmp_path / "drive"), _ours(), 1, os.urandom(4 * MiB))
    for end in (lambda: early.begin({"recipe": "demo", "dry_run": True}, REPO), early.drop):
        guessed = _guessed(tmp_path / "drive", "demo", "--dry-run")
        end()
        wait_until(lambda: _ended(guessed), 10, "the guessed read goes on")  # noqa: B023
        assert prefetch._guess is None and early._begun is None


def test_a_guess_is_ended_when_warmstart_sh_only_says_its_usage(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(prefetch, "AHEAD", MiB)
    _archive(DriveStore(tmp_path / "drive"), _ours(), 1, os.urandom(4 * MiB))
    for argv, code in ((["demo", "--help"], 0), (["demo", "--no-such-flag"], 2)):
        guessed = _guessed(tmp_path / "drive", *argv)
        assert tools.main(argv) == code
        wait_until(lambda: _ended(guessed), 10, "the guessed read goes on")  # noqa: B023
        assert prefetch._guess is None
    assert "usage: warmstart.sh" in capsys.readouterr().out
    assert tools.main(["--help"]) == 0, "asked for help without a recipe: the options, not a usage error"
    assert "--offline" in capsys.readouterr().out


def test_no_guess_without_a_recipe_or_where_warmstart_has_run(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _archive(DriveStore(tmp_path / "drive"), _ours(), 1)
    for argv in ([], ["--offline", "demo"]):
        prefetch.guess(argv, tmp_path / "drive")
        assert prefetch._guess is None
    (tmp_path / "cache" / "warmstart" / "locks").mkdir(parents=True)  # a bootstrap has run here
    prefetch.guess(["demo"], tmp_path / "drive")
    assert prefetch._guess is None


@needs_fuse
def test_a_guess_whose_drive_does_not_list_gives_up_in_its_time(tmp_path, monkeypatch):
    """The guess lists Drive in a child (a listing of a FUSE mount that stopped answering holds
    whoever asked): after GUESS_WAIT it has no read, and the run's own look goes on."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(prefetch, "GUESS_WAIT", 0.5)
    _archive(DriveStore(tmp_path / "drive"), _ours(), 1)
    answer = tmp_path / "answer"  # the layer answers once this exists: then the child left there ends
    with slow_drive(tmp_path / "drive", tmp_path / "slow", 0, 64, hang_metadata=True, until=answer) as mount:
        try:
            prefetch.guess(["demo"], mount)
            guessed = prefetch._guess
            assert guessed is not None
            guessed.looking.join(5)
            assert not guessed.looking.is_alive(), "the guess waits on Drive"
            assert prefetch.take_guess(None) is None
        finally:
            answer.touch()


def test_a_guess_whose_snapshot_folder_lists_more_than_a_cache_holds_reads_none_of_it(tmp_path, monkeypatch):
    """Drive is shared: a snapshot folder may hold anything. 40,000 names of 220 characters list
    over background.OUTPUT_MOST: the guess's look ends quietly (no exception out of its thread),
    with no read, though the recipe's archive is among them."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    escaped: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", escaped.append)
    _archive(DriveStore(tmp_path / "drive"), _ours(), 1)
    folder = tmp_path / "drive" / LAYOUT / prefetch.KIND
    for n in range(40_000):
        (folder / f"{n:05d}{'x' * 215}").touch()
    prefetch.guess(["demo"], tmp_path / "drive")
    guessed = prefetch._guess
    assert guessed is not None
    guessed.looking.join(30)
    assert not guessed.looking.is_alive() and not escaped, escaped
    assert prefetch.take_guess(str(folder / _ours())) is None


# -- warmstart.sh hands its read on to the bootstrap it starts --------------------------------

_TAKER = """
import hashlib, sys, time
from pathlib import Path
from warmstart import early
early.begin({}, Path())  # takes the read handed on, from its environment
while early._begun and not early._begun._held and not early._begun._ended:  # let it read ahead
    time.sleep(0.01)
taken = early.take(sys.argv[1])
if taken is None:
    print("none")
    sys.exit()
with taken:
    try:
        got = b"".join(iter(lambda: taken.read(4 << 20), b""))
        print(taken.ahead, hashlib.sha256(got).hexdigest(), len(got))
    except OSError as exc:
        print("failed", type(exc).__name__, exc.errno, exc.strerror)
"""


def _hand_on(ahead: prefetch.Ahead, *argv: str, taker: str = _TAKER) -> subprocess.CompletedProcess:
    """A new process takes the read over, as the bootstrap warmstart.sh starts does."""
    handed = early.Handed(ahead)
    try:
        with subprocess.Popen([sys.executable, "-c", taker, *argv], env=os.environ | handed.environ,
                              pass_fds=handed.fds, stdout=subprocess.PIPE, text=True) as child:
            handed.close_handed()
            out, _ = child.communicate(timeout=60)
        return subprocess.CompletedProcess(child.args, child.returncode, out)
    finally:
        handed.stop()


def test_a_read_handed_on_to_another_process_comes_out_whole_there(tmp_path):
    data = os.urandom(9 * MiB + 4321)
    (tmp_path / "a.tar.zst").write_bytes(data)
    ahead = prefetch.Ahead("a", ChildRead(tmp_path / "a.tar.zst"), most=2 * MiB)
    _filled_to_the_end(ahead)  # full: the rest waits for the taker

    done = _hand_on(ahead, "a")

    assert done.returncode == 0
    held, digest, size = done.stdout.split()
    assert 0 < int(held) <= prefetch.AHEAD  # the taker's own read ahead, from the pipe
    assert (digest, int(size)) == (hashlib.sha256(data).hexdigest(), len(data))


def test_a_read_that_failed_before_it_was_handed_on_is_said_there_not_cut_short(tmp_path):
    """A short file would be a damaged snapshot (set aside); a read that failed is not."""
    ahead = prefetch.Ahead("a", ChildRead(tmp_path / "missing.tar.zst"))
    done = _hand_on(ahead, "a")
    assert done.stdout.split() == ["failed", "FileNotFoundError", str(errno.ENOENT), "No", "such", "file", "or",
                                   "directory"]


def test_a_taker_that_wants_none_of_it_ends_the_read(tmp_path):
    (tmp_path / "a.tar.zst").write_bytes(os.urandom(8 * MiB))
    ahead = prefetch.Ahead("a", ChildRead(tmp_path / "a.tar.zst"), most=MiB)
    _filled_to_the_end(ahead)
    handed = early.Handed(ahead)
    with subprocess.Popen([sys.executable, "-c", _TAKER, "another archive"], env=os.environ | handed.environ,
                          pass_fds=handed.fds, stdout=subprocess.PIPE, text=True) as child:
        handed.close_handed()
        assert child.communicate(timeout=60)[0] == "none\n"
    # the relay met the closed pipe and ended the child
    wait_until(lambda: ahead._stream._child.poll() is not None, 10,
               "the read handed on went on after its taker was gone")


def test_warmstart_sh_begins_the_read_with_the_options_it_passes_to_bootstrap():
    given = settings.parse_command_line(["demo", "--drive", "/d", "--offline", "--json"])
    assert early.Options(**tools.bootstrap_flags(given)) == early.Options(recipe="demo", drive="/d", offline=True)


def test_a_handed_read_that_waits_is_ended_by_stop():
    """As a restore gives up on a Drive that stopped answering: the read under way returns."""
    data_in, data_out = os.pipe()
    outcome_in, outcome_out = os.pipe()
    reading = prefetch.HandedRead(data_in, outcome_in)
    failed: list[OSError] = []

    def read() -> None:
        try:
            reading.read(MiB)
        except OSError as exc:
            failed.append(exc)
    thread = threading.Thread(target=read)
    thread.start()
    time.sleep(0.2)
    assert thread.is_alive(), "nothing came: the read waits"
    reading.stop()
    thread.join(timeout=5)
    assert not thread.is_alive() and failed[0].errno == errno.EINTR
    reading.close()
    for fd in (data_out, outcome_out):
        os.close(fd)


@needs_fuse
def test_warmstart_sh_hands_the_read_it_began_to_the_bootstrap_it_starts(bulky, filled, tmp_path, capfd):  # noqa: F811
    """tools._bootstrap, as warmstart.sh runs it once the tools are in place, with a read begun in
    this process. warmstart has run on this VM (its run locks are there), so the bootstrap would
    begin no read of its own: what it read ahead came from here."""
    recipe, _url = bulky
    vm = wiped_vm(tmp_path, dead_url())
    home.run_locks(vm.env).mkdir(parents=True)
    with slow_drive(vm.drive, tmp_path / "slow", 5, 16) as mount:
        store = DriveStore(mount)
        archive = early.likely_archive(store, recipe.stem, None)
        assert archive
        early._begun = prefetch.Ahead(store.where("snapshots", archive), ChildRead(store.path("snapshots", archive)),
                                   most=prefetch.HANDED_AHEAD)

        code = tools._bootstrap(cli_command("bootstrap", "--recipe", str(recipe), "--drive", str(mount), "--python",
                                            str(vm.python), "--json", "--offline"), vm.env)

        report = json.loads(capfd.readouterr().out)
        assert code == 0 and report["snapshot"]["used"] is True, report
        assert report["cache"]["read_begun_early"] is True, "the read handed on was taken over"
        assert tree(vm.python) == filled
        assert early._begun is None


class _Pipe(_Source):
    """A child reading at `mib_per_s` into a pipe of `room` bytes whether or not anybody reads it
    (background.ChildRead): a read takes what gathered, then waits for the rest."""

    reads_on_its_own = True

    def __init__(self, size: int, mib_per_s: float, room: int = MiB) -> None:
        self.left, self.rate, self.room = size, mib_per_s * MiB, room
        self.filled, self.last = 0.0, time.monotonic()

    def _gather(self) -> None:
        now = time.monotonic()
        self.filled = min(self.room, self.left, self.filled + (now - self.last) * self.rate)
        self.last = now

    def read(self, size: int = -1, /) -> bytes:
        got = 0
        while got < size and self.left:
            self._gather()
            take = int(min(size - got, self.filled, self.left))
            self.filled -= take
            self.left -= take
            got += take
            if got < size and self.left:
                time.sleep(min(size - got, self.room) / self.rate)
        return bytes(got)


class _Busy:
    """Work the reading thread does between reads (as a copy's write, here): 50 ms a block."""

    def write(self, block: bytes) -> None:
        time.sleep(0.05)


def test_the_pace_of_a_child_that_reads_on_counts_the_time_between_reads():
    """While the reading thread is away (hashing, spilling, waiting for the GIL) the child reads
    on into the pipe; counted as read at once, those bytes made a 60 MiB/s Drive look 7% faster,
    and the index went unraced."""
    size = 64 * MiB
    reading = ReadAhead(_Pipe(size, 16), copy=_Busy(), limit=size)
    try:
        pace = _pace_once_past(reading, size, 20 * MiB)
        # sleeping (and a loaded machine) only ever makes it slower: the floor leaves it half the pace;
        # counting each read's own time alone: about 20
        assert 8 < pace < 17.5, f"{pace:.1f} MiB/s"
    finally:
        reading.close()
