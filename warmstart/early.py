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

On a wiped VM, warmstart.sh begins the read earlier still: as its interpreter starts, it guesses
the archive by name (prefetch.guess) and reads it while it imports the rest of warmstart. Its
`begin`, with the run's settings resolved, takes that read over when it names the same file,
and ends it otherwise (and begins its own: before it reads the wheels of warmstart's own tools
off Drive, holding no more than PACE_AHEAD until they are off). The read goes on
while the tools are installed, and is handed on to the bootstrap warmstart.sh then starts
(`hand_on`): a thread there keeps reading (HANDED_AHEAD at most in memory) and writes what came
into a pipe the bootstrap inherits, then how the read ended into another (HandedRead reads them).

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
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from . import home
from .background import ChildRead
from .disks import on_fuse
from .errors import WarmstartError
from .prefetch import CHUNK, KIND, Ahead, HandedRead, newest_archive, take_guess
from .profiles import Profile, select_profile
from .settings import HANDED_READ, Options, resolve
from .store import DriveStore
from .transfer import write_all

HANDED = HANDED_READ.name  # "<data fd>,<outcome fd>,<where>": the read warmstart.sh hands on
# What `begin` calls on the reading thread once it has the archive's index: the read, the run's
# options, its target interpreter and the variables its installers run without
Then = Callable[["Ahead", Options, str, tuple[str, ...]], None]


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
                write_all(data_out, memoryview(chunk))
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
        options: Options | None = Options(**flags)
    except (WarmstartError, TypeError):  # bad flags: the run says so
        options = None
    # not for --dry-run, nor off a wiped VM: a no-op run would read for nothing
    if options is None or options.dry_run or home.run_locks().is_dir():
        take_guess(None)  # what warmstart.sh guessed at is not this run's to read
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
                where = store.where(KIND, archive)
                ahead = take_guess(where) or Ahead(where, ChildRead(store.path(KIND, archive)), _most)
    except Exception:  # whatever it is, the run meets it itself, and says it
        pass
    take_guess(None)  # warmstart.sh's guess, when it was not of this archive
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
    # a link, a pipe: not "file"
    return newest_archive(recipe, tag, ((e.path.name, e.mtime) for e in store.entries(KIND) if e.state == "file"))


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
    for is not waited for), and a guess nothing confirmed."""
    take(None, wait=False)
    take_guess(None)


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
