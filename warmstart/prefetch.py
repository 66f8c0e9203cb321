"""A snapshot archive's bytes, read ahead of its restore (standard library only).

`Ahead` reads an archive from a child's pipe (background.ChildRead), or from the pipes a read
handed on comes through (`HandedRead`), on a daemon thread, keeping what came in memory until
the restore takes it over; warmstart.early decides when, and which archive.

`guess` begins that read on a wiped VM as warmstart.sh's interpreter starts, before the rest of
warmstart is imported: off a checkout on Drive those imports took 0.15 s, in which Drive could
have read 9 MiB of the archive at 60 MiB/s. It guesses by name alone, in the Drive root the
checkout lies in (on Colab MyDrive, the default root); early.begin, once the run has resolved
its settings, takes the read over when the archive it would read is the same file, and ends it
otherwise. So this module, and what it imports, is small.
"""

from __future__ import annotations

import errno
import os
import select
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from . import PROJECT_ROOT, home
from .background import ChildRead, TooMuchOutput, child_within
from .layout import LAYOUT, snapshot_names

KIND = "snapshots"  # snapshot.KIND: that module is among those this read runs ahead of
AHEAD = 32 << 20  # bytes read ahead at most: at 60 MiB/s, half a second of Drive's time
# warmstart.sh's, while it restores the tools and the bootstrap starts: at 60 MiB/s, 1.6 s of Drive's
# time (that process holds nothing else)
HANDED_AHEAD = 96 << 20
CHUNK = ChildRead.PIPE  # a read of the child's pipe: what it holds
# A timed chunk is smaller until this much is timed: at 15 MiB/s two 1 MiB chunks took 0.13 s
# to say Drive's pace, and a race waited for it. So is the first of a child's read, untimed (it
# waits for the open too): its end begins the timing, and a whole CHUNK first took 0.07 s more
# at that pace. The one after a wait for room is a whole CHUNK: it takes what the pipe gathered
# meanwhile, which came at no pace of Drive's.
TIMED_CHUNK, TIMED_FIRST = 128 << 10, 1 << 20
# A read warmstart.sh begins itself (its guess not confirmed) as it reads the tools' wheels off
# Drive holds no more than this until they are off: the first chunk and what tells Drive's pace,
# all that the online question of warmstart.headstart needs (Drive's to itself: beside the
# wheels' reads it would see half its pace). The guess has timed Drive alone before the wheels.
PACE_AHEAD = CHUNK + TIMED_FIRST


class Ahead:
    """The archive `where` (its store's name for it), read from `stream` (a child's pipe, or the
    pipe a read handed on comes through) on a daemon thread of its own until the restore takes it
    over, waiting while `most` bytes (AHEAD) are in. As a stream (the restore's): what was read
    ahead, then the rest from `stream`. Or, handed on (`drain`), every chunk as it comes."""

    reads_on_its_own = True  # as the child's pipe it reads from (see readahead.ReadAhead)

    def __init__(self, where: str, stream: ChildRead | HandedRead, most: int | None = None) -> None:
        self.where, self._stream = where, stream
        self._most = AHEAD if most is None else most
        self._chunks: deque[bytes] = deque()
        self._held = 0
        self.ahead = 0  # bytes in when the restore took over: they came at no pace of the source's
        self.came = 0  # bytes this thread has read
        # Drive's pace as this thread saw it (`measured`), so a race need not wait for the restore's
        # reads to learn it. Only a child's read of Drive is timed: a read handed on comes first
        # out of the memory of the process that began it, at no pace of Drive's.
        self._timed_child = stream if isinstance(stream, ChildRead) else None
        self._busy, self._timed = 0.0, 0
        self._taken = threading.Event()
        self._lock = threading.Lock()  # _chunks and _held, between the two threads
        self._changed = threading.Condition(self._lock)  # a chunk came or went, or the read ended
        self._failed: OSError | None = None
        self._ended = False  # the thread's reading is over
        self._until = 0.0  # held until then (hold)
        self.index: tuple[str, Any] | None = None  # the archive's index as read after it began: (where, JSON)
        self._thread = threading.Thread(target=self._fill, daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        came: float | None = None  # when the last chunk came: the next one's time is Drive's pace
        # What the pipe held then: Drive's bytes in a chunk's time are the chunk and what waits in
        # the pipe after it, less what waited before. A thread that came late to the pipe (the
        # CPUs busy) would else count what had come before as come in its time: 5.1 MiB/s measured
        # behind a 4 MiB/s stand-in under CI's load.
        waited = 0
        try:
            while not self._taken.is_set():
                # full, or held: until a chunk goes (drain), the hold ends or the restore takes over
                with self._changed:
                    if self._waits():
                        came = None  # the child read on into the pipe meanwhile: the next chunk is no pace
                    while self._waits():
                        self._changed.wait(None if self._held >= self._most else self._until - time.monotonic())
                if self._taken.is_set():
                    return
                since = came if self._timed_child else None  # when this chunk's time begins; None: not timed
                first = not self.came and self._timed_child is not None
                size = TIMED_CHUNK if (since is not None or first) and self._timed < TIMED_FIRST else CHUNK
                chunk = self._stream.read(min(size, self._most - self._held))  # never more than `most` in
                if not chunk:
                    return
                now = time.monotonic()
                waiting = self._timed_child.waiting() if self._timed_child else 0
                with self._changed:
                    self._chunks.append(chunk)
                    self._held += len(chunk)
                    self.came += len(chunk)
                    if since is not None:  # not the first chunk: it waited for the first byte too
                        self._busy += now - since
                        self._timed += len(chunk) + waiting - waited
                    self._changed.notify_all()
                came, waited = now, waiting
        except OSError as exc:  # said by the restore's read, when it takes this one over
            self._failed = exc
        finally:
            with self._changed:
                self._ended = True
                self._changed.notify_all()

    @property
    def full(self) -> bool:
        """Whether it holds all it may (and reads on only once some goes, or it may hold more)."""
        return self._held >= self._most

    def allow(self, most: int) -> None:
        """Hold up to `most` bytes from now on."""
        with self._changed:
            self._most = max(self._most, most)
            self._changed.notify_all()

    def _waits(self) -> bool:
        return not self._taken.is_set() and (self._held >= self._most or time.monotonic() < self._until)

    def hold(self, seconds: float) -> None:
        """Read nothing more for `seconds` (or until `resume`): uv from the index has the CPUs."""
        with self._changed:
            self._until = time.monotonic() + seconds

    def resume(self) -> None:
        with self._changed:
            self._until = 0.0
            self._changed.notify_all()

    def take(self) -> Ahead:
        with self._changed:
            self._taken.set()
            self.ahead = self._held
            self._changed.notify_all()
        return self

    @property
    def at_once(self) -> int:
        """The bytes the restore's first reads get without waiting on Drive: those read ahead, the
        thread's read under way and what the pipe holds (a CHUNK each). None of them came at
        Drive's pace: counted in it, they made a 60 MiB/s Drive look twice as fast at first, and
        the index went unraced (bench/README.md)."""
        return self.ahead + 2 * CHUNK if self.ahead else 0

    @property
    def ended(self) -> bool:
        """Whether this thread's reading is over (the file's end, a failure, taken over)."""
        return self._ended

    @property
    def measured(self) -> tuple[float, int]:
        """Drive's pace while this read ran ahead: the seconds its chunks took to come, from the
        second on, and their bytes (the restore's read takes it as the start of its own pace)."""
        with self._lock:
            return self._busy, self._timed

    def drain(self) -> Iterator[bytes]:
        """Every chunk as it comes, to the end of the file, the thread reading on meanwhile (no
        more than `most` bytes ahead of what was drained); the read's failure raised at its end."""
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._chunks or self._ended)
                if not self._chunks:
                    break
                chunk = self._chunks.popleft()
                self._held -= len(chunk)
                self._changed.notify_all()
            yield chunk
        if self._failed:
            raise self._failed

    def _from_chunks(self, size: int) -> bytes:
        with self._lock:
            out = bytearray()
            while self._chunks and (size < 0 or len(out) < size):
                chunk = self._chunks.popleft()
                cut = len(chunk) if size < 0 else size - len(out)
                out += chunk[:cut]
                if cut < len(chunk):
                    self._chunks.appendleft(chunk[cut:])
            self._held -= len(out)
            return bytes(out)

    def read(self, size: int = -1, /) -> bytes:
        """`size` bytes (but at the end; -1: all the rest): first those read ahead."""
        out = self._from_chunks(size)
        if len(out) == size:
            return out
        # The thread stops after its read under way: one the restore watches as its own (a Drive
        # that stopped answering is given up on, and `stop` ends the child, which ends that read).
        self._thread.join()
        out += self._from_chunks(size - len(out) if size >= 0 else -1)
        if self._failed:
            raise self._failed
        if size < 0 or len(out) < size:
            out += self._stream.read(size - len(out) if size >= 0 else -1)
        return out

    def stop(self) -> None:
        self._stream.stop()

    def close(self) -> None:
        self.take()
        self.stop()
        self._thread.join()  # its read ends with the child
        self._stream.close()

    def __enter__(self) -> Ahead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HandedRead:
    """The archive's read another process began and hands on (`hand_on`): its bytes through one
    pipe, then how the read ended through another (`ok`, or an errno and its text). As ChildRead:
    `read(n)` gives n bytes but at the end, a read that failed is an OSError there, and `stop()`
    ends a read under way (from any thread)."""

    def __init__(self, data: int, outcome: int) -> None:
        self._data, self._outcome = data, outcome
        self._wake, self._woken = os.pipe()  # stop() writes to _woken
        self._said: bytes | None = None  # the sender's word, once read
        self._ready = select.poll()
        for fd in (data, self._wake):
            self._ready.register(fd, select.POLLIN)

    def read(self, size: int = -1, /) -> bytes:
        pieces, got = [], 0
        while size < 0 or got < size:
            if any(fd == self._wake for fd, _event in self._ready.poll()):
                raise OSError(errno.EINTR, "the read was stopped")
            piece = os.read(self._data, CHUNK if size < 0 else min(CHUNK, size - got))
            if not piece:
                self._ended()
                break
            pieces.append(piece)
            got += len(piece)
        return b"".join(pieces)

    def _ended(self) -> None:
        """The pipe's end: the sender's word on how its read ended (nothing: it died first)."""
        if self._said is None:
            self._said = os.read(self._outcome, 4096)
        said = self._said
        if said != b"ok":
            number, _, why = said.decode(errors="replace").partition(" ")
            raise OSError(int(number) if number.isdigit() else errno.EIO,
                          why or "the read warmstart.sh began ended before the file did")

    def stop(self) -> None:
        try:
            os.write(self._woken, b"x")
        except OSError:
            pass  # closed: nothing to stop

    def close(self) -> None:
        for fd in (self._data, self._outcome, self._wake, self._woken):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> HandedRead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def newest_archive(recipe: str, tag: str | None, listed: Iterable[tuple[str, float]]) -> str | None:
    """The newest of `recipe`'s snapshot archives (for the Python `tag`, when given) among the
    regular files `listed` (name, mtime), by its name alone (`<recipe>-<pyXY>-<key>-<sha>.tar.zst`);
    else None. Of two as new, the first by name (early.likely_archive and the guess pick alike)."""
    name = snapshot_names(recipe, tag)
    found = sorted((file, mtime) for file, mtime in listed if name.fullmatch(file))
    return max(found, key=lambda entry: entry[1])[0] if found else None


# The guess's look at the snapshot folder (a child's `find`, as DriveStore lists): a Drive slower
# than this to list one folder is left to the run's own look, bounded by its own timeout.
GUESS_WAIT = 2.0


class Guess:
    """A read of the newest archive of a recipe in `folder` (by name and time, as
    early.likely_archive picks), found and begun on a thread; `take` it, or end it."""

    def __init__(self, folder: Path, recipe: str, tag: str) -> None:
        self.folder = folder
        self._ahead: Ahead | None = None
        self._over = False
        self._lock = threading.Lock()
        self.looking = threading.Thread(target=self._look, args=(recipe, tag), daemon=True)
        self.looking.start()

    def _look(self, recipe: str, tag: str) -> None:
        ahead = None
        try:
            out = child_within(GUESS_WAIT, ["find", str(self.folder), "-mindepth", "1", "-maxdepth", "1",
                                            "-type", "f", "-printf", r"%f\0%T@\0"])
            fields = out.split(b"\0")[:-1]  # each field ends with a NUL
            listed = [(os.fsdecode(file), float(mtime)) for file, mtime in zip(fields[::2], fields[1::2], strict=True)]
            if newest := newest_archive(recipe, tag, listed):
                ahead = Ahead(str(self.folder / newest), ChildRead(self.folder / newest))
        except (OSError, TimeoutError, TooMuchOutput, ValueError):  # no folder, no find, a Drive that does not answer
            pass
        with self._lock:
            if self._over and ahead is not None:
                ahead.close()
            else:
                self._ahead = ahead

    def take(self, where: str | None) -> Ahead | None:
        """The guessed read, when it is of the archive `where`; else None, and it is ended. Never
        waits: a guess still looking when the run has looked itself (0.1 s later) is stuck on
        Drive, and a read it begins after `take` is ended."""
        with self._lock:
            self._over, ahead, self._ahead = True, self._ahead, None
        if ahead is None or ahead.where == where:
            return ahead
        ahead.close()
        return None


_guess: Guess | None = None


def guess(argv: list[str], drive: Path = PROJECT_ROOT.parent, environ: Mapping[str, str] = os.environ) -> None:
    """warmstart.sh RECIPE [options] (`argv`), as its interpreter starts on a wiped VM: begin
    reading the recipe's newest archive for this Python in `drive`, the Drive root the checkout
    lies in. Only the recipe and whether warmstart has run here are looked at: what else decides
    the archive (--drive, a team cache, the target, --dry-run) is the run's to resolve, and
    early.begin ends a read it does not confirm, within 0.1 s and AHEAD bytes."""
    global _guess
    if _guess is not None or not argv or argv[0].startswith("-") or home.run_locks(environ).is_dir():
        return
    recipe = Path(argv[0]).stem  # a recipe's name is its file's (recipes/NAME.toml), as early.begin takes it
    _guess = Guess(drive / LAYOUT / KIND, recipe, home.python_tag())


def take_guess(where: str | None) -> Ahead | None:
    """The read `guess` began, when it is of the archive `where` (None: end it, whatever it is)."""
    global _guess
    begun, _guess = _guess, None
    return begun.take(where) if begun else None
