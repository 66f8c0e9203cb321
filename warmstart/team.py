"""The team cache: one store that many VMs and people share, behind each VM's Drive cache.

`--cache URL` (or WARMSTART_CACHE) names it: an object store through fsspec (`s3://bucket/prefix`
with the `s3` extra, `gs://bucket/prefix` with the `gcs` extra, any fsspec URL with its package),
or a folder (a Google shared drive, say), which is laid out and written like the Drive store.

    <url>/v1/wheels/<file>.whl    <url>/v1/assets/<sha256>    <url>/v1/snapshots/    <url>/v1/usage/

The semantics are the Drive store's: names are content-addressed, every read is checked against
the sha256 the lock, the recipe or a snapshot index gives, a damaged object is renamed aside.
An object store has no rename, so atomicity comes from the store itself: a PUT (a multipart
upload too) becomes visible whole or not at all, and a snapshot index is put after its archive.
A file system of fsspec's (ftp://, sftp://) shows a file as it is written: there each is
written under a temporary name and renamed, as on Drive.

The team store is a courtesy, never a dependency: credentials come from the backends' own
chains (AWS environment, profile or instance role; Google application default credentials,
which `google.colab.auth.authenticate_user()` sets up) and are never printed; the first failure
(down, refused, timed out) is one warning, and the run goes on from Drive and the index without
asking the team store again.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import re
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import aclosing, contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePath, PurePosixPath
from typing import Any, TypeVar

from . import extras
from .background import started, within
from .console import QUIET, Bars
from .disks import kind_of, no_room, real
from .errors import BadInput, PreconditionUnmet, redact
from .layout import LAYOUT
from .settings import CACHE, OBJECT_STORES, STORE_SHAPES, looked_in_time, team_timeout, user_path
from .store import (
    KINDS,
    RECORD_MOST,
    USAGE,
    CacheStats,
    DriveStore,
    StoredFile,
    aside_name,
    classify,
    compact,
    fold_records,
    record_name,
    record_text,
    unread_because,
    went_down,
)
from .target import TargetPython
from .transfer import BlockStream, Stream, WriteFailed, copy_hashed, sha256_of, untrusted_json

# the extra that brings a protocol's implementation (settings.OBJECT_STORES), and the module that is
MODULES = {"s3": "s3fs", "gcs": "gcsfs"}
# Short timeouts and few retries on S3: a store that does not answer costs seconds, not minutes.
_S3_OPTIONS = {"config_kwargs": {"connect_timeout": 5, "read_timeout": 15, "retries": {"max_attempts": 2}}}
# A stored object read front to back (a snapshot archive) comes in ranged GETs of RANGE bytes,
# IN_FLIGHT under way at once: a remote store's wait for its first byte overlaps the GET before.
# fsspec's read-ahead file keeps each block twice (its cache, and the slice it hands on): with
# its 32 MiB blocks hyperlpr's restore from the team cache alone (SeaweedFS on 127.0.0.1) peaked
# at 274 to 287 MiB. 4 MiB blocks pass to the restore's read-ahead whole (8 MiB ones were cut in
# two copies): against 8 MiB GETs one at a time, it peaked at 179 to 183 MiB instead of 190 to
# 198, in 3.45 to 4.39 s against 3.18 to 4.80 s (3 alternated rounds). Reading the 222 MiB alone,
# each GET 30 ms late (a proxy): 1.67 to 1.73 s against 1.82 to 1.95 s; one 4 MiB GET at a time
# took 2.80 to 2.86 s, two of 8 MiB 1.25 to 1.32 s for 17 MiB more memory.
RANGE = 4 << 20
IN_FLIGHT = 2
T = TypeVar("T")
# A folder's listing reads at most LISTED_MOST objects: a real cache holds hundreds, a shared bucket
# may hold anything, and fsspec's ls reads a folder whole into memory (about 1 KiB an object), page
# after page, on a thread that goes on listing after the run gave the store up (team_timeout).
LISTED_MOST = 20_000
# An upload is one call that answers only once the object is whole: a 900 MB wheel is not the
# 20 s answer team_timeout waits for. It has that, and the time its size takes at this pace;
# a store slower than that is taken for one that stopped answering.
UPLOAD_PACE = 1 << 20  # bytes a second


class _Bounded:
    """A file system (fsspec) whose every call, and every read and write of the files it opens,
    answers within `seconds` or raises TimeoutError."""

    def __init__(self, target: Any, seconds: float) -> None:
        self.wrapped, self._seconds = target, seconds

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.wrapped, name)
        if not callable(attribute):
            return attribute

        def bounded(*args: Any, **kwargs: Any) -> Any:
            result = within(self._seconds, lambda: attribute(*args, **kwargs))
            return _Bounded(result, self._seconds) if name == "open" else result

        return bounded

    def bounded(self, call: Callable[[Any], T], more: float = 0.0) -> T:
        """call(the file system itself), bounded as its methods are, `more` seconds beside."""
        return within(self._seconds + more, lambda: call(self.wrapped))

    def __enter__(self) -> _Bounded:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ls_at_most(fs: Any, path: str, most: int) -> list[dict[str, Any]]:
    """fs.ls(path, detail=True, refresh=True), ended after `most` + 1 entries where the backend
    lists page by page (s3fs: the pages after are never asked for). Other backends (gcsfs, an
    fsspec folder) list whole, bounded in time only: their ls takes no limit."""
    if "s3" not in ([fs.protocol] if isinstance(fs.protocol, str) else fs.protocol):
        return list(fs.ls(path, detail=True, refresh=True))
    from fsspec.asyn import sync

    bucket, key, _ = fs.split_path(path)

    async def first() -> list[dict[str, Any]]:
        found = []
        async with aclosing(fs._iterdir(bucket, prefix=f"{key}/")) as listing:
            async for info in listing:
                found.append(info)
                if len(found) > most:
                    break
        return found

    return sync(fs.loop, first)


def is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def open_team(location: str, *, drive: Path, read_only: bool, bars: Bars = QUIET,
              warnings: list[str] | None = None, borrow: Sequence[str] = ()) -> ObjectStore | DriveStore | None:
    """The team store a `--cache` value names (None: it is the Drive folder itself);
    PreconditionUnmet when its backend is not installed."""
    warnings = warnings if warnings is not None else []
    if is_url(location):
        return ObjectStore(location, read_only=read_only, bars=bars, warnings=warnings, borrow=borrow)
    folder = user_path(location.removeprefix("file://"), f"--cache (or {CACHE.name})")
    store = DriveStore(folder, CacheStats(), bars, warnings, read_only=read_only, timeout=team_timeout())
    if not looked_in_time((folder,), store.timeout):  # before real() and is_dir(), which would wait for ever
        why = f"the team cache {folder} does not answer: a look at it waited {store.timeout:g} s"
        went_down(store, why, f"{why}; going on with Drive and the package index")
        return store
    resolved, drives = real(folder), real(drive)
    if resolved == drives:
        return None
    if resolved.is_relative_to(own := drives / LAYOUT.parent):  # its files would be Drive's, twice over
        raise BadInput(f"--cache (or {CACHE.name}) {folder} lies in the Drive cache's own folder {own}: a team "
                       f"cache is a folder the team shares beside it; leave --cache out for Drive's cache alone")
    if not folder.is_dir():
        what = (f"is a {kind_of(folder)}, not a folder; name a folder with" if os.path.lexists(folder)
                else "does not exist; create it, or fix")
        raise PreconditionUnmet(f"the team cache folder {folder} {what} --cache (or WARMSTART_CACHE)")
    return store


def backend_found(location: str, borrow: Sequence[str] = ()) -> bool:
    """Whether `location` is an object store whose backend (s3fs, gcsfs: their import is what
    costs) can be found without importing it; False for a folder, and for any other URL, which
    only opening tells about."""
    module = MODULES.get(OBJECT_STORES.get(location.split("://", 1)[0], "")) if is_url(location) else None
    return bool(module and importlib.machinery.PathFinder.find_spec(module, [*sys.path, *borrow]))


def borrowable(target: TargetPython) -> tuple[str, ...]:
    """The target's import path, when its Python is this one's: a backend the notebook has (Colab
    ships gcsfs) serves warmstart's own interpreter too, which looks there last."""
    same = (target.version.major, target.version.minor) == sys.version_info[:2]
    return tuple(p for p in target.path if p.endswith(("site-packages", "dist-packages"))) if same else ()


def _filesystem(url: str, borrow: Sequence[str] = ()) -> tuple[Any, str]:
    protocol = url.split("://", 1)[0]
    extra = OBJECT_STORES.get(protocol)
    options = _S3_OPTIONS if extra == "s3" else {}

    try:
        from fsspec.core import url_to_fs

        return url_to_fs(url, **options)
    except ImportError as exc:
        if missing := [p for p in borrow if p not in sys.path]:
            sys.path.extend(missing)  # after warmstart's own: they win where both have a package
            importlib.invalidate_caches()
            return _filesystem(url)
        if extra:
            how = extras.install_command(extra)
        elif exc.name == "fsspec":
            how = (f"fsspec, which names the package for {protocol}://, is not installed: "
                   f"{extras.pip_install_command(['fsspec'])}")
        else:
            packages = _packages_named(exc)
            how = f"{exc}: {extras.pip_install_command(packages)}" if packages else str(exc)
        raise PreconditionUnmet(f"the team cache {redact(url)} needs the {extra or protocol} backend: {how}") from None
    except ValueError as exc:  # a protocol no fsspec package implements
        raise PreconditionUnmet(f"the team cache {redact(url)} cannot be used: {exc}; {STORE_SHAPES}") from None


def _packages_named(missing: ImportError) -> list[str]:
    """The packages an fsspec protocol's ImportError names, in fsspec's words ('SFTPFileSystem
    requires "paramiko" to be installed', 'Install webdav4 to access WebDAV') or Python's (No
    module named 'pyarrow'); none where they name none."""
    said = str(missing)
    if quoted := re.findall(r'"([\w.\[\]-]+)"', said):
        return quoted
    if after := re.search(r"\binstall (?:the )?'?([\w.\[\]-]+)", said, re.IGNORECASE):
        return [after.group(1)]
    return [missing.name.split(".")[0]] if missing.name else []


class TeamUnavailable(PreconditionUnmet):
    """`invoke cache` on a team store that stopped answering, or refused, midway (exit 3)."""


@dataclass
class ObjectStore:
    """The team store on object storage: the part of the Drive store's interface a run uses."""

    url: str
    read_only: bool = False
    stats: CacheStats = field(default_factory=CacheStats)
    bars: Bars = QUIET
    warnings: list[str] = field(default_factory=list)
    down: str | None = None  # why it stopped being asked: one warning, then Drive and the index
    down_said: str | None = None  # that warning (went_down)
    refused: bool = False  # a write was refused: reads go on, writes stop
    unlisted: str | None = None  # why a folder's listing was not read (it lists more than a cache holds)
    borrow: Sequence[str] = ()  # where else its backend may be found (see borrowable)
    _listings: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        try:
            # Bounded too: some backends connect as they are made (ftp, sftp), and may not answer.
            fs, path = within(team_timeout(), lambda: _filesystem(self.url, self.borrow))
        except PreconditionUnmet:  # its backend is not installed, or no fsspec protocol is named
            raise
        except Exception as exc:  # it cannot be reached: as for a listing that failed, the run goes on
            fs, path = None, self.url.split("://", 1)[-1]
            self._failed("connecting", exc)
        self.fs = _Bounded(fs, team_timeout())
        self.base = PurePosixPath(path) / "v1"

    def __str__(self) -> str:
        return redact(self.url)

    def key(self, kind: str, name: str) -> str:
        return str(self.base / kind / name)

    def where(self, kind: str, name: str) -> str:
        return f"{self}/v1/{kind}/{name}"

    def unread(self) -> str | None:
        return unread_because(self.unlisted, self.down and f"{self.down}; run the command again when it answers")

    def _why(self, exc: BaseException) -> str:
        """A backend's error in one line, without the URL's credentials."""
        why = redact(" ".join(f"{type(exc).__name__}: {exc}".split()))
        if userinfo := self.url.split("://", 1)[-1].split("/", 1)[0].rpartition("@")[0]:
            why = why.replace(userinfo, "***")  # a backend may quote the whole bucket name back
        return why[:300]

    def _failed(self, doing: str, exc: BaseException, *, write: bool = False) -> None:
        """The first failure ends the team store's part in this run (every later call would wait
        on the same timeout); a write refused ends only the writes."""
        why = self._why(exc)
        if write and isinstance(exc, PermissionError):
            if not self.refused:
                self.warnings.append(f"the team cache {self} refused a write ({why}); this run writes no more "
                                     "to it (use --cache-read-only if you may only read it)")
            self.refused = True
            return
        went_down(self, why, f"the team cache {self} cannot be used ({doing}: {why}); going on with "
                             "Drive and the package index")

    @property
    def writable(self) -> bool:
        return not (self.read_only or self.refused or self.down)

    @contextmanager
    def _maintaining(self, doing: str) -> Iterator[None]:
        """For `invoke cache`, which has no Drive or index to go on with: a backend failure stops
        the command with one line. FileNotFoundError passes: another VM removed the object."""
        try:
            yield
        except (FileNotFoundError, TeamUnavailable):
            raise
        except Exception as exc:
            if isinstance(exc, PermissionError):
                raise TeamUnavailable(f"the team cache {self} refused {doing} ({self._why(exc)}); "
                                      "this needs credentials that may write to it") from None
            raise TeamUnavailable(f"the team cache {self} stopped answering while {doing} ({self._why(exc)}); "
                                  "what was done before stands: run the command again when it answers") from None

    # -- listing ---------------------------------------------------------------------------

    def _listing(self, kind: str) -> dict[str, dict[str, Any]]:
        if kind not in self._listings:
            found: dict[str, dict[str, Any]] = {}
            if not self.down:
                try:
                    listed = self.fs.bounded(partial(ls_at_most, path=str(self.base / kind), most=LISTED_MOST))
                    if len(listed) > LISTED_MOST:  # filled by someone else: none of it is read
                        self._crowded(kind)
                        listed = []
                    for info in listed:
                        if info.get("type") == "file":
                            found[PurePosixPath(info["name"]).name] = info
                except FileNotFoundError:
                    pass  # nothing put there yet
                except Exception as exc:  # any backend error (botocore, aiohttp, ...): the run goes on
                    self._failed(f"listing {kind}", exc)
            self._listings[kind] = found
        return self._listings[kind]

    def _crowded(self, kind: str) -> None:
        """One warning (the first folder that lists too much), as for a Drive cache folder; the
        other folders are still read (a snapshot, say)."""
        if not self.unlisted:
            self.unlisted = f"{self}/v1/{kind} lists more objects than a cache holds (over {LISTED_MOST:,})"
            self.warnings.append(f"{self.unlisted}: this run takes nothing from there; remove what does not "
                                 "belong there")

    def names(self, kind: str) -> list[str]:
        return sorted(name for name in self._listing(kind) if classify(name) == "file")

    def has(self, kind: str, name: str) -> bool:
        return name in self._listing(kind) and classify(name) == "file"

    def size(self, kind: str, name: str) -> int:
        return int(self._listing(kind)[name].get("size") or 0)

    def entries(self, *kinds: str) -> Iterator[StoredFile]:
        for kind in kinds or KINDS:
            for name, info in sorted(self._listing(kind).items()):
                yield StoredFile(kind, PurePosixPath(info["name"]), int(info.get("size") or 0),
                                 _mtime(info), classify(name))

    # -- reading ---------------------------------------------------------------------------

    def patience(self) -> None:
        """None: every call to the backend, each read of a stream too, is bounded already (_Bounded)."""
        return None

    def open(self, kind: str, name: str) -> Stream:
        """A stream of a stored object (the snapshot restore reads it once, front to back). Any
        failure, opening or reading, is an OSError, and ends the team store's part in the run."""
        try:  # its size as listed (no HEAD for each object); asked only of one not listed
            size = self.size(kind, name) if name in self._listing(kind) else int(self.fs.size(self.key(kind, name)))
        except Exception as exc:
            raise self._unreadable(kind, name, exc) from None
        return _Ranged(lambda start, length: self._range(kind, name, start, length), size)

    @contextmanager
    def ranges(self, kind: str, name: str) -> Iterator[Callable[[int, int], bytes]]:
        """`read_at(start, length)` of a stored object: one ranged GET each, within the timeout."""
        yield lambda start, length: self._range(kind, name, start, length)

    def _range(self, kind: str, name: str, start: int, length: int) -> bytes:
        try:
            data: bytes = self.fs.cat_file(self.key(kind, name), start=start, end=start + length)
        except Exception as exc:
            raise self._unreadable(kind, name, exc) from None
        return data

    def _unreadable(self, kind: str, name: str, exc: BaseException) -> OSError:
        if isinstance(exc, FileNotFoundError):  # another VM pruned it since the listing: a miss
            self._listing(kind).pop(name, None)
            return exc
        self._failed(f"reading {kind}/{name}", exc)
        return exc if isinstance(exc, OSError) else OSError(f"the team cache stopped answering: {self.down}")

    def get(self, kind: str, name: str, dest: Path, sha256s: Collection[str]) -> Path | None:
        """Download an object to local `dest`, hashing it; `dest` when its sha256 is one of
        `sha256s`, else None (damaged: set aside; unreadable: the team store is down; larger than
        the local disk has room for: a warning). WriteFailed when the local disk fails the copy."""
        if self.down or not self.has(kind, name):
            return None
        if too_large := no_room(listed := self.size(kind, name), dest.parent):
            self.warnings.append(f"{self.where(kind, name)} not copied: it is {too_large}")
            return None
        try:
            with self.open(kind, name) as src, open(dest, "wb") as out, \
                    self.bars.bar(listed, f"from team {name[:30]}") as bar:
                sha256, size = copy_hashed(src, out, bar, limit=listed)
        except WriteFailed:  # the local disk's fault (full), not the team store's: the run cannot go on
            dest.unlink(missing_ok=True)
            raise
        except Exception as exc:
            dest.unlink(missing_ok=True)
            if not isinstance(exc, FileNotFoundError):  # that one is a miss (see _unreadable)
                self._failed(f"reading {kind}/{name}", exc)
            return None
        self.stats.bytes_read += size
        if sha256 not in sha256s:
            dest.unlink()
            self.warnings.append(f"{self.where(kind, name)} does not match its sha256 (damaged); "
                                 + self._set_aside_note(kind, name))
            return None
        self.stats.hits += 1
        return dest

    def read_json(self, kind: str, name: str, limit: int = 1 << 20) -> Any:
        if not self.has(kind, name) or self.size(kind, name) > limit:
            raise ValueError(f"{self.where(kind, name)} is not a small object")
        try:  # no more than `limit` + 1 bytes, though another VM may have put a larger one since the listing
            data = self.fs.cat_file(self.key(kind, name), start=0, end=limit + 1)
        except FileNotFoundError:
            raise
        except Exception as exc:
            self._failed(f"reading {kind}/{name}", exc)
            raise OSError(f"the team cache cannot be read: {self.down}") from None
        return untrusted_json(data, limit)

    def sha256(self, entry: StoredFile) -> str:
        with self._maintaining(f"reading {entry.kind}/{entry.path.name}"), \
                self.open(entry.kind, entry.path.name) as src:
            return sha256_of(src)

    # -- writing ---------------------------------------------------------------------------

    def put(self, kind: str, name: str, src: Path, bar: Any = None) -> bool:
        """Upload a local file unless the store has it (content-addressed: the same file). Never
        in read-only mode; False, with one warning, when the store refuses or is down."""
        if not self.writable:
            return False
        if self.has(kind, name):
            return True
        size = src.stat().st_size
        try:
            self._write(self.key(kind, name), size, lambda fs, to: fs.put_file(str(src), to))
        except Exception as exc:
            self._failed(f"writing {kind}/{name}", exc, write=True)
            return False
        self.stats.bytes_written += size
        self._listings.pop(kind, None)
        return True

    def put_text(self, kind: str, name: str, text: str) -> None:
        if not self.writable:
            return
        try:
            self._pipe(self.key(kind, name), text.encode())
        except Exception as exc:
            self._failed(f"writing {kind}/{name}", exc, write=True)
        self._listings.pop(kind, None)

    def _pipe(self, key: str, data: bytes) -> None:
        self._write(key, len(data), lambda fs, to: fs.pipe_file(to, data))

    def _write(self, key: str, size: int, write: Callable[[Any, str], object]) -> None:
        """`write(fs, key)`, given the time `size` bytes take at UPLOAD_PACE. An object store
        shows an upload whole or not at all; a file system (ftp://, sftp://, ...) shows a file
        as it is written, and has folders: there it is written under a temporary name (listed as
        one: store.classify), in its folder made first, and renamed."""
        more = size / UPLOAD_PACE
        if self.url.split("://", 1)[0] in OBJECT_STORES:
            self.fs.bounded(lambda fs: write(fs, key), more)
            return
        folder, _, name = key.rpartition("/")
        temporary = f"{folder}/.{name}.{uuid.uuid4().hex}.part"
        self.fs.makedirs(folder, exist_ok=True)
        try:
            self.fs.bounded(lambda fs: write(fs, temporary), more)
            self.fs.mv(temporary, key)
        except TimeoutError:
            raise  # unanswered, the write may go on: its temporary is `cache --prune`'s once an hour old
        except Exception:
            with suppress(Exception):  # refused midway (a quota, a rename not allowed): none of it is kept
                self.fs.rm(temporary)
            raise

    def _set_aside_note(self, kind: str, name: str) -> str:
        if not self.writable:
            return "left in place (this run may not write to the team cache)"
        try:
            return f"set aside as {self._move_aside(PurePosixPath(self.key(kind, name))).name}"
        except Exception as exc:
            self._failed(f"setting {kind}/{name} aside", exc, write=True)
            return "could not be set aside"

    def set_aside_named(self, kind: str, name: str) -> None:
        if self.writable:
            try:
                self._move_aside(PurePosixPath(self.key(kind, name)))
            except Exception as exc:
                self._failed(f"setting {kind}/{name} aside", exc, write=True)

    def set_aside(self, path: PurePath) -> PurePosixPath:
        with self._maintaining(f"setting {PurePath(path).name} aside"):
            return self._move_aside(path)

    def _move_aside(self, path: PurePath) -> PurePosixPath:
        """Copy a damaged object to a name no run reads, then remove it (no rename on S3)."""
        path = PurePosixPath(path)
        aside = path.with_name(aside_name(path.name))
        self.fs.mv(str(path), str(aside))
        self._listings.clear()
        return aside

    def remove(self, entries: Iterable[StoredFile]) -> int:
        freed = 0
        for entry in entries:
            if self._delete(entry.path, f"removing {entry.kind}/{entry.path.name}"):
                freed += entry.size
        self._listings.clear()
        return freed

    def _delete(self, path: PurePath, doing: str) -> bool:
        """Remove an object for `invoke cache`; False when another VM removed it first."""
        try:
            with self._maintaining(doing):
                self.fs.rm_file(str(path))
        except FileNotFoundError:
            return False
        return True

    def clean_stale_parts(self, now: float | None = None) -> list[Path]:
        # an object store keeps no temporaries (an upload shows whole or not at all); a file system's
        # left by a killed run go with `invoke cache --prune`, once an hour old
        return []

    # -- usage records (as the Drive store's) -----------------------------------------------

    def record_use(self, keys: Iterable[str], now: float | None = None) -> None:
        now = time.time() if now is None else now
        if names := sorted(set(keys)):
            used = dict.fromkeys(names, now)
            self.put_text(USAGE, record_name(used), record_text(used))

    def last_used(self) -> tuple[dict[str, float], Sequence[PurePath]]:
        def read(record: PurePosixPath) -> bytes | None:
            try:
                with self._maintaining("reading the usage records"):
                    data: bytes = self.fs.cat_file(str(record), start=0, end=RECORD_MOST + 1)
                    return data
            except FileNotFoundError:
                return None  # another VM compacted it

        return fold_records(sorted(PurePosixPath(info["name"]) for info in self._listing(USAGE).values()), read)

    def compact_usage(self, when: dict[str, float], records: Sequence[PurePath], keep: set[str]) -> None:
        def write(used: dict[str, float]) -> None:
            with self._maintaining("writing the usage record"):
                self._pipe(self.key(USAGE, record_name(used)), record_text(used).encode())

        compact(when, records, keep, write, lambda record: self._delete(record, "removing old usage records"))
        self._listings.pop(USAGE, None)


def _mtime(info: dict[str, Any]) -> float:
    """An object's time as a listing gives it (S3: a datetime; GCS: an ISO string; FTP's MLSD:
    YYYYMMDDHHMMSS, in UTC; SFTP: seconds). Now where it gives none that reads: `cache --prune`
    takes an older time for idle, and a temporary file for a killed run's."""
    from datetime import datetime, timezone

    stamp = info.get("LastModified") or info.get("mtime") or info.get("updated") or info.get("modify")
    if isinstance(stamp, str):
        try:
            if re.fullmatch(r"\d{14}(\.\d+)?", stamp):
                stamp = datetime.strptime(stamp[:14], "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)
            else:
                stamp = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        except ValueError:
            stamp = None
    if isinstance(stamp, datetime):
        return stamp.timestamp()
    return float(stamp) if isinstance(stamp, (int, float)) and stamp > 0 else time.time()


class _Ranged(BlockStream):
    """A stored object of `size` bytes as a stream, read front to back in RANGE-byte GETs
    (`read_at`, whose errors are OSErrors already), IN_FLIGHT at once."""

    def __init__(self, read_at: Callable[[int, int], bytes], size: int) -> None:
        self._read_at, self._size = read_at, size
        self._next = 0  # where the next GET begins
        self._asked: deque[tuple[int, int, Future[bytes]]] = deque()  # (start, length, its GET), in order

    def _ask(self) -> None:
        while len(self._asked) < IN_FLIGHT and self._next < self._size:
            start, length = self._next, min(RANGE, self._size - self._next)
            self._asked.append((start, length, started(partial(self._read_at, start, length))))
            self._next += length

    def _next_block(self) -> bytes | None:
        self._ask()
        if not self._asked:
            return None
        start, length, get = self._asked.popleft()
        block = get.result()
        if len(block) < length:
            raise OSError(f"it ended at {start + len(block)} of the {self._size} bytes it had when opened")
        if len(block) > length:  # the whole object, say: a server that ignores Range
            raise OSError(f"it answered a GET of {length} bytes at {start} with {len(block)}")
        self._ask()  # the next GET begins before this block is handed on
        return block

    def close(self) -> None:
        """What is read is let go; a GET under way ends on its own thread (within the timeout)."""
        self._block, self._asked = b"", deque()

    def __enter__(self) -> _Ranged:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
