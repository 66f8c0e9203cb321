"""uv from the index, begun by warmstart.sh for the bootstrap it starts next.

Online, a restore whose read would take longer than uv takes to install the same pins from the
index races the index (warmstart.race). The bootstrap can ask the index only once its plan names
the snapshot; on a wiped VM that is after warmstart.sh has restored warmstart's own tools and
started it: behind the 15 MiB/s Drive stand-in uv began 2.1 to 3.1 s into the cell, which took
twice uv's own time. So warmstart.sh, whose read ahead (warmstart.early) has the snapshot's index
and Drive's pace within 0.2 s of its start (online it begins before the tools' wheels are read
off Drive, for this), asks the same question then (`consider`): when the
read would lose to the index by RACE_MARGIN, it starts uv itself (`HeadStart`) on the pins the
snapshot holds, their requirement lines taken from the recipe's lock (beside its `.in`) whose
sha256 the index names (not from the index: Drive is not trusted with what to install), into a
staging folder of the target's prefix. It hands that install on to the bootstrap with its read
(`hand_on`): two pipes, one that says how uv ended, one through which the bootstrap stops it.

The bootstrap takes it over as its race's index lane (`Received`, race.IndexLane) only when the
pins are those its plan would have uv install, and checks uv's tree against the lock's digests as
it checks any (race.verify_installed); otherwise it stops it. warmstart.sh ends uv, and removes
the folder unless the bootstrap placed it, once the bootstrap has exited.

This module runs in warmstart.sh before warmstart's tools are installed: the standard library
only. The index's time (`index_seconds`) is here for that reason too.
"""

from __future__ import annotations

import math
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import installer
from .background import NEUTRAL_CWD
from .config import file_text, parse_toml, read_toml_bytes
from .disks import real
from .errors import WarmstartError
from .locktext import body_sha256, given_as_file, project_of, recipe_dirs, requirement_lines
from .settings import HANDED_INDEX, Options
from .uv import find_uv

if TYPE_CHECKING:
    from .early import Ahead

# How long uv takes to install from the index. A snapshot made of an install uv took wholly from
# the index records that install's time (`index_seconds` in its index): the VM, the network and
# the lock were the user's. Else, as on PyPI from 2 CPUs: a time per wheel (its request, its
# metadata, its RECORD) and the bytes of snapshot archive it stands for at a pace. Fitted to the two locks
# the bench measures: hyperlpr's 28 wheels (221 MiB of archive) in 4.9 s, the 3 a Colab image
# lacks of them (157 MiB) in 2.1 s; bytes alone (50 MiB/s) had the Colab ones at 3.1 s, so a
# 60 MiB/s Drive (2.7 s of reading) was not raced though uv was faster. A read with less left
# than the index would take finishes first, and racing it only costs it the CPU uv takes (0.3 to
# 0.5 s here, at the lowest priority).
INDEX_PACE = 80 << 20
INDEX_PER_WHEEL = 0.075  # seconds
RACE_AFTER = 1.5  # seconds: the least uv takes for anything (start, resolve, the check after)
# The index is raced only when the read has this much more time left than the index's: the
# index's time is one install's, on a network whose times spread by a second from round to round
# (uv itself is as fast beside a held restore as alone: bench/README.md), and its tree is checked
# and placed after. On the Colab stand-in behind the 60 MiB/s Drive (2.4 s of reading left, the
# index's 1.8 to 2.2 s), racing at once made the restore 3.0 to 3.9 s against 3.0 to 3.2 s not raced.
RACE_MARGIN = 0.5  # seconds
# A read the index races waits while uv runs, for at most this many times the index's time
# (then it goes on beside uv): the two lanes share 2 CPUs. At 15 MiB/s, reading and unpacking
# alongside slowed uv from 4.4 to 5.6 s; on the Colab stand-in behind a 60 MiB/s Drive the
# read, not held, won every race and the restore took 1.32x uv alone.
HOLD_FOR = 2.0
# warmstart.sh waits this long at most for the read ahead to say Drive's pace (it needs
# PACE_BYTES of it), then leaves the question to the bootstrap's race.
PACE_WAIT, PACE_BYTES = 3.0, 1 << 20
# ... and reads the tools' wheels off Drive after the answer, or after this long without one
# (behind the 15 MiB/s stand-in the answer came 0.2 s after the read began)
ASK_WAIT = 1.0
POLL = 0.05
HANDED = HANDED_INDEX.name  # "<outcome fd>,<stop fd>,<began>,<folder>,<requirements file>"
FOLDER_PREFIX = ".warmstart-restore-"  # a staging folder's name (staging_folder)


def index_seconds(archive_bytes: int, wheels: int) -> float:
    """How long uv should take to install from the index what a snapshot of `archive_bytes` holds
    in `wheels` wheels."""
    return max(RACE_AFTER, wheels * INDEX_PER_WHEEL + archive_bytes / INDEX_PACE)


def index_takes(recorded: float | None, archive_bytes: int, wheels: int) -> float:
    """How long the index should take for a snapshot: what its index records uv took on the VM
    it was made on (`recorded`; never less than RACE_AFTER), else index_seconds."""
    return max(RACE_AFTER, recorded) if recorded is not None else index_seconds(archive_bytes, wheels)


def recorded_seconds(index: Mapping[str, Any]) -> float | None:
    """How long uv took to install the snapshot's distributions from the index, on the VM whose
    install it was made of, as its `index` says. None when it does not say, or says something no
    install took."""
    seconds = index.get("index_seconds")
    if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and 0 < seconds < 3600:
        return float(seconds)
    return None


def staging_folder(prefix: Path) -> Path:
    """A new staging folder's name inside the target's `prefix` (a rename away from its place),
    for a restore or for uv from the index. One a killed run left behind is removed by the next
    (Executor.install)."""
    return prefix / f"{FOLDER_PREFIX}{uuid.uuid4().hex}"


def worth_racing(read_left: float, index_takes: float) -> bool:
    return read_left > index_takes + RACE_MARGIN


# -- in warmstart.sh ------------------------------------------------------------------------


class HeadStart:
    """uv installing `requirements` (lines) for the interpreter `python` from the index into
    `folder`, begun here for the bootstrap this process starts (see the module's text)."""

    def __init__(self, python: str, requirements: list[str], folder: Path, unset: Iterable[str],
                 read: Ahead | None = None, index_takes: float = RACE_AFTER) -> None:
        """`read`: warmstart.sh's read ahead, which waits while uv runs (for at most
        HOLD_FOR times `index_takes`), as a read the bootstrap's race holds does."""
        self.python, self.folder, self.unset, self._read = python, folder, tuple(unset), read
        if read is not None:
            read.hold(HOLD_FOR * index_takes)
        handle, name = tempfile.mkstemp(prefix="warmstart-headstart-", suffix=".txt")
        with os.fdopen(handle, "w") as out:
            out.write("".join(line + "\n" for line in requirements))
        self.requirements = Path(name)
        self.began = time.time()  # the bootstrap reports it: a clock both processes read
        self._outcome_in, self._outcome_out = os.pipe()
        self._stop_in, self._stop_out = os.pipe()
        self._child: subprocess.Popen | None = None
        self._stopped = self._handed = False
        self._guard = threading.Lock()
        self._install = threading.Thread(target=self._run, daemon=True)
        self._install.start()
        threading.Thread(target=self._stop_when_told, daemon=True).start()

    def _run(self) -> None:
        word = b"ok"
        try:
            installer.install_from_index(Path(self.python), self.requirements, self.folder, self.unset,
                                         running=self._keep)
        except (WarmstartError, OSError) as exc:
            word = b"stopped" if self._stopped else (str(exc).splitlines() or [type(exc).__name__])[0].encode()
            if self._read is not None:
                self._read.resume()  # the snapshot it is, after all
        try:
            os.write(self._outcome_out, word[:4096])
        except OSError:
            pass  # the bootstrap is gone
        os.close(self._outcome_out)

    def _keep(self, child: subprocess.Popen) -> None:
        with self._guard:
            self._child = child
            if self._stopped:
                child.kill()

    def _stop_when_told(self) -> None:
        """A byte from the bootstrap, or the pipe's end (every holder of its other end is gone)."""
        try:
            os.read(self._stop_in, 1)
        finally:
            os.close(self._stop_in)
        self.stop()

    def stop(self) -> None:
        with self._guard:
            self._stopped = True
            if self._child is not None and self._child.poll() is None:
                self._child.kill()

    @property
    def fds(self) -> tuple[int, int]:
        return self._outcome_in, self._stop_out

    @property
    def environ(self) -> dict[str, str]:
        return {HANDED: f"{self._outcome_in},{self._stop_out},{self.began},{self.folder},{self.requirements}"}

    def close_handed(self) -> None:
        """The bootstrap has started: the ends it was handed are its alone."""
        self._handed = True
        for fd in self.fds:
            os.close(fd)

    def close(self) -> None:
        """uv ended, and what it left removed: the bootstrap is over (it placed the tree, or
        wanted none of it), or was never started."""
        self.stop()
        if not self._handed:
            self.close_handed()  # nobody took them: the stop pipe's end wakes its thread
        self._install.join()
        shutil.rmtree(self.folder, ignore_errors=True)
        self.requirements.unlink(missing_ok=True)


_begun: HeadStart | None = None
_closed = False  # handed on (or the run is over): no uv is begun here any more
_guard = threading.Lock()


def consider(ahead: Ahead, options: Options, python: str, unset: Iterable[str], checkout: Path,
             drive: Path | None = None) -> None:
    """On the thread that reads ahead (`ahead`, with the snapshot's index), once it has read it:
    begin uv from the index when the read would lose to it (see the module's text). Only online,
    with uv, for the target interpreter `python` the snapshot was made for (its facts name its
    version and prefix). A recipe named, not given as a file, is looked for as the bootstrap looks:
    in `checkout`'s recipes/, then the user's recipe folder (WARMSTART_RECIPES, else `drive`'s)."""
    if options.offline or options.installer == "pip" or not find_uv():
        return
    index = ahead.index[1] if ahead.index else {}
    facts, size = (index.get("facts"), index.get("size")) if isinstance(index, dict) else (None, None)
    if not (isinstance(facts, dict) and isinstance(size, int)):
        return
    version, prefix = _version_and_prefix(python)
    if (facts.get("python"), facts.get("prefix")) != (version, prefix):
        return
    wanted = [pin for pin in str(facts.get("distributions", "")).split(",") if pin]
    tag = "py" + version.replace(".", "")
    lines = locked_lines(options.recipe or "", checkout, tag, str(facts.get("lock_body_sha256")), wanted, drive)
    if not lines:
        return
    expected = index_takes(recorded_seconds(index), size, len(lines))
    left = _read_left(ahead, size)
    if left is None or not worth_racing(left, expected):
        return
    global _begun
    with _guard:
        if not _closed:
            _begun = HeadStart(python, lines, staging_folder(Path(prefix)), unset,
                               ahead, expected)


def _version_and_prefix(python: str) -> tuple[str, str]:
    """The interpreter's minor version (3.12) and sys.prefix, as a snapshot's facts name them
    (snapshot.snapshot_facts)."""
    if python == sys.executable:
        return "{}.{}".format(*sys.version_info[:2]), sys.prefix
    exe = os.path.abspath(python) if os.sep in python else python  # a path as given, from where it was
    said = subprocess.run([exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2]); print(sys.prefix)"],
                          capture_output=True, text=True, timeout=30, cwd=NEUTRAL_CWD).stdout.splitlines()
    return (said[0], said[1]) if len(said) == 2 else ("", "")


def locked_lines(recipe: str, checkout: Path, tag: str, lock_body_sha256: str, wanted: list[str],
                 drive: Path | None = None) -> list[str] | None:
    """The requirement lines of `wanted` in the recipe's lock for `tag` (pyXY) whose body's sha256
    is `lock_body_sha256`, the one the snapshot was made from; None when there is none."""
    # A name is looked for in each recipe folder in turn, the checkout's first (no look at Drive
    # for a shipped recipe's); one defined twice is the bootstrap's to refuse.
    recipe_files = ([real(os.path.expanduser(recipe))] if given_as_file(recipe)
                    else [folder / f"{recipe}.toml" for folder in recipe_dirs(checkout, drive)])
    for recipe_file in recipe_files:
        for folder, stem in _lock_places(recipe_file, Path(recipe).stem):
            for path in sorted([*folder.glob(f"{stem}-{tag}-*.txt"), *folder.glob(f"*/{stem}-{tag}-*.txt")]):
                try:
                    text = file_text(path)  # read ahead by warmstart.sh (config.reading_ahead)
                except (OSError, UnicodeDecodeError):
                    continue
                if body_sha256(text) == lock_body_sha256:
                    return requirement_lines(text, wanted)
    return None


def _lock_places(recipe_file: Path, stem: str) -> Iterator[tuple[Path, str]]:
    """Where a recipe's locks lie and the stem they are named by: beside its `.in`, from whose
    stem lock.lock_path names them. First `requirements/<recipe>.in`'s, as the shipped recipes
    have it, which reads nothing; then the `.in` the recipe's file names (a project's own
    `requirements.in`, say), read as warmstart reads it; the bootstrap checks it properly."""
    project = project_of(recipe_file)
    yield project / "requirements", stem
    try:
        requirements_in = project / parse_toml(read_toml_bytes(recipe_file), recipe_file)["requirements"]["in"]
    except (WarmstartError, LookupError, TypeError):  # no such file, not TOML, no such key
        return
    if (requirements_in.parent, requirements_in.stem) != (project / "requirements", stem):
        yield requirements_in.parent, requirements_in.stem


def _read_left(ahead: Ahead, size: int) -> float | None:
    """The seconds the read ahead has left at Drive's pace, once it has timed PACE_BYTES, or as
    much as it timed before it stopped for room (it counts the pipe's backlog out, so what it
    times may fall short of what it read); none once its reading is over. None when it does not
    say within PACE_WAIT."""
    waited = time.monotonic() + PACE_WAIT
    while time.monotonic() < waited:
        if ahead.ended:
            return 0.0
        busy, timed = ahead.measured
        if busy > 0 and timed > 0 and (timed >= PACE_BYTES or ahead.full):
            return (size - ahead.came) / (timed / busy)
        time.sleep(POLL / 5)
    return None


def racing() -> bool:
    """Whether uv from the index was begun here."""
    with _guard:
        return _begun is not None


def hand_on() -> HeadStart | None:
    """The uv begun here, to hand on to the bootstrap this process starts; None when there is
    none. None is begun after this."""
    global _closed
    with _guard:
        _closed = True
        return _begun


def close() -> None:
    """warmstart.sh is over: uv ended, its folder removed unless the bootstrap placed it."""
    global _begun
    begun = hand_on()
    with _guard:
        _begun = None
    if begun is not None:
        begun.close()


# -- in the bootstrap -----------------------------------------------------------------------


class Received:
    """uv from the index, begun by warmstart.sh into `folder` on the pins `requirements` (its
    file): `wait` for how it ended, `stop` it."""

    def __init__(self, outcome: int, stop: int, began: float, folder: Path, requirements: Path) -> None:
        self._outcome, self._stop, self.began, self.folder = outcome, stop, began, folder
        self.lines = set(requirements.read_text().splitlines())

    def installs(self, requirements: Path, prefix: Path) -> bool:
        """Whether it installs just the pins of `requirements` (a file) into `prefix`."""
        return (self.folder.parent == prefix and self.folder.name.startswith(FOLDER_PREFIX)
                and self.lines == set(requirements.read_text().splitlines()))

    def running_for(self) -> float:
        return max(0.0, time.time() - self.began)

    def wait(self, stopped: threading.Event) -> bool:
        """Until uv has ended: True when it installed, False when `stopped` was set first;
        WarmstartError when it failed."""
        ready = select.poll()
        ready.register(self._outcome, select.POLLIN | select.POLLHUP)
        while not ready.poll(math.ceil(POLL * 1000)):
            if stopped.is_set():
                return False
        word = os.read(self._outcome, 4096)
        if word != b"ok":
            raise WarmstartError(word.decode(errors="replace") or "uv, begun by warmstart.sh, ended without a word")
        return True

    def stop(self) -> None:
        try:
            os.write(self._stop, b"x")
        except OSError:
            pass  # warmstart.sh is gone, or stopped it already


_received: Received | None = None


def receive() -> None:
    """Take the uv warmstart.sh handed on, from this process's environment (not its children's)."""
    global _received
    handed = os.environ.pop(HANDED, None)
    if not handed:
        return
    try:
        outcome, stop, began, folder, requirements = handed.split(",", 4)
        fds = int(outcome), int(stop)
        for fd in fds:
            os.set_inheritable(fd, False)  # this process's: a child holding one would keep uv going
        _received = Received(*fds, float(began), Path(folder), Path(requirements))
    except (ValueError, OSError):  # not warmstart.sh's: the race asks the index itself
        _received = None


def received() -> Received | None:
    return _received


def drop() -> None:
    """The bootstrap is over: what it did not take is stopped (taken, it has ended)."""
    global _received
    if _received is not None:
        _received.stop()
        _received = None
