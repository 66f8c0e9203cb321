"""A snapshot archive's read, begun before the plan names it.

Behind a slow Drive a restore is bound by the read of its archive, and until the plan names the
archive a run spends 0.3 to 0.4 s on the interpreter, invoke, warmstart's imports and the checks
before it. So the bootstrap task begins, before it imports the rest of warmstart, to read the
archive a wiped VM most likely restores: the recipe's newest snapshot archive on Drive (for this
Python, when it is the target), found by its name in the folder's listing. A child reads it
(`cat`), and a daemon thread keeps up to AHEAD bytes of it; that thread then reads the archive's
index too, as the restore would (`index`: on the Drive stand-in the restore's own read of it
cost 50 ms before a race could begin). When the plan names the same archive, the restore takes
the read over (`take`, from the restore), and checks its bytes against the index as it checks
any; otherwise the child is ended and what it read is dropped (`drop`).

On a wiped VM, warmstart.sh begins the read the same way (`begin`) before it reads the wheels
of warmstart's own tools off Drive, holding no more than PACE_AHEAD until they are off, reads
on while it installs them, and hands the read on to the bootstrap it then starts (`hand_on`): a
thread there keeps reading (HANDED_AHEAD at most in memory) and writes what came into a pipe the
bootstrap inherits, then how the read ended into another (HandedRead reads them).

Only where it pays: on a VM where warmstart has not run yet (a wiped one: a no-op run reads
nothing ahead), from a FUSE Drive (Colab's; from local disk a restore is bound by the CPUs, not
the read), without a team cache (Drive is read in parts then) and not for --dry-run. What the
thread looks at on Drive is bounded as the run's own looks are (settings.resolve, DriveStore).
Behind the 60 MiB/s Drive stand-in, offline, alternated with the run as it was: hyperlpr 4.30 to
4.42 s against 4.40 to 4.64 s (8 rounds, 5 to 8 MiB read ahead), the Colab stand-in 3.12 to
3.33 s against 3.25 to 3.43 s (6 rounds, 8 to 11 MiB); bench/README.md has the rest.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import select
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from . import home
from .background import ChildRead
from .errors import WarmstartError
from .profiles import Profile, select_profile
from .settings import HANDED_READ, Options, resolve
from .store import DriveStore
from .transfer import on_fuse

KIND = "snapshots"  # snapshot.KIND: that module is among those this read runs ahead of
AHEAD = 32 << 20  # bytes read ahead at most: at 60 MiB/s, half a second of Drive's time
# warmstart.sh's, while it restores the tools and the bootstrap starts: at 60 MiB/s, 1.6 s of Drive's
# time (that process holds nothing else)
HANDED_AHEAD = 96 << 20
CHUNK = ChildRead.PIPE  # a read of the child's pipe: what it holds
# A timed chunk is smaller until this much is timed: at 15 MiB/s two 1 MiB chunks took 0.13 s
# to say Drive's pace, and a race waited for it. One that is not timed (the first, the one after
# a wait for room) is a whole CHUNK: it takes what the pipe gathered meanwhile, which came at
# no pace of Drive's.
TIMED_CHUNK, TIMED_FIRST = 128 << 10, 1 << 20
# warmstart.sh begins the read before it reads the tools' wheels off Drive, holding no more than
# this until they are off: the first chunk and what tells Drive's pace, all that the online
# question of warmstart.headstart needs (Drive's to itself: beside the wheels' reads it would
# see half its pace).
PACE_AHEAD = CHUNK + TIMED_FIRST
HANDED = HANDED_READ.name  # "<data fd>,<outcome fd>,<where>": the read warmstart.sh hands on
# What `begin` calls on the reading thread once it has the archive's index: the read, the run's
# options, its target interpreter and the variables its installers run without
Then = Callable[["Ahead", Options, str, tuple[str, ...]], None]


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
                size = TIMED_CHUNK if since is not None and self._timed < TIMED_FIRST else CHUNK
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


class Handed:
    """A read handed on: pass `fds` to the process that takes it, with `environ` added to its
    environment; `close_handed` the ends here once it has started (as headstart.HeadStart's);
    `stop` the read once it has ended."""

    def __init__(self, ahead: Ahead) -> None:
        self._ahead = ahead
        data_in, data_out = os.pipe()
        try:
            fcntl.fcntl(data_out, fcntl.F_SETPIPE_SZ, CHUNK)  # as the child's pipe: fewer, larger reads
        except OSError:
            pass  # the default then
        outcome_in, self._outcome_out = os.pipe()
        self.fds = (data_in, outcome_in)
        self.environ = {HANDED: f"{data_in},{outcome_in},{ahead.where}"}
        self._relay = threading.Thread(target=self._send, args=(ahead, data_out), daemon=True)
        self._relay.start()

    def _send(self, ahead: Ahead, data_out: int) -> None:
        outcome = b"ok"
        try:
            for chunk in ahead.drain():
                view = memoryview(chunk)
                while view:
                    view = view[os.write(data_out, view):]
        except BrokenPipeError:
            outcome = b""  # the taker closed its end: it wants no more
        except OSError as exc:
            outcome = f"{exc.errno or errno.EIO} {exc.strerror or exc}".encode()
        finally:
            ahead.close()
            os.close(data_out)
            try:
                os.write(self._outcome_out, outcome)
            except OSError:
                pass
            os.close(self._outcome_out)

    def close_handed(self) -> None:
        """The process that takes the read has started: the ends it was handed are its alone."""
        for fd in self.fds:
            os.close(fd)

    def stop(self) -> None:
        """The child reading the file is ended, if it has not; the relay ends with it."""
        self._ahead.stop()


# The read this process began ahead: None, the token of one being looked for (a thread finds its
# archive and starts it), or the Ahead itself. `take` and `drop` end it: a read the thread starts
# after that is closed at once.
_begun: object | Ahead | None = None
_most: int | None = None  # the bytes it may hold, as `begin` was last told
_guard = threading.Lock()
# Set once the thread `begin` started has published what it found (an Ahead, or nothing). A
# restore whose plan names the archive while that thread is still looking waits for it, up to
# FOUND_WAIT: its own read would wait on the same opens, and dropping the thread's read lost
# what it had read ahead (a fast plan on a busy machine: tests/test_early.py).
_found = threading.Event()
FOUND_WAIT = 2.0


def begin(flags: Mapping[str, Any], root: Path, most: int | None = None,
          then: Then | None = None, profile: Profile | None = None) -> threading.Thread | None:
    """Begin the read ahead for a bootstrap task given `flags` (bad ones are the run's to say),
    where it pays (see above), or take the one warmstart.sh handed on. `most`: bytes held at most
    (for a read begun already: from now on); `then`: called on the reading thread once the
    archive's index is read (warmstart.sh's headstart.consider); `profile`: the platform's, when
    the caller has it (else read from `root`'s envs/: from a checkout on Drive, 30 to 40 ms of
    opens before the read could begin). Returns the thread that looks for the archive, reads its
    index and calls `then`, when it began one."""
    global _begun, _most
    if handed := os.environ.pop(HANDED, None):  # not for this process's children
        with _guard:
            _begun = _handed(handed)
        return None
    try:
        options = Options(**flags)
    except (WarmstartError, TypeError):  # bad flags: the run says so
        return None
    if options.dry_run or home.run_locks().is_dir():  # not a wiped VM: a no-op run would read for nothing
        return None
    token = object()
    with _guard:
        _most = most
        if isinstance(_begun, Ahead) and most is not None:
            _begun.allow(most)
        if _begun is not None:
            return None
        _begun = token
        _found.clear()
    looking = threading.Thread(target=_start, args=(token, options, root, then, profile), daemon=True)
    looking.start()
    return looking


def _handed(handed: str) -> Ahead | None:
    try:
        data, outcome, where = handed.split(",", 2)
        return Ahead(where, HandedRead(int(data), int(outcome)))
    except (ValueError, OSError):  # not warmstart.sh's: nothing is read ahead
        return None


def _start(token: object, options: Options, root: Path, then: Then | None, profile: Profile | None) -> None:
    global _begun
    ahead, archive, store = None, None, None
    try:
        profile = profile or select_profile(root)
        settings = resolve(options, profile)
        if not settings.team and on_fuse(settings.drive):
            # A recipe's name is its file's (recipes/NAME.toml); one that says otherwise finds nothing.
            recipe = Path(options.recipe).stem
            this = settings.python == sys.executable  # else the target's Python is not known yet
            store = DriveStore(settings.drive)
            archive = likely_archive(store, recipe, home.python_tag() if this else None)
            if archive:  # the child opens it: an open that waits on Drive holds the child
                ahead = Ahead(store.where(KIND, archive), ChildRead(store.path(KIND, archive)), _most)
    except Exception:  # whatever it is, the run meets it itself, and says it
        pass
    with _guard:
        published = _begun is token
        if published:
            _begun = ahead
            if ahead is not None and _most is not None:
                ahead.allow(_most)  # as `begin` was last told meanwhile
        _found.set()
    if ahead is None:
        return
    if not published:  # taken or dropped meanwhile: too late
        ahead.close()
        return
    assert store is not None and archive is not None and profile is not None  # an Ahead is made with them
    _read_index(ahead, store, archive)
    if then is not None:
        try:
            then(ahead, options, settings.python, profile.unset_env)
        except Exception:  # an extra: the bootstrap's own race asks the index, if it pays
            pass


def _read_index(ahead: Ahead, store: DriveStore, archive: str) -> None:
    """The index that names `archive` (`<stem>.json` beside `<stem>-<sha>.tar.zst`), read as the
    restore reads it (DriveStore.read_json: its size capped, its wait bounded); nothing when it
    cannot be (the restore reads it then, and says why)."""
    name = archive.rsplit("-", 1)[0] + ".json"
    try:
        ahead.index = (store.where(KIND, name), store.read_json(KIND, name))
    except Exception:
        pass


def index(where: str) -> Any | None:
    """The snapshot index `where` (its store's name for it), if the thread that reads ahead has
    read it; else None."""
    with _guard:
        begun = _begun
    found = begun.index if isinstance(begun, Ahead) else None
    return found[1] if found and found[0] == where else None


def likely_archive(store: DriveStore, recipe: str, tag: str | None) -> str | None:
    """The newest snapshot archive of `recipe` (for the Python `tag`, when given) that Drive holds
    as a regular file, by its name alone (`<recipe>-<pyXY>-<key>-<sha>.tar.zst`); else None. Its
    index is written after it and names it, but is read only once the archive's read has begun
    (_read_index): on Drive each file opened waits (20 ms on the stand-in), and the restore takes
    this read only when the index names the same archive."""
    name = re.compile(rf"{re.escape(recipe)}-{tag or 'py[0-9]+'}-[0-9a-f]{{16}}-[0-9a-f]{{16}}\.tar\.zst")
    archives = [e for e in store.entries(KIND) if e.state == "file" and name.fullmatch(e.path.name)]
    return max(archives, key=lambda e: e.mtime).path.name if archives else None  # a link, a pipe: not "file"


def _claim(wait: bool = True) -> Ahead | None:
    """The read begun here, if one is under way (`wait`: or once the thread still looking for its
    archive has found it, FOUND_WAIT at most): the caller's now. From now on nothing is read
    ahead (a thread still looking then closes what it starts)."""
    global _begun
    with _guard:
        looking = _begun is not None and not isinstance(_begun, Ahead)
    if looking and wait:
        _found.wait(FOUND_WAIT)
    with _guard:
        begun, _begun = _begun, None
    return begun if isinstance(begun, Ahead) else None


def take(where: str | None, wait: bool = True) -> Ahead | None:
    """The read begun ahead of the archive `where`, now the caller's; None when there is none (one
    of another archive is ended). From now on nothing is read ahead."""
    begun = _claim(wait)
    if begun is None:
        return None
    if begun.where == where:
        return begun.take()
    begun.close()
    return None


def drop() -> None:
    """The run is over: a read begun ahead that nothing took is ended (one still being looked
    for is not waited for)."""
    take(None, wait=False)


def hand_on() -> Handed | None:
    """The read begun here, to hand on to a process this one starts (see Handed); None when
    there is none. Nothing is read ahead here any more."""
    begun = _claim()
    if begun is None:
        return None
    try:
        return Handed(begun)
    except OSError:  # no pipe to be had (out of file descriptors): the bootstrap reads for itself
        begun.close()
        return None
