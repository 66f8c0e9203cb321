"""The Drive store: every byte warmstart keeps on Drive goes through here (where: warmstart.layout).

Drive may be shared by two VMs at once and a VM may die at any moment, so: a file appears only
whole (a unique temporary name, flushed, renamed); nothing read is used before its sha256 is
checked while it is copied off; a damaged file is renamed aside (kept for inspection, never used
again, never deleted by a run); temporaries a killed run left are removed after an hour. Drive
answers per file slowly, so each folder is listed once per run. A read waits at most
WARMSTART_DRIVE_TIMEOUT for its data (a FUSE read from a Drive that stopped answering never
returns); the first that waits that long ends Drive's part in the run, as a team store's first
failure ends its part. `Store` is the interface every medium implements (this folder store;
warmstart.team's object store); warmstart.tiered puts a team store behind Drive. Standard
library only: warmstart.sh fills the wheel folder before any dependency is there.
"""

from __future__ import annotations

import errno
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePath
from typing import IO, Any, Protocol, TypeVar

from . import background, faults
from .console import QUIET, Bar, Bars
from .disks import explain, kind_of, no_room, on_fuse, regular_file, remount
from .errors import BadInput
from .layout import KINDS, LAYOUT, RECIPES
from .settings import drive_timeout, looked_in_time
from .transfer import (
    AtomicFile,
    Stream,
    WriteFailed,
    atomic_copy,
    atomic_write_bytes,
    copy_hashed,
    part_name,
    read_head,
    read_untrusted_json,
    sha256_of,
    untrusted_json,
)

USAGE = "usage"
RECORD_MOST = 1 << 20  # a usage record holds one run's keys: a few KiB
STALE_SECONDS = 3600  # a temporary file this old belongs to a killed run, not a slow one
DAMAGED = ".damaged-"

T = TypeVar("T")
P = TypeVar("P", bound=PurePath)


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    # the snapshot archive's read was begun before the plan named it, and taken over (early.py);
    # read_ahead: the bytes it had read by then (none yet, after a fast plan)
    read_begun_early: bool = False
    read_ahead: int = 0


def unread_because(unlisted: str | None, down: str | None) -> str | None:
    """Why some of a store's folders went unread in a run, and the step that helps (`down` says
    its own); None: none did."""
    return f"{unlisted}; remove what does not belong there" if unlisted else down


def aside_name(name: str) -> str:
    """The name a damaged file is set aside under: unique, dated, never read as a file."""
    return f"{name}{DAMAGED}{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"


def classify(name: str) -> str:
    """A store entry's state by its name: "file", "temporary" (a write under way, or killed) or
    "set aside" (damaged)."""
    if name.startswith(".") and name.endswith(".part"):
        return "temporary"
    return "set aside" if DAMAGED in name else "file"


@dataclass(frozen=True)
class StoredFile:
    """One entry of a store folder, classified by its name only."""

    kind: str  # wheels, assets, snapshots
    path: PurePath  # a Path on Drive; the object's key in a team store
    size: int
    mtime: float
    state: str  # "file", "temporary", "set aside", "not a file"

    @property
    def key(self) -> str:
        """The name usage records use: `wheels/x.whl`."""
        return f"{self.kind}/{self.path.name}"


_GOING_DOWN = threading.Lock()


def went_down(store: Store, why: str, said: str) -> None:
    """`store` stopped answering for the run: `why`, and one warning (`said`), whichever of the
    reads that fail at once (the parts of a snapshot; a watched worker's, merged) comes first."""
    with _GOING_DOWN:
        if not store.down:
            store.down, store.down_said = why, said
            store.warnings.append(said)


class Store(Protocol):
    """What every medium of a store offers: a folder (DriveStore, for Drive and a team's shared
    folder) and an object store (warmstart.team.ObjectStore)."""

    stats: CacheStats
    warnings: list[str]
    read_only: bool
    down: str | None  # why it stopped answering for this run
    down_said: str | None  # the one warning that said so (went_down)
    refused: bool  # a write was refused: reads go on, writes stop
    unlisted: str | None  # why its listing was not read (it lists more than a cache holds)

    def where(self, kind: str, name: str) -> str: ...
    def unread(self) -> str | None: ...  # why some of its folders went unread, and the step (unread_because)
    def names(self, kind: str) -> list[str]: ...
    def has(self, kind: str, name: str) -> bool: ...
    def size(self, kind: str, name: str) -> int: ...
    def entries(self, *kinds: str) -> Iterator[StoredFile]: ...
    def open(self, kind: str, name: str) -> Stream: ...
    def patience(self) -> Patience | None: ...
    def ranges(self, kind: str, name: str) -> AbstractContextManager[Callable[[int, int], bytes]]: ...
    def get(self, kind: str, name: str, dest: Path, sha256s: Collection[str]) -> Path | None: ...
    def read_json(self, kind: str, name: str, limit: int = ...) -> Any: ...
    def sha256(self, entry: StoredFile) -> str: ...
    def put(self, kind: str, name: str, src: Path, bar: Any = ...) -> bool: ...
    def put_text(self, kind: str, name: str, text: str) -> None: ...
    def set_aside_named(self, kind: str, name: str) -> None: ...
    def set_aside(self, path: PurePath) -> PurePath: ...
    def remove(self, entries: Iterable[StoredFile]) -> int: ...
    def clean_stale_parts(self, now: float | None = ...) -> list[Path]: ...
    def record_use(self, keys: Iterable[str], now: float | None = ...) -> None: ...
    def last_used(self) -> tuple[dict[str, float], Sequence[PurePath]]: ...
    def compact_usage(self, when: dict[str, float], records: Sequence[PurePath], keep: set[str]) -> None: ...


@dataclass(frozen=True)
class Patience:
    """How long a read of a store may wait for its data, and what giving up on one does (the
    store is down for the run, with one warning): the error to raise. A reader on a thread of its
    own (a snapshot's) is watched by its consumer with it, which costs no thread a read."""

    seconds: float
    give_up: Callable[[], OSError]

    def spent(self, since: float | None) -> bool:
        """Whether a read under way since `since` (monotonic; None: none is) waited too long."""
        return since is not None and time.monotonic() - since > self.seconds


# What waited the store's timeout, as `down` says it ({:g}: the seconds)
READ_WAITED = "a read waited {:g} s for its data"
WRITE_WAITED = "a write waited {:g} s to end"
SMALL_WRITE = 1 << 20  # bytes of a cache's file a run writes to Drive itself (an index, a lock, a record):
# the rest (wheels, archives, assets) go to the cache by its worker, which bounds its own writes (drivework)
LOOK_WAITED = "a look at its files waited {:g} s"


class Stalled(TimeoutError):
    """A read from a folder store that waited its timeout for data: the store is down for the run."""

    def __str__(self) -> str:
        return str(self.strerror)


@dataclass
class DriveStore:
    drive: Path
    stats: CacheStats = field(default_factory=CacheStats)
    bars: Bars = QUIET
    warnings: list[str] = field(default_factory=list)  # Drive writes that failed; the run goes on
    read_only: bool = False  # as a team store a person may only read (see warmstart.team)
    down: str | None = field(default=None, init=False)  # why it stopped answering for the run (_answered)
    down_said: str | None = field(default=None, init=False)
    refused: bool = field(default=False, init=False)
    unlisted: str | None = field(default=None, init=False)  # why its folders are not listed (_listed)
    _listings: dict[str, list[str]] = field(default_factory=dict, repr=False)
    _folders: tuple[Path, ...] | None = field(default=None, init=False, repr=False)  # folder_in_the_way's one look
    timeout: float = field(default_factory=drive_timeout, repr=False)  # seconds a read may wait for its data

    def __str__(self) -> str:
        return str(self.drive)

    @property
    def root(self) -> Path:
        return self.drive / LAYOUT

    @cached_property
    def is_fuse(self) -> bool:
        """Whether its folder lies on a FUSE mount (Colab's Drive), from the mount table, once."""
        return on_fuse(self.root)

    @property
    def recipes(self) -> Path:
        return self.drive / RECIPES

    @property
    def placed_ledger(self) -> Path:
        return self.root / "placed.json"

    def path(self, kind: str, name: str) -> Path:
        return self.root / kind / name

    def folder_in_the_way(self, kinds: Sequence[str] = (*KINDS, USAGE)) -> Path | None:
        """A link, or a file, where `.warmstart`, `v1` or the folder of one of `kinds` goes:
        written through a link, the cache's files would land wherever it points, and listed
        through one, prune would remove files there. None when each is a folder or is not there
        yet, or Drive did not answer the look in time (the run says that itself). Looked at once
        a run, all of the store's folders at once."""
        if self._folders is None:
            nothing: tuple[Path, ...] = ()
            self._folders = self._looked(self._look_at_folders, nothing)
        wanted = {self.root.parent, self.root, *(self.root / kind for kind in kinds)}
        return next((folder for folder in self._folders if folder in wanted), None)

    def _look_at_folders(self) -> tuple[Path, ...]:
        """What stands where the store's own folders go and is no folder, as a child (find) sees
        it: a thread of this process left in a look at a FUSE mount that stopped answering would
        keep the process from ending (_found)."""
        folders = [self.root.parent, self.root, *(self.root / kind for kind in (*KINDS, USAGE))]
        # (a relative folder as ./folder: a name that begins with - or ! is not an expression of find's)
        named = {os.path.join("" if folder.is_absolute() else ".", folder): folder for folder in folders}
        try:  # each as itself, a link not followed; one not there is a line on find's stderr
            out = background.child_within(self.timeout, ["find", *named, "-maxdepth", "0", "-printf", r"%y\0%p\0"])
        except TimeoutError:  # _looked gives Drive up
            raise
        except OSError:  # no find to run
            return tuple(f for f in folders if os.path.islink(f) or (os.path.lexists(f) and not os.path.isdir(f)))
        fields = [os.fsdecode(field) for field in out.split(b"\0")]
        return tuple(named[path] for kind, path in zip(fields[0:-1:2], fields[1::2], strict=False) if kind != "d")

    def require_own_folders(self, kinds: Sequence[str] = (*KINDS, USAGE)) -> None:
        """BadInput (exit 2) naming what folder_in_the_way finds: a run, `cache` and `assets`
        refuse it before anything changes."""
        if blocking := self.folder_in_the_way(kinds):
            raise BadInput(folder_refused(blocking))

    def _refuse_folder_in_the_way(self, kind: str) -> None:
        """Before a write into `kind`, or a read of it: an OSError saying what is in the way
        (folder_in_the_way), which the writes that may fail say as a warning."""
        if blocking := self.folder_in_the_way((kind,)):
            raise OSError(folder_refused(blocking))

    # -- listing ---------------------------------------------------------------------------

    def where(self, kind: str, name: str) -> str:
        return str(self.path(kind, name))

    def unread(self) -> str | None:
        return unread_because(self.unlisted, self.down and f"{self.down}; run the command again when it answers "
                                                           f"(on Colab, {remount(self.drive)})")

    def names(self, kind: str) -> list[str]:
        """The whole regular files of a folder (no temporaries, nothing set aside). The first asks
        for the other folders not yet listed too: one listing (a child's, see _listed) a run."""
        if kind not in self._listings:
            wanted = (kind, *(other for other in KINDS if other not in self._listings and other != kind))
            listed: dict[str, list[str]] = {other: [] for other in wanted}
            for entry in self.entries(*wanted):  # sorted by name
                if entry.state == "file":
                    listed[entry.kind].append(entry.path.name)
            self._listings.update(listed)
        return self._listings[kind]

    def relist(self) -> None:
        """Forget the listings: another process (the Drive worker, another VM) wrote since."""
        self._listings.clear()

    def on_drive(self, kind: str, name: str) -> bool:
        """False too once Drive stopped answering (a look at it is bounded as a read is), and
        when it would be found through a link (folder_in_the_way)."""
        if self.folder_in_the_way((kind,)):
            return False
        return self._looked(lambda: regular_file(self.path(kind, name)), False)

    has = on_drive

    def mounted_read_only(self) -> str | None:
        """Why nothing can be written to this Drive's cache, when it lies on a file system mounted
        read-only (a read-only share, a container's `-v DIR:/drive:ro`): its files are
        read, and none is written. A look bounded as a read is."""
        def look() -> bool:
            for folder in (self.root, self.drive / LAYOUT.parts[0], self.drive):  # the deepest that is there
                try:
                    return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
                except OSError:
                    continue
            return False
        if not self._looked(look, False):
            return None
        return f"{self.drive} is on a file system mounted read-only (on Colab, {remount(self.drive)})"

    def size(self, kind: str, name: str) -> int:
        return self.path(kind, name).stat().st_size

    def sha256(self, entry: StoredFile) -> str:
        return sha256_of(Path(entry.path))

    def entries(self, *kinds: str) -> Iterator[StoredFile]:
        """The folders' entries, listed on a thread given `timeout`; none once Drive stopped answering."""
        nothing: list[StoredFile] = []
        return iter(self._looked(lambda: self._listed(kinds or KINDS), nothing))

    def _listed(self, kinds: Sequence[str]) -> list[StoredFile]:
        """The folders' entries, sorted by name; none when they list more than a cache holds."""
        if self.unlisted:
            return []
        if blocking := self.folder_in_the_way(kinds):  # never read, never removed, never written
            self.unlisted = not_its_folder(blocking)
            self.warnings.append(f"{self.unlisted}: this run takes nothing from there and writes nothing there; "
                                 "move it away")
            return []
        try:
            found = self._found(kinds)
        except background.TooMuchOutput:  # filled by someone else (Drive is shared): none of it is read
            self.unlisted = (f"{self.root} lists more files than a cache holds (over "
                             f"{background.OUTPUT_MOST >> 20} MiB of names)")
            self.warnings.append(f"{self.unlisted}: this run takes no wheel from there; remove what does "
                                 "not belong there")
            return []
        order = {kind: i for i, kind in enumerate(kinds)}
        return sorted(found, key=lambda entry: (order[entry.kind], entry.path.name))

    def _found(self, kinds: Sequence[str]) -> list[StoredFile]:
        """The folders' entries as a child (find) lists them: a thread of this process left in a
        listing of a FUSE mount that stopped answering would keep the process from ending until
        the mount answers; a child left there keeps nothing (it holds none of this process's files)."""
        # (a relative folder as ./folder: a name that begins with - or ! is not an expression of find's)
        folders = {os.path.join("" if self.root.is_absolute() else ".", self.root, kind): kind for kind in kinds}
        try:
            out = background.child_within(self.timeout, ["find", *folders, "-mindepth", "1", "-maxdepth", "1",
                                                         "-printf", r"%H\0%f\0%y\0%s\0%T@\0"])
        except TimeoutError:  # _looked gives Drive up
            raise
        except OSError:  # no find to run
            return self._scanned(kinds)
        fields = [os.fsdecode(field) for field in out.split(b"\0")]
        found = []
        # missing folders and files removed by another VM meanwhile are only lines on find's stderr
        for at in range(0, len(fields) - 4, 5):
            folder, name, kind_of, size, mtime = fields[at:at + 5]
            # a link, a pipe, a device: never read, never removed
            state = classify(name) if kind_of == "f" else "not a file"
            found.append(StoredFile(folders[folder], Path(folder, name), int(size), float(mtime), state))
        return found

    def _scanned(self, kinds: Sequence[str]) -> list[StoredFile]:
        """The same, listed here (where there is no find), and capped as find's output is:
        TooMuchOutput past as many bytes of names."""
        found: list[StoredFile] = []
        listed = 0
        for kind in kinds:
            folder = self.root / kind
            if not folder.is_dir():
                continue
            with os.scandir(folder) as scan:  # one entry at a time: what is past the cap is never held
                for entry in scan:
                    listed += len(entry.path) + 36  # as find prints it, with its size, time and separators
                    if listed > background.OUTPUT_MOST:
                        raise background.TooMuchOutput(f"{folder} lists more than {background.OUTPUT_MOST >> 20} MiB")
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # removed by another VM meanwhile
                    # a link, a pipe, a device: never read, never removed
                    state = classify(entry.name) if entry.is_file(follow_symlinks=False) else "not a file"
                    found.append(StoredFile(kind, Path(entry.path), info.st_size, info.st_mtime, state))
        return found

    # -- reading ---------------------------------------------------------------------------

    def patience(self) -> Patience:
        return Patience(self.timeout, self._give_up)

    def _give_up(self, waited: str = READ_WAITED) -> Stalled:
        """A read (or a look) waited `timeout` for its answer: Drive's part in the run ends
        (`down`, one warning), so nothing later waits that long again."""
        if not self.down:  # else said: every read after it comes here (two at once: went_down says one)
            why = f"{self.drive} stopped answering ({waited.format(self.timeout)})"
            went_down(self, why, f"{why}; this run reads nothing more from it (on Colab, {remount(self.drive)})")
        return Stalled(errno.ETIMEDOUT, self.down)

    def _answered(self, read: Callable[[], T], waited: str = READ_WAITED) -> T:
        """read(), given `timeout` seconds to answer: on a thread of its own, a daemon left waiting
        when a Drive that stopped answering never does."""
        if self.down:
            raise self._give_up()
        try:
            return background.within(self.timeout, read)
        except TimeoutError:
            raise self._give_up(waited) from None

    def _looked(self, look: Callable[[], T], otherwise: T) -> T:
        """look() at Drive's files (a stat, a listing), bounded as a read is: `otherwise` once
        Drive stopped answering (one warning, as for a read)."""
        try:
            return self._answered(look, LOOK_WAITED)
        except Stalled:
            return otherwise

    def _close(self, close: Callable[[], None]) -> None:
        """A FUSE close asks the Drive too: once it is down, nothing waits for one."""
        if self.down:
            background.started(close)
        else:
            self._answered(close)

    def open(self, kind: str, name: str) -> Stream:
        """A stored file to read once, front to back (a snapshot archive), on a reader's own thread
        that its consumer watches with `patience()`; only the open is bounded here. On a FUSE
        mount (Colab's Drive) a child reads it (background.ChildRead): hyperlpr's restore step from
        a 60 MiB/s Drive took 3.93 to 4.28 s against 4.17 to 4.82 s read on the thread (5
        alternated rounds). From local disk the pipe only costs a copy (slower in 4 of 5 rounds)."""
        path = self.path(kind, name)
        self._refuse_folder_in_the_way(kind)
        file = self._answered(lambda: open(path, "rb", buffering=0))  # noqa: SIM115 (its reader closes it)
        if not self.is_fuse:
            return file
        try:
            return background.ChildRead(file)
        except OSError:  # no cat to run
            return file

    @contextmanager
    def ranges(self, kind: str, name: str) -> Iterator[Callable[[int, int], bytes]]:
        """`read_at(start, length)` of a stored file (a part of a snapshot archive; shorter only at
        its end), with one open for all of them: Drive answers each open slowly. The parts are
        read on threads their reader watches with `patience()`."""
        path = self.path(kind, name)
        self._refuse_folder_in_the_way(kind)
        if not regular_file(path):
            raise FileNotFoundError(f"{path} is not a regular file")
        fd = self._answered(lambda: os.open(path, os.O_RDONLY | os.O_NOFOLLOW))

        def read_at(start: int, length: int) -> bytes:
            chunks = []
            while length > 0 and (chunk := os.pread(fd, length, start)):
                chunks.append(chunk)
                start, length = start + len(chunk), length - len(chunk)
            return b"".join(chunks)

        try:
            yield read_at
        finally:
            self._close(lambda: os.close(fd))

    def get(self, kind: str, name: str, dest: Path, sha256s: Collection[str]) -> Path | None:
        """Copy a stored file to local `dest` while hashing it; `dest` when its sha256 is one of
        `sha256s`, else None: missing, unreadable (a warning; none more once Drive is down),
        larger than the local disk has room for (a warning) or damaged (set aside, a warning).
        WriteFailed when the local disk fails the copy."""
        src = self.path(kind, name)
        if self.down or not self.on_drive(kind, name):
            return None
        try:
            listed = src.stat().st_size
            if too_large := no_room(listed, dest.parent):
                self.warnings.append(f"{src} not copied: it is {too_large}")
                return None
            with (open(dest, "wb") as out, self.bars.bar(listed, f"from Drive {name[:30]}") as bar,
                  _Answering(self, self._answered(lambda: open(src, "rb", buffering=0))) as fin):
                sha256, size = copy_hashed(fin, out, bar, limit=listed)
        except WriteFailed:  # the local disk's fault (full), not Drive's: the run cannot go on
            dest.unlink(missing_ok=True)
            raise
        except OSError as exc:
            dest.unlink(missing_ok=True)
            if not isinstance(exc, Stalled):  # that one warned once for the run
                self.warnings.append(f"{src} cannot be read: {explain(exc, self.drive)}")
            return None
        self.stats.bytes_read += size
        if sha256 not in sha256s:
            dest.unlink()
            self.warnings.append(f"{src} does not match its sha256 (damaged); set aside as "
                                 f"{self.set_aside(src).name}")
            return None
        self.stats.hits += 1
        return dest

    def read_json(self, kind: str, name: str, limit: int = 1 << 20) -> Any:
        """A small JSON file (a snapshot index); ValueError or OSError (Stalled: Drive stopped
        answering) when it is not one."""
        return self._answered(lambda: read_untrusted_json(self.path(kind, name), limit))

    def read_small(self, kind: str, name: str, limit: int) -> bytes:
        """A small file's first `limit` + 1 bytes (transfer.read_head: never a pipe or a device),
        bounded in time as every read is; OSError (Stalled: Drive stopped answering)."""
        return self._answered(lambda: read_head(self.path(kind, name), limit))

    # -- writing ---------------------------------------------------------------------------

    def put(self, kind: str, name: str, src: Path, bar: Bar | None = None) -> bool:
        """Copy a local file in, atomically; names are content-addressed, so one that is there
        is the same file (another VM put it first). False, with a warning, when Drive fails.
        `bar`: the progress bar of a larger write to count on (else one of its own)."""
        if self.read_only:
            return False
        dest = self.path(kind, name)
        if regular_file(dest):
            if bar:
                bar.update(src.stat().st_size)
            return True
        try:
            self._refuse_folder_in_the_way(kind)
            if (size := src.stat().st_size) <= SMALL_WRITE and self.is_fuse:
                self.write_file(dest, src)
            else:
                with AtomicFile(dest) as part, self._bar(bar, size, f"to Drive {name[:30]}") as shown:
                    _sha256, size = copy_hashed(src, part.fh, shown)
                    faults.point("cache-write")
                    part.commit(dest)
        except OSError as exc:
            if not isinstance(exc, Stalled):  # that one warned once for the run
                self.warnings.append(f"{kind[:-1]} {name} not cached on Drive: {explain(exc, self.drive)}")
            return False
        self.stats.bytes_written += size
        self._listings.pop(kind, None)
        return True

    @contextmanager
    def _bar(self, given: Bar | None, total: int, desc: str) -> Iterator[Bar]:
        if given is not None:
            yield given
        else:
            with self.bars.bar(total, desc) as own:
                yield own

    def writer(self, kind: str, stem: str) -> AtomicFile:
        """A new file in `kind` named only on commit (snapshot archives, named by their sha256)."""
        self._refuse_folder_in_the_way(kind)
        return AtomicFile(self.path(kind, stem))

    def put_text(self, kind: str, name: str, text: str) -> None:
        """A small file (a snapshot's index, a usage record), atomically (write_file)."""
        if not self.read_only:
            self._refuse_folder_in_the_way(kind)
            self.write_file(self.path(kind, name), text.encode())

    def write_file(self, dest: Path, data: bytes | Path) -> None:
        """A file of the run's own on Drive, atomically: a small one of the cache's (an index, a
        lock, a usage record), the placed files' ledger, an asset placed in a workdir on Drive
        (`data`: bytes, or a local file's). On a FUSE mount a child writes it (a write to a Drive
        that stopped answering never returns, and a thread of the run caught in one keeps it from
        ending): once it takes nothing more for `timeout`, Drive is down for the run (Stalled)."""
        if not self.is_fuse:
            if isinstance(data, Path):
                atomic_copy(data, dest)
            else:
                atomic_write_bytes(dest, data)
            return
        if self.down:
            raise self._give_up()
        try:
            background.child_write(self.timeout, part_name(dest), dest, data)
        except TimeoutError:
            raise self._give_up(WRITE_WAITED) from None

    def look(self, paths: Sequence[Path]) -> None:
        """Before the run works in a Drive folder outside the cache (the workdir), long after its
        first look: a look at `paths` on a FUSE mount, bounded as that one is (looked_in_time):
        one that waits `timeout` makes Drive down for the run (Stalled). A Drive that stopped
        answering during the install then holds no thread of the run."""
        if self.down:
            raise self._give_up()
        # a name no one made: the kernel may answer a look at a path it looked up lately itself
        unseen = f".warmstart-look-{uuid.uuid4().hex}"
        if self.is_fuse and not looked_in_time([path / unseen for path in paths], self.timeout):
            raise self._give_up(LOOK_WAITED)

    def set_aside_named(self, kind: str, name: str) -> None:
        """Set a damaged file aside where it is."""
        if self.on_drive(kind, name) and not self.read_only:
            self.set_aside(self.path(kind, name))

    def set_aside(self, path: PurePath) -> Path:
        """Rename a damaged file out of the way: kept for inspection, never deleted, never used."""
        path = Path(path)
        aside = path.with_name(aside_name(path.name))
        os.replace(path, aside)
        self._listings.clear()
        return aside

    def clean_stale_parts(self, now: float | None = None) -> list[Path]:
        """Remove the temporary files killed runs left; a failing Drive is reported elsewhere."""
        now = time.time() if now is None else now
        removed = []
        try:
            for entry in self.entries():
                if entry.state == "temporary" and now - entry.mtime > STALE_SECONDS:
                    Path(entry.path).unlink(missing_ok=True)
                    removed.append(Path(entry.path))
        except OSError:
            pass  # cleaning is a courtesy
        return removed

    def remove(self, entries: Iterable[StoredFile]) -> int:
        """Delete entries (prune); returns the bytes freed. Only ever called on what prune chose."""
        freed = 0
        for entry in entries:
            try:
                Path(entry.path).unlink()
                freed += entry.size
            except FileNotFoundError:
                pass  # another VM removed it
        self._listings.clear()
        return freed

    # -- usage records ---------------------------------------------------------------------
    # Each run writes one small file naming the store files it used, so that prune removes only
    # what no checkout sharing this Drive used within its retention period.

    def record_use(self, keys: Iterable[str], now: float | None = None) -> None:
        now = time.time() if now is None else now
        try:
            if (names := sorted(set(keys))) and not (self.read_only or self.down):  # down: it would hang
                self._write_record(dict.fromkeys(names, now))
        except OSError:
            pass  # a record only protects files from pruning; the next run writes another

    def _write_record(self, used: dict[str, float]) -> None:
        self.put_text(USAGE, record_name(used), record_text(used))

    def last_used(self) -> tuple[dict[str, float], Sequence[PurePath]]:
        """When a run last used each store file (by key), and the record files that say so."""
        def read(record: Path) -> bytes | None:
            try:  # bounded as every read of Drive is: once one waited its timeout, `down` says so
                return self._answered(lambda: read_head(record, RECORD_MOST))
            except OSError:  # gone meanwhile, or Drive stopped answering
                return None

        # listed as the other folders are: bounded in time and in size (`unlisted`)
        records = [Path(e.path) for e in self.entries(USAGE) if e.state == "file" and e.path.suffix == ".json"]
        return fold_records(records, read)

    def compact_usage(self, when: dict[str, float], records: Sequence[PurePath], keep: set[str]) -> None:
        """Fold the records read into one, for the files still there, then remove those read (a
        record another run writes meanwhile is a new file, and stays)."""
        compact(when, records, keep, self._write_record, lambda record: Path(record).unlink(missing_ok=True))


class _Answering:
    """A file of `store` opened for reading (unbuffered: a buffered file's close waits for a read
    under way) whose reads and close are given the store's timeout (DriveStore._answered)."""

    def __init__(self, store: DriveStore, fh: IO[bytes]) -> None:
        self.store, self.fh = store, fh

    def read(self, size: int = -1) -> bytes:
        return self.store._answered(lambda: self.fh.read(size))

    def close(self) -> None:
        self.store._close(self.fh.close)

    def __enter__(self) -> _Answering:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def not_its_folder(blocking: Path) -> str:
    """What a link or file where a folder of the Drive cache's own goes is."""
    return f"{blocking} is a {kind_of(blocking)} where warmstart's cache keeps a folder of its own"


def folder_refused(blocking: Path) -> str:
    """What a run says of it, and the step that helps."""
    return f"{not_its_folder(blocking)}; move it away and run again"


def record_name(used: dict[str, float]) -> str:
    """A usage record's file name: unique, so two runs never write the same one."""
    return f"{int(max(used.values()))}-{uuid.uuid4().hex[:12]}.json"


def record_text(used: dict[str, float]) -> str:
    return json.dumps({"used": used}, sort_keys=True)


def compact(when: dict[str, float], records: Sequence[PurePath], keep: set[str],
            write: Callable[[dict[str, float]], None], remove: Callable[[PurePath], object]) -> None:
    """Fold the usage records read (`when`: the latest use of each key) into one record, for the
    keys in `keep`, then remove the records read; nothing when there are fewer than two."""
    if len(records) < 2:
        return
    if merged := {key: at for key, at in when.items() if key in keep}:
        write(merged)
    for record in records:
        remove(record)


def parse_record(data: bytes) -> dict[str, float] | None:
    """A usage record's {key: when}; None when it is not one warmstart wrote."""
    try:
        return {str(k): float(at) for k, at in untrusted_json(data, RECORD_MOST)["used"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):  # Unreadable is a ValueError
        return None


def fold_records(records: Iterable[P], read: Callable[[P], bytes | None]) -> tuple[dict[str, float], list[P]]:
    """The latest use of each key in the usage records, as `read` gives their first RECORD_MOST + 1
    bytes (None: gone meanwhile), and the records that are warmstart's. Only those are compacted
    away: any other file there (not one of ours, or damaged) protects nothing, and stays."""
    when: dict[str, float] = {}
    ours = []
    for record in records:
        data = read(record)
        if data is None or (used := parse_record(data)) is None:
            continue
        ours.append(record)
        for key, at in used.items():
            when[key] = max(when.get(key, 0.0), at)
    return when, ours
