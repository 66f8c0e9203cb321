"""Environment snapshots: everything a lock installed, as one zstd-compressed tar on Drive.

Drive reads one large file well and many small ones badly, and a restore that only unpacks
files costs about what copying their bytes costs. After a successful install, the files each
locked distribution lists in its RECORD (its metadata included) are packed, relative to the
target's prefix, into the store's `snapshots/<recipe>-<pyXY>-<key>-<sha>.tar.zst`,
with an index `<recipe>-<pyXY>-<key>.json` (written last) that names the archive, records its
sha256 and what it was made for. The key covers everything that makes the files valid: the lock's
body (its pins and their hashes; not its header's comments), the distributions it holds, the
Python minor version and ABI (not the patch release), the platform, the target's prefix
(shebangs name it), the format.

A restore reads the archive once, unpacking its files into a staging folder as it comes (each
file hashed from the bytes written: warmstart.unpack); only when every file traces back to the
lock are the distributions the lock replaces removed (by pip or uv, by their RECORD) and the
staged files moved into place. That check is what trusts a snapshot: the archive's own sha256
(in its index, which whoever can rewrite the archive can rewrite too) is checked only where
the archive is copied to Drive, or read from several stores part by part (warmstart.parts).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Protocol

from packaging.utils import NormalizedName

from . import early, faults, manifest, parts
from .console import QUIET, Bars, printable
from .disks import no_room
from .errors import PreconditionUnmet, WarmstartError, interrupts_held
from .headstart import recorded_seconds, staging_folder
from .layout import snapshot_names
from .lock import Lock, Pin
from .patches import Patch
from .readahead import Cancelled, ReadAhead, Undecodable
from .store import Store
from .target import TargetPython, installed_files
from .tiered import TieredStore
from .transfer import Stream, WriteFailed, is_sha256, zstd_open
from .unpack import Damaged, Unpacker

KIND = "snapshots"
# Archives match across a 32 MiB window (zstd long-distance matching): on hyperlpr 246 MiB
# instead of 277 for 0.8 s more of the writer's CPU, decoded as fast, in 32 MiB more memory
# (a 128 MiB window saves 0.3 MiB more for 100 MiB more). A restore refuses a larger window.
WINDOW_LOG = 25
# Every restore reads what the level saves, once per wiped VM; the writer pays once per lock, in
# the background. On hyperlpr (687 MB of tar, 2 CPUs; each level decodes in 0.9-1.0 s): level 3
# 244 MiB for 4.0 s of CPU, 7: 227 MiB, 10.5 s, 9: 221 MiB, 12.6 s (107 MiB of memory), 12:
# 210 MiB, 24.8 s. At Drive's 60 MiB/s level 9 saves each restore 0.4 s for 8.6 s of the
# writer's CPU at low priority; 12 would save 0.2 s more for twice the writer's time. Past 12
# the writer's time grows faster than what it saves (zstd's CLI, one thread, 3 December): level 9
# 226 MiB in 22 s, 12: 215 MiB, 56 s, 15: 214 MiB, 159 s, 19: 196 MiB in 521 s and 400 MB, its
# archive decoded in 1.37 s against level 9's 1.00 (on Colab's 2 CPUs the first VM's snapshot
# would take minutes more to be safe on Drive).
LEVEL = 9

SNAPSHOT_FORMAT = "warmstart-snapshot-v1"


class SnapshotUnusable(WarmstartError):
    """The snapshot cannot be used; the message says why, and the wheels take over."""


class Reader(Protocol):
    def seconds_left(self) -> float | None: ...
    def stop(self) -> None: ...


class Watch:
    """What a race against the restore (warmstart.race) sees of it, and how it steers it: the
    archive's size and the time its read has left, at the pace of its source(s) so far;
    `hold(seconds)` pauses the reading that long (or until `resume()`), so a rival far ahead
    has the CPUs to itself; `cancel()` ends the restore with Cancelled, its staging folder
    removed."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.watching = threading.Event()  # set once the read is known (`watch`): a race looks at once
        self.began = time.monotonic()
        self.size: int | None = None  # the archive's, once its index is read
        self.index_took: float | None = None  # the index's time, when the snapshot's index records it
        self._readers: list[Reader] = []
        self._held_until = 0.0

    def hold(self, seconds: float) -> None:
        self._held_until = time.monotonic() + seconds

    def resume(self) -> None:
        self._held_until = 0.0

    def held(self) -> bool:
        """Whether the sources wait before their next read (each asks before each read)."""
        return time.monotonic() < self._held_until and not self.cancelled.is_set()

    def seconds_left(self) -> float | None:
        reading = self._readers[0] if self._readers else None
        return reading.seconds_left() if reading is not None else None

    def watch(self, size: int, *readers: Reader, index_took: float | None = None) -> None:
        self.size, self._readers = size, list(readers)  # the archive's reader first
        self.index_took = index_took
        self.watching.set()
        if self.cancelled.is_set():
            self.cancel()

    def cancel(self) -> None:
        self.cancelled.set()
        for reader in self._readers:
            reader.stop()


def snapshot_facts(lock: Lock, target: TargetPython, pins: tuple[Pin, ...]) -> dict[str, str]:
    return {
        "format": SNAPSHOT_FORMAT,
        # its pins and their hashes, not its header: a lock made again with the same pins keeps its snapshots
        "lock_body_sha256": lock.body_sha256,
        # What it holds: on a platform image only what the image lacks, so the set is part of the key.
        "distributions": ",".join(sorted(f"{p.name}=={p.version}" for p in pins)),
        # The minor version alone: a patch release keeps the bytecode's magic number and the ABI
        # (soabi, below), and a snapshot holds no bytecode, so Colab's next patch of its Python
        # restores the snapshot its last one packed.
        "python": f"{target.version.major}.{target.version.minor}",
        "soabi": target.soabi,
        "platform": target.platform,
        "prefix": str(target.prefix),
    }


def snapshot_key(facts: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Snapshot:
    """`<stem>.json` in the store names the archive it describes. Archives are named by their own
    sha256, so two VMs packing at once write two whole archives, and each index names its own."""

    stem: str
    facts: dict[str, str]

    @classmethod
    def locate(cls, recipe: str, lock: Lock, target: TargetPython, pins: tuple[Pin, ...]) -> Snapshot:
        facts = snapshot_facts(lock, target, pins)
        return cls(f"{recipe}-{target.tag}-{snapshot_key(facts)[:16]}", facts)

    @property
    def index_name(self) -> str:
        return f"{self.stem}.json"

    def read_index(self, store: TieredStore) -> dict[str, Any]:
        try:
            where = store.where(KIND, self.index_name)  # read ahead with the archive (warmstart.early)?
            index = early.index(where) or store.read_json(KIND, self.index_name)
        except (OSError, ValueError) as exc:
            raise SnapshotUnusable(f"snapshot index {self.index_name} is unreadable ({exc})") from None
        if not (isinstance(index.get("facts"), dict) and isinstance(index.get("archive"), str)
                and is_sha256(index.get("sha256"))
                and all(isinstance(index.get(k), int) and index[k] >= 0 for k in ("size", "tar_bytes"))
                and ("parts" not in index or parts.valid(index))):
            raise SnapshotUnusable(f"snapshot index {self.index_name} is not one warmstart wrote")
        if differs := self.differs_from(index["facts"]):
            recorded = ", ".join(f"{k} {index['facts'].get(k)!r}" for k in differs)
            raise SnapshotUnusable(f"snapshot {self.index_name} was made for another target ({recorded})")
        return index

    def differs_from(self, facts: dict[str, Any]) -> list[str]:
        """The keys of this snapshot's facts that another index's `facts` give otherwise."""
        return [key for key, ours in self.facts.items() if facts.get(key) != ours]

    def set_aside(self, store: TieredStore, index: dict[str, Any]) -> None:
        """Keep a damaged snapshot for inspection, out of the way of the next one."""
        for name in (self.index_name, _archive_name(index)):
            if store.has(KIND, name):
                store.set_aside_named(KIND, name)


# What a snapshot packed for another target was packed for, as status says it (the lock and the
# format said without their values: a digest and a list of every pin tell a user nothing).
_PACKED_FOR = {"python": "Python {}", "soabi": "ABI {}", "platform": "platform {}", "prefix": "prefix {}",
               "lock_body_sha256": "another lock", "distributions": "other packages", "format": "another format"}
OTHERS_READ = 3  # indexes of other targets status reads at most: each is a Drive round trip


def packed_for_others(store: TieredStore, recipe: str, wanted: Snapshot) -> list[dict[str, str]]:
    """Drive's snapshots of `recipe` for targets other than `wanted`'s, each with what it was
    packed for (`index`, `for`): why a wiped VM here would not restore one. Their indexes are read
    as any from Drive is (bounded, capped); one that cannot be read, or differs in nothing, is
    passed over."""
    named = snapshot_names(recipe, index=True)
    others = [name for name in store.here.names(KIND)
              if name.endswith(".json") and named.fullmatch(name) and name != wanted.index_name]
    found = []
    for name in others[:OTHERS_READ]:
        try:
            index = store.here.read_json(KIND, name)
        except (OSError, ValueError):
            continue
        theirs = index.get("facts") if isinstance(index, dict) else None
        if not isinstance(theirs, dict):
            continue
        differs = set(wanted.differs_from(theirs))
        # the ABI goes with the version, the pins with the lock
        differs -= {"soabi"} if "python" in differs else set()
        differs -= {"distributions"} if "lock_body_sha256" in differs else set()
        if said := [_PACKED_FOR[key].format(printable(str(theirs.get(key))[:200]))
                    for key in _PACKED_FOR if key in differs]:
            found.append({"index": name, "for": ", ".join(said)})
    return found


def _archive_name(index: dict[str, Any]) -> str:
    return Path(str(index.get("archive", "missing"))).name


class _Counting:
    """A write-only file wrapper that counts what passes through."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh, self.size = fh, 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()


BIG = 8 << 20


def _in_restore_order(members: set[Path]) -> list[Path]:
    """The small files first, by path, then the big ones. Creating thousands of small files is
    what costs a restore the disk's time; first, it runs while a slow Drive is still read (the
    CPUs otherwise idle), not after the last byte."""
    sizes = {f: os.lstat(f).st_size for f in members}
    return sorted(members, key=lambda f: (sizes[f] >= BIG, f))


def pack(store: TieredStore, snapshot: Snapshot, target: TargetPython, pins: tuple[Pin, ...],
         digests: dict[NormalizedName, str | None], index_took: float | None = None) -> Path:
    """Write the snapshot of the distributions `pins` installed in `target`, if their files are
    those of the locked wheels (`digests`: the lock's, by name): a snapshot that no VM could
    verify is not worth writing. Bytecode is left out. Returns the archive. `index_took`: the
    seconds uv took to install them from the index, when it did (see headstart.recorded_seconds)."""
    files = installed_files(target, [p.name for p in pins])
    missing = [p.name for p in pins if p.name not in files]
    if missing:
        raise SnapshotUnusable(f"cannot snapshot: {', '.join(missing)} list no files (no RECORD)")
    members = _in_restore_order({f for paths in files.values() for f in paths
                                 if (f.exists() or f.is_symlink()) and f.suffix != ".pyc"})
    outside = [f for f in members if not f.is_relative_to(target.prefix)]
    if outside:
        raise SnapshotUnusable(f"cannot snapshot: {outside[0]} lies outside {target.prefix}")
    sites = {f.parent.parent for paths in files.values() for f in paths if f.parent.name.endswith(".dist-info")}
    try:
        if len(sites) != 1:
            raise manifest.Untrusted("its distributions lie in more than one folder")
        site = PurePosixPath(sites.pop().relative_to(target.prefix))
        tree = manifest.Tree(target.prefix, target.prefix, site, target.executable)
        tree.check(tree.read([p.name for p in pins], only=False), digests, None, complete=False)
    except (manifest.Untrusted, OSError) as exc:
        raise SnapshotUnusable(f"not packed: {exc}") from None

    with store.writer(KIND, snapshot.stem) as part:
        hashing = parts.PartHasher(part.fh)  # the whole archive's sha256, and each part's (a restore
        # from several stores at once checks each part as it comes)
        with zstd_open(hashing, "wb", window_log=WINDOW_LOG, level=LEVEL) as compressed:
            stream = _Counting(compressed)  # the tar's own size: a restore unpacks no more than that
            with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                for path in members:
                    tar.add(path, arcname=str(path.relative_to(target.prefix)), recursive=False)
        sha256, part_hashes = hashing.digest.hexdigest(), hashing.finish()
        archive = part.commit(store.path(KIND, f"{snapshot.stem}-{sha256[:16]}.tar.zst"))
    index = {"facts": snapshot.facts, "archive": archive.name, "sha256": sha256, "size": hashing.size,
             "tar_bytes": stream.size, "files": len(members), "distributions": {p.name: p.version for p in pins},
             "part_size": hashing.part_size, "parts": part_hashes,
             **({"index_seconds": round(index_took, 2)} if index_took else {})}
    store.share(KIND, archive)  # the team store's copy too, before its index
    store.put_text(KIND, snapshot.index_name, json.dumps(index, indent=1) + "\n")  # last: it names a whole archive
    store.stats.bytes_written += hashing.size
    return archive


def _merge(staged: Path, dest: Path) -> None:
    """Move a staged tree into dest: whole new folders by one rename, shared ones file by file."""
    dest.mkdir(parents=True, exist_ok=True)
    for entry in os.scandir(staged):
        target = dest / entry.name
        if entry.is_dir(follow_symlinks=False) and target.is_dir() and not target.is_symlink():
            _merge(Path(entry.path), target)
        else:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry.path, target)
            faults.point("place")


def _opened(store: Store, archive: str) -> Stream:
    """The archive to read front to back: the read the bootstrap task began of it before the plan
    named it (warmstart.early), when it did; else opened now."""
    if ahead := early.take(store.where(KIND, archive)):
        store.stats.read_begun_early = True
        store.stats.read_ahead += ahead.ahead
        return ahead
    return store.open(KIND, archive)


def _unpack_verified(sources: list[parts.Source], archive: str, index: dict[str, Any], staging: Path,
                     copy: IO[bytes] | None = None, bars: Bars = QUIET, watch: Watch | None = None,
                     later: Callable[[], parts.Source | None] | None = None,
                     ) -> dict[str, tuple[str, manifest.Signature]]:
    """Read the archive once, unpacking its files into `staging` (and writing it to `copy` too,
    when given); raise SnapshotUnusable (staging removed) when it is not what its index says.
    One source is read front to back, the whole archive's hash checked only with a `copy` (the
    files are checked against the lock after this, whatever their source: hashing the archive
    too took 0.14 s of CPU, about a tenth of a Colab stand-in's restore from local disk);
    several are read at once, part by part, each part checked (see warmstart.parts: it tells
    which source served a damaged part), and so is one with a source held back (`later`: the
    team store, asked only if it falls behind). A damaged archive the decoder or the tar
    headers' checksums do not catch is caught by the files' hashes. The sizes
    the index states bound what is read and what is unpacked, so a hostile archive cannot fill
    the disk. Returns the sha256 of each file unpacked, taken from the bytes written (see
    warmstart.unpack); what each source served is in its `served`."""
    staging.mkdir(parents=True)
    # One thread reads the archive (another hashes it for a copy; a thread per source, each
    # checking its parts, when there are several), one decompresses it (all without the GIL) and
    # counts what it passes on (no more than the index says the tar stream holds), this one
    # writes the files, and another hashes them.
    files = Unpacker(staging)
    whole = len(sources) == 1 and later is None  # else in parts
    hash_whole = whole and copy is not None  # Drive never holds a copy its index does not name
    reading: ReadAhead | parts.PartReader | None = None
    unpacked = None
    hashes = None  # set once every byte came and was unpacked
    try:
        with bars.bar(int(index["size"]), "snapshot from " + " and ".join(s.label for s in sources)) as bar:
            held = watch.held if watch else lambda: False
            reading = (ReadAhead(_opened(sources[0].store, archive), bar, copy, limit=int(index["size"]), held=held,
                                  patience=sources[0].store.patience(), spill_to=staging.parent,
                                  hashed=hash_whole)
                       if whole else parts.PartReader(sources, KIND, archive, index, bar, held, later))
            unpacked = ReadAhead(zstd_open(reading, "rb", window_log=WINDOW_LOG), limit=int(index["tar_bytes"]),
                                  what="it unpacks to more than", hashed=False)
            if watch:
                watch.watch(int(index["size"]), reading, unpacked, index_took=recorded_seconds(index))
            while chunk := unpacked.read(ReadAhead.BLOCK):
                files.feed(chunk)
                faults.point("restore")
            while reading.read(ReadAhead.BLOCK):  # a zstd frame can end before the file does
                pass
            hashes = files.close()
    except WriteFailed:  # the local disk's fault (full), not the archive's: the wheels would fail there too
        raise
    except (OSError, WarmstartError, Cancelled, Damaged, manifest.Untrusted) as exc:
        if watch and watch.cancelled.is_set():  # what failed was stopped on purpose
            raise Cancelled from None
        why = (f"does not match the lock: {exc}" if isinstance(exc, manifest.Untrusted)
               else f"is damaged ({exc})" if isinstance(exc, (Damaged, Undecodable)) else f"cannot be read ({exc})")
        raise SnapshotUnusable(f"snapshot {archive} {why}") from None
    finally:
        # Both are told to stop before either is waited for: the decompressing one may wait on
        # the other. Only a read that came to its end is waited for (the hash needs every
        # block); after a failure, a lost race or a Ctrl-C, a read from a Drive that stopped
        # answering would never return, and the run would hang here instead of ending.
        readers = [reader for reader in (unpacked, reading) if reader is not None]
        for reader in readers:
            reader.stop()
        if hashes is None:
            files.abort()
            shutil.rmtree(staging, ignore_errors=True)
        else:
            for reader in readers:
                reader.close()
        if whole and reading is not None:
            sources[0].served = reading.size
    if hash_whole and isinstance(reading, ReadAhead) and reading.hexdigest() != index["sha256"]:
        shutil.rmtree(staging, ignore_errors=True)
        raise SnapshotUnusable(f"snapshot {archive} is damaged (sha256 differs from its index)")
    return hashes


def _settle(store: TieredStore, sources: list[parts.Source], archive: str) -> None:
    """Count what each source served; set a copy that served a damaged part aside, in its tier."""
    for source in sources:
        source.store.stats.bytes_read += source.served
        source.store.stats.hits += bool(source.served)
        if source.damaged:
            source.store.set_aside_named(KIND, archive)
            store.warnings.append(f"snapshot {archive} on {source.label} is damaged ({source.failed}); "
                                  "set aside, its parts came from elsewhere")
        elif source.failed and not source.store.down:  # a team store that failed said so itself
            store.warnings.append(f"snapshot {archive} on {source.label} failed midway ({source.failed}); "
                                  "its parts came from elsewhere")


def _trace_to_lock(staging: Path, target: TargetPython, digests: dict[NormalizedName, str | None],
                   patches: tuple[Patch, ...], archive: str,
                   known: dict[str, tuple[str, manifest.Signature]] | None = None) -> None:
    """verify_staged, said as a snapshot that cannot be used."""
    try:
        verify_staged(staging, target, digests, patches, known)
    except WriteFailed:  # writing its scripts and RECORDs: the local disk's fault, not the archive's
        raise
    except (manifest.Untrusted, OSError) as exc:
        raise SnapshotUnusable(f"snapshot {archive} does not match the lock: {exc}") from None


def verify_staged(staging: Path, target: TargetPython, digests: dict[NormalizedName, str | None],
                  patches: tuple[Patch, ...], known: dict[str, tuple[str, manifest.Signature]] | None = None,
                  installed: bool = False) -> None:
    """Every staged file belongs to a locked wheel (or is the recipe's patch of one), and nothing
    else came (manifest.Untrusted else); then console scripts and RECORDs are written anew for
    this target. A snapshot's tree, and the index's that races it (warmstart.race: `installed`,
    see manifest.Tree.check)."""
    tree = manifest.Tree.of_staging(staging, target.path, target.prefix, target.executable)
    dists = tree.read(digests)
    tree.check(dists, digests, patches, known=known, installed=installed)
    tree.renew(dists)


def stage(store: TieredStore, snapshot: Snapshot, target: TargetPython,
          digests: dict[NormalizedName, str | None], patches: tuple[Patch, ...] = (),
          for_drive: Path | None = None, watch: Watch | None = None) -> Staged:
    """Unpack a verified snapshot into a staging folder inside the target's prefix; `place` moves
    it into place.

    The archive must match its index and every file it holds trace back to the lock (`digests`,
    the lock's digest of each wheel's files; `patches`, the recipe's), so neither a damaged
    archive nor a rewritten one touches the environment. Console scripts and RECORDs are written
    anew. Drive and the team cache are read at once when both hold the archive. A snapshot only
    the team store holds is copied, archive and index, into `for_drive` as it is read (the Drive
    work puts them on Drive, the index last). `watch`: a race may cancel it (Cancelled).
    PreconditionUnmet, before anything is unpacked, when the target's disk has less room than the
    archive unpacks to; WriteFailed when its disk fails a write (no fault of the archive, which is
    kept)."""
    index = snapshot.read_index(store)
    archive = _archive_name(index)
    # Asked before a file is unpacked: a disk too small is said with what it lacks, and the wheels
    # would not fit either (the tar's size is what the files take, to within their headers).
    if short := no_room(int(index["tar_bytes"]), target.prefix, then="free disk space there, then run again"):
        raise PreconditionUnmet(f"snapshot {archive} unpacks to {short}")
    sources = [parts.Source(label, tier) for label, tier in store.holders(KIND, archive)]
    if not sources:
        raise SnapshotUnusable(f"snapshot {snapshot.index_name} names {archive}, which is missing")
    later = None
    if "parts" not in index:  # an index from before parts: one source, front to back
        sources = sources[:1]
    elif ask := store.later_holder(KIND, archive):  # the team store, held back while Drive keeps up
        def later() -> parts.Source | None:
            return parts.Source(*found) if (found := ask()) else None
    from_team = sources[0].store is not store.here  # Drive, when it holds it, comes first
    staging = staging_folder(target.prefix)
    copy = for_drive / archive if from_team and for_drive else None
    try:
        try:
            with open(copy, "wb") if copy else nullcontext() as kept:
                known = _unpack_verified(sources, archive, index, staging, kept, store.bars, watch, later)
        finally:
            _settle(store, sources, archive)
        _trace_to_lock(staging, target, digests, patches, archive, known)
    except (SnapshotUnusable, Cancelled, OSError) as exc:  # OSError: the local disk (full), no fault of the archive
        shutil.rmtree(staging, ignore_errors=True)
        if copy:
            copy.unlink(missing_ok=True)
        if isinstance(exc, SnapshotUnusable) and not any(source.store.down for source in sources):
            snapshot.set_aside(store, index)  # not when a store stopped answering: its copy may be whole
        raise
    if copy:
        (copy.parent / snapshot.index_name).write_text(json.dumps(index, indent=1) + "\n")
    return Staged(staging, {source.label: source.served for source in sources if source.served})


@dataclass(frozen=True)
class Staged:
    """A verified tree in a staging folder of the target's prefix, and what each store served."""

    folder: Path
    served: dict[str, int]


def place(staged: Path, target: TargetPython, uninstall: Callable[[], None]) -> None:
    """Make room (`uninstall` the distributions the staged tree replaces) and move it into place,
    whole: an interrupt while it moves (renames, moments) comes once all of it is in place."""
    try:
        uninstall()
        with interrupts_held():
            _merge(staged, target.prefix)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
