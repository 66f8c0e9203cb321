"""A snapshot archive's read, begun before the plan names it.

Behind a slow Drive a restore is bound by the read of its archive, and until the plan names the
archive a run spends 0.3 to 0.4 s on the interpreter, invoke, warmstart's imports and the checks
before it. So the bootstrap task begins, before it imports the rest of warmstart, to read the
archive a wiped VM most likely restores: the one the newest snapshot index of the recipe on
Drive names (for this Python, when it is the target). A child reads it (`cat`), and a
daemon thread keeps up to AHEAD bytes of it. When the plan names the same archive, the restore
takes the read over (`take`, from the restore), and checks its bytes against the index as it
checks any; otherwise the child is ended and what it read is dropped (`drop`).

Only where it pays: on a VM where warmstart has not run yet (a wiped one: a no-op run reads
nothing ahead), from a FUSE Drive (Colab's; from local disk a restore is bound by the CPUs, not
the read), without a team cache (Drive is read in parts then) and not for --dry-run. What the
thread looks at on Drive is bounded as the run's own looks are (settings.resolve, DriveStore).
Behind the 60 MiB/s Drive stand-in, offline, alternated with the run as it was: hyperlpr 4.30 to
4.42 s against 4.40 to 4.64 s (8 rounds, 5 to 8 MiB read ahead), the Colab stand-in 3.12 to
3.33 s against 3.25 to 3.43 s (6 rounds, 8 to 11 MiB); bench/README.md has the rest.
"""

from __future__ import annotations

import re
import sys
import threading
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import home
from .background import ChildRead
from .errors import WarmstartError
from .profiles import select_profile
from .settings import Options, resolve
from .store import DriveStore
from .tools import python_tag
from .transfer import on_fuse

KIND = "snapshots"  # snapshot.KIND: that module is among those this read runs ahead of
AHEAD = 32 << 20  # bytes read ahead at most: at 60 MiB/s, half a second of Drive's time
CHUNK = ChildRead.PIPE  # a read of the child's pipe: what it holds


class Ahead:
    """The archive `where` (its store's name for it), read from `stream` (a child's pipe) on a
    daemon thread of its own until the restore takes it over or AHEAD bytes are in. As a stream
    (the restore's): what was read ahead, then the rest from `stream`."""

    def __init__(self, where: str, stream: ChildRead) -> None:
        self.where, self._stream = where, stream
        self._chunks: deque[bytes] = deque()
        self._held = 0
        self.ahead = 0  # bytes in when the restore took over: they came at no pace of the source's
        self._taken = threading.Event()
        self._lock = threading.Lock()  # _chunks and _held, between the two threads
        self._failed: OSError | None = None
        self._thread = threading.Thread(target=self._fill, daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        try:
            while not self._taken.is_set() and self._held < AHEAD:
                chunk = self._stream.read(CHUNK)
                if not chunk:
                    return
                with self._lock:
                    self._chunks.append(chunk)
                    self._held += len(chunk)
        except OSError as exc:  # said by the restore's read, when it takes this one over
            self._failed = exc

    def take(self) -> Ahead:
        self._taken.set()
        with self._lock:
            self.ahead = self._held
        return self

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
        self._taken.set()
        self.stop()
        self._thread.join()  # its read ends with the child
        self._stream.close()

    def __enter__(self) -> Ahead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# The read this process began ahead: None, the token of one being looked for (a thread finds its
# archive and starts it), or the Ahead itself. `take` and `drop` end it: a read the thread starts
# after that is closed at once.
_begun: object | Ahead | None = None
_guard = threading.Lock()


def begin(flags: Mapping[str, Any], root: Path) -> None:
    """Begin the read ahead for a bootstrap task given `flags` (bad ones are the run's to say),
    where it pays (see above)."""
    global _begun
    try:
        options = Options(**flags)
    except WarmstartError:
        return
    if options.dry_run or home.run_locks().is_dir():  # not a wiped VM: a no-op run would read for nothing
        return
    token = object()
    with _guard:
        if _begun is not None:
            return
        _begun = token
    threading.Thread(target=_start, args=(token, options, root), daemon=True).start()


def _start(token: object, options: Options, root: Path) -> None:
    global _begun
    ahead = None
    try:
        settings = resolve(options, select_profile(root))
        if not settings.team and on_fuse(settings.drive):
            # A recipe's name is its file's (recipes/NAME.toml); one that says otherwise finds nothing.
            recipe = Path(options.recipe).stem
            this = settings.python == sys.executable  # else the target's Python is not known yet
            store = DriveStore(settings.drive)
            archive = likely_archive(store, recipe, python_tag() if this else None)
            if archive:  # the child opens it: an open that waits on Drive holds the child
                ahead = Ahead(store.where(KIND, archive), ChildRead(store.path(KIND, archive)))
    except Exception:  # whatever it is, the run meets it itself, and says it
        pass
    with _guard:
        if _begun is token:
            _begun = ahead
            return
    if ahead is not None:  # taken or dropped meanwhile: too late
        ahead.close()


def likely_archive(store: DriveStore, recipe: str, tag: str | None) -> str | None:
    """The archive the newest snapshot index of `recipe` (for the Python `tag`, when given) names,
    when Drive holds it as a regular file; else None."""
    index_name = re.compile(rf"{re.escape(recipe)}-{tag or 'py[0-9]+'}-[0-9a-f]{{16}}\.json")
    files = {e.path.name: e for e in store.entries(KIND) if e.state == "file"}  # a link, a pipe: not "file"
    indexes = [e for name, e in files.items() if index_name.fullmatch(name)]
    if not indexes:
        return None
    index = store.read_json(KIND, max(indexes, key=lambda e: e.mtime).path.name)
    archive = index.get("archive") if isinstance(index, dict) else None
    return archive if isinstance(archive, str) and archive in files else None


def take(where: str | None) -> Ahead | None:
    """The read begun ahead of the archive `where`, now the caller's; None when there is none (one
    of another archive is ended). From now on nothing is read ahead."""
    global _begun
    with _guard:
        begun, _begun = _begun, None
    if not isinstance(begun, Ahead):
        return None
    if begun.where == where:
        return begun.take()
    begun.close()
    return None


def drop() -> None:
    """The run is over: a read begun ahead that nothing took is ended."""
    take(None)
