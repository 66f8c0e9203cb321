"""The Drive store: every byte warmstart keeps on Drive goes through here.

    <drive>/.warmstart/recipes/             the user's own recipes (read, never written)
    <drive>/.warmstart/v1/wheels/<file>.whl wheels, by their filename (name, version, tags)
    <drive>/.warmstart/v1/assets/<sha256>   recipe assets (model files), by their content
    <drive>/.warmstart/v1/snapshots/        environment archives and the indexes naming them
    <drive>/.warmstart/v1/usage/            which run used which file when (for prune)
    <drive>/.warmstart/v1/placed.json       files warmstart placed in the workdir

Drive may be shared by two VMs at once and a VM may die at any moment, so: a file appears only
whole (a unique temporary name, flushed, renamed); nothing read is used before its sha256 is
checked while it is copied off; a damaged file is renamed aside (kept for inspection, never used
again, never deleted by a run); temporaries a killed run left are removed after an hour. Drive
answers per file slowly, so each folder is listed once per run. A team cache (warmstart.team) may
stand behind it: read where Drive lacks a file, and given every file Drive is. Standard library only:
warmstart.sh fills the wheel folder before any dependency is there.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import IO, TYPE_CHECKING, Any

from . import faults
from .transfer import (
    QUIET,
    AtomicFile,
    Bar,
    Bars,
    atomic_write_text,
    copy_hashed,
    explain,
    read_untrusted_json,
    regular_file,
    sha256_of,
    untrusted_json,
)

if TYPE_CHECKING:
    from .team import ObjectStore

LAYOUT = Path(".warmstart") / "v1"
RECIPES = Path(".warmstart") / "recipes"
KINDS = ("wheels", "assets", "snapshots", "locks")  # locks: made on a VM for its runtime (livelock.py)
USAGE = "usage"
STALE_SECONDS = 3600  # a temporary file this old belongs to a killed run, not a slow one
DAMAGED = ".damaged-"


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    bytes_read: int = 0
    bytes_written: int = 0


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


@dataclass
class DriveStore:
    drive: Path
    stats: CacheStats = field(default_factory=CacheStats)
    bars: Bars = QUIET
    warnings: list[str] = field(default_factory=list)  # Drive writes that failed; the run goes on
    read_only: bool = False  # as a team store a person may only read (see warmstart.team)
    # The team cache behind this one (warmstart.team): read when Drive lacks a file, written with it.
    team: DriveStore | ObjectStore | None = None
    from_team: set[Path] = field(default_factory=set)  # what `get` copied from the team store
    _listings: dict[str, list[str]] = field(default_factory=dict, repr=False)
    _here: dict[str, set[str]] = field(default_factory=dict, repr=False)  # the listings' Drive part

    def __str__(self) -> str:
        return str(self.drive)

    @property
    def root(self) -> Path:
        return self.drive / LAYOUT

    @property
    def recipes(self) -> Path:
        return self.drive / RECIPES

    @property
    def placed_ledger(self) -> Path:
        return self.root / "placed.json"

    def path(self, kind: str, name: str) -> Path:
        return self.root / kind / name

    # -- listing ---------------------------------------------------------------------------

    def where(self, kind: str, name: str) -> str:
        """Where a stored file is, to say so: on Drive, else in the team store."""
        if self.team and not self.on_drive(kind, name):
            return self.team.where(kind, name)
        return str(self.path(kind, name))

    def names(self, kind: str) -> list[str]:
        """The whole regular files of a folder (no temporaries, nothing set aside), with the team
        store's; each listed once."""
        if kind not in self._listings:
            here = self._here[kind] = {e.path.name for e in self.entries(kind) if e.state == "file"}
            self._listings[kind] = sorted(here.union(self.team.names(kind)) if self.team else here)
        return self._listings[kind]

    def relist(self) -> None:
        """Forget the listings: another process (the Drive worker, another VM) wrote since."""
        self._listings.clear()
        self._here.clear()

    def team_only(self, kind: str) -> set[str]:
        """What the listing found in the team store but not on Drive."""
        return set(self.names(kind)) - self._here[kind]

    def on_drive(self, kind: str, name: str) -> bool:
        return regular_file(self.path(kind, name))

    def has(self, kind: str, name: str) -> bool:
        return self.on_drive(kind, name) or bool(self.team and self.team.has(kind, name))

    def size(self, kind: str, name: str) -> int:
        if self.team and not self.on_drive(kind, name):
            return self.team.size(kind, name)
        return self.path(kind, name).stat().st_size

    def sha256(self, entry: StoredFile) -> str:
        return sha256_of(Path(entry.path))

    def entries(self, *kinds: str) -> Iterator[StoredFile]:
        for kind in kinds or KINDS:
            folder = self.root / kind
            for entry in sorted(os.scandir(folder), key=lambda e: e.name) if folder.is_dir() else ():
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed by another VM meanwhile
                # a link, a pipe, a device: never read, never removed
                state = classify(entry.name) if entry.is_file(follow_symlinks=False) else "not a file"
                yield StoredFile(kind, Path(entry.path), info.st_size, info.st_mtime, state)

    # -- reading ---------------------------------------------------------------------------

    def open(self, kind: str, name: str) -> IO[bytes]:
        """A stored file to read once, front to back (a snapshot archive): Drive's, else the team's."""
        if self.team and not self.on_drive(kind, name):
            return self.team.open(kind, name)
        return open(self.path(kind, name), "rb", buffering=0)

    def get(self, kind: str, name: str, dest: Path, sha256s: Collection[str]) -> Path | None:
        """Copy a stored file to local `dest` while hashing it; `dest` when its sha256 is one of
        `sha256s`, else None: unreadable (a warning) or damaged (set aside, a warning). What Drive
        lacks (or holds damaged) comes from the team store, and is noted in `from_team`."""
        got = self._get_here(kind, name, dest, sha256s)
        if got is None and self.team and self.team.get(kind, name, dest, sha256s):
            self.from_team.add(dest)
            return dest
        return got

    def _get_here(self, kind: str, name: str, dest: Path, sha256s: Collection[str]) -> Path | None:
        src = self.path(kind, name)
        if not regular_file(src):
            return None
        try:
            with open(dest, "wb") as out, self.bars.bar(src.stat().st_size, f"from Drive {name[:30]}") as bar:
                sha256, size = copy_hashed(src, out, bar)
        except OSError as exc:
            dest.unlink(missing_ok=True)
            self.warnings.append(f"{src} cannot be read: {explain(exc)}")
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
        """A small JSON file (a snapshot index); ValueError or OSError when it is not one."""
        if self.team and not self.on_drive(kind, name):
            return self.team.read_json(kind, name, limit)
        return read_untrusted_json(self.path(kind, name), limit)

    def describe_reads(self) -> str:
        stats = self.stats
        said = f"{stats.hits} files, {stats.bytes_read / 2**20:.1f} MiB from Drive"
        if self.team and self.team.stats.hits:
            said += f"; {self.team.stats.hits} files, {self.team.stats.bytes_read / 2**20:.1f} MiB from the team cache"
        return said

    # -- writing ---------------------------------------------------------------------------

    def put(self, kind: str, name: str, src: Path, bar: Bar | None = None) -> bool:
        """Copy a local file in, atomically; names are content-addressed, so one that is there
        is the same file (another VM put it first). False, with a warning, when Drive fails.
        `bar`: the progress bar of a larger write to count on (else one of its own). The team
        store gets it too (first: a full Drive must not keep it from the team)."""
        self.share(kind, src, name)
        if self.read_only:
            return False
        dest = self.path(kind, name)
        if regular_file(dest):
            if bar:
                bar.update(src.stat().st_size)
            return True
        try:
            with AtomicFile(dest) as part, self._bar(bar, src.stat().st_size, f"to Drive {name[:30]}") as shown:
                _sha256, size = copy_hashed(src, part.fh, shown)
                faults.point("cache-write")
                part.commit(dest)
        except OSError as exc:
            self.warnings.append(f"{kind[:-1]} {name} not cached on Drive: {explain(exc)}")
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

    def share(self, kind: str, src: Path, name: str | None = None) -> None:
        """Put a local file into the team store only (a file already on Drive, say)."""
        if self.team:
            self.team.put(kind, name or src.name, src)

    def writer(self, kind: str, stem: str) -> AtomicFile:
        """A new file in `kind` named only on commit (snapshot archives, named by their sha256)."""
        return AtomicFile(self.path(kind, stem))

    def put_text(self, kind: str, name: str, text: str) -> None:
        if self.team:
            try:
                self.team.put_text(kind, name, text)
            except OSError as exc:  # a team folder that fails: Drive's copy is what this run needs
                self.warnings.append(f"{kind[:-1]} {name} not written to the team cache: {explain(exc)}")
        if not self.read_only:
            atomic_write_text(self.path(kind, name), text)

    def set_aside_named(self, kind: str, name: str) -> None:
        """Set a damaged file aside where it is: on Drive, or in the team store."""
        if self.on_drive(kind, name):
            if not self.read_only:
                self.set_aside(self.path(kind, name))
        elif self.team and self.team.has(kind, name):
            self.team.set_aside_named(kind, name)

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
        now, keys = time.time() if now is None else now, list(keys)
        if self.team:
            self.team.record_use(keys, now)
        try:
            if (names := sorted(set(keys))) and not self.read_only:
                self._write_record(dict.fromkeys(names, now))
        except OSError:
            pass  # a record only protects files from pruning; the next run writes another

    def _write_record(self, used: dict[str, float]) -> None:
        atomic_write_text(self.path(USAGE, record_name(used)), record_text(used))

    def last_used(self) -> tuple[dict[str, float], Sequence[PurePath]]:
        """When a run last used each store file (by key), and the record files that say so."""
        folder = self.root / USAGE
        when: dict[str, float] = {}
        records = sorted(p for p in folder.glob("*.json") if regular_file(p)) if folder.is_dir() else []
        for record in records:
            try:
                used = parse_record(record.read_bytes())
            except OSError:
                continue
            for key, at in (used or {}).items():  # None: not one of ours, or damaged: it protects nothing
                when[key] = max(when.get(key, 0.0), at)
        return when, records

    def compact_usage(self, when: dict[str, float], records: Sequence[PurePath], keep: set[str]) -> None:
        """Fold the records read into one, for the files still there, then remove those read (a
        record another run writes meanwhile is a new file, and stays)."""
        compact(when, records, keep, self._write_record, lambda record: Path(record).unlink(missing_ok=True))


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
        return {str(k): float(at) for k, at in untrusted_json(data, 1 << 20)["used"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):  # Unreadable is a ValueError
        return None
