"""`invoke cache`: what the Drive cache holds for which recipe, checking it, and pruning it."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from . import livelock
from .layout import snapshot_names
from .lock import existing_locks, parse_lock
from .recipe import each_recipe, recipe_files
from .store import STALE_SECONDS, Store, StoredFile
from .transfer import is_sha256
from .wheels import parse


@dataclass
class Entry:
    file: StoredFile
    kind: str  # wheel, asset, snapshot, index, unreadable index, temporary, set aside, not a file, FOREIGN
    owners: set[str] = field(default_factory=set)  # recipes whose current locks or assets use it
    hashes: set[str] = field(default_factory=set)  # the sha256 it must have
    status: str = "unchecked"
    archive: str | None = None  # for a snapshot index: the archive it names

    @property
    def path(self) -> PurePath:
        return self.file.path

    @property
    def size(self) -> int:
        return self.file.size


_KIND = {"wheels": "wheel", "assets": "asset", "snapshots": "snapshot", "locks": "lock"}
_STATE = {"temporary": "temporary", "set aside": "set aside", "not a file": "not a file"}
# A file named as warmstart names none in its folder (a note, a teammate's copy of something) is
# someone else's: listed, never verified, never pruned (as a usage record no run wrote is left).
FOREIGN = "not warmstart's"
_SNAPSHOT_NAMES = snapshot_names(index=True)  # a snapshot's index and its archive


def _warmstarts_name(kind: str, name: str) -> bool:
    """Whether `name` is one warmstart gives a file of the store's `kind` folder."""
    if kind == "wheels":
        return parse(name) is not None
    if kind == "assets":
        return is_sha256(name)
    if kind == "locks":
        return livelock.recipe_of(name) is not None
    return kind == "snapshots" and _SNAPSHOT_NAMES.fullmatch(name) is not None


def inventory(store: Store, root: Path, drive: Path | None, unreadable: list[str] | None = None) -> list[Entry]:
    """Every file of the store (Drive's, or a team store), with the recipes (of this checkout and
    the Drive's recipe folder) whose current locks and assets name it. A recipe that cannot be
    read is BadInput, or, given `unreadable`, its line there (it names nothing, then)."""
    wheel_refs: dict[tuple[str, str], tuple[set[str], set[str]]] = defaultdict(lambda: (set(), set()))
    asset_refs: dict[str, set[str]] = defaultdict(set)
    lock_refs: dict[str, set[str]] = defaultdict(set)
    known = recipe_files(root, drive)
    # a name defined twice (a copy on Drive of a shipped recipe): what either file names is owned
    for name, recipe in each_recipe(known, root, unreadable=unreadable):
        for lock_file in existing_locks(recipe):
            lock = parse_lock(lock_file)
            lock_refs[lock.body_sha256].add(name)
            for pin in lock.pins:
                owners, hashes = wheel_refs[(pin.name, pin.version)]
                owners.add(name)
                hashes.update(pin.hashes)
        for asset in recipe.assets:
            asset_refs[asset.sha256].add(name)

    entries = []
    indexes: dict[str, tuple[set[str], set[str]]] = defaultdict(lambda: (set(), set()))  # archive: owners, sha256s
    for stored in store.entries():
        entry = Entry(stored, _STATE.get(stored.state) or _KIND[stored.kind])
        name = stored.path.name
        if stored.state == "file" and not _warmstarts_name(stored.kind, name):
            entry.kind = FOREIGN
        elif entry.kind == "wheel" and (parsed := parse(name)):
            entry.owners, entry.hashes = wheel_refs.get((parsed[0], str(parsed[1])), (set(), set()))
        elif entry.kind == "lock" and (made_for := livelock.recipe_of(name)):
            entry.owners = {made_for} & set(known)  # made for a recipe here: kept while it is
        elif entry.kind == "asset":
            entry.owners, entry.hashes = asset_refs.get(name, set()), {name}
        elif entry.kind == "snapshot" and name.endswith(".json"):
            entry.kind = "index"
            try:
                index = store.read_json(stored.kind, name)
                # one made before snapshots were keyed by the lock's body names none: no lock's
                entry.owners = lock_refs.get(index["facts"].get("lock_body_sha256"), set())
                entry.archive, sha256 = str(index["archive"]), str(index["sha256"])
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                entry.kind = "unreadable index"  # written by no warmstart, or damaged: prunable
            else:  # an archive two indexes name (one a copy, or hostile) is both's: either sha256 is its
                owners, hashes = indexes[entry.archive]
                owners |= entry.owners
                hashes.add(sha256)
        entries.append(entry)
    for entry in entries:
        if entry.kind == "snapshot" and entry.path.name in indexes:
            entry.owners, entry.hashes = indexes[entry.path.name]
    return entries


def verify(store: Store, entries: list[Entry]) -> None:
    """Hash every cached file; a file whose sha256 is not the one it must have is set aside."""
    for entry in entries:
        if entry.kind not in ("wheel", "asset", "snapshot"):
            continue
        if not entry.hashes:
            entry.status = "unreferenced (no current lock or recipe names it)"
            continue
        try:
            sha256 = store.sha256(entry.file)
        except FileNotFoundError:  # another VM pruned it since the listing
            entry.status = "gone"
            continue
        if sha256 in entry.hashes:
            entry.status = "ok"
        else:
            entry.status = f"damaged, set aside as {store.set_aside(entry.path).name}"


RETENTION_DAYS = 30


def prunable(entries: list[Entry], last_used: dict[str, float], retention_days: float = RETENTION_DAYS,
             now: float | None = None) -> list[Entry]:
    """What was set aside, stale temporaries, and what no current lock or recipe here names and no
    run (of any checkout sharing this Drive) has used for `retention_days`: a file's last use is
    its latest usage record, or its own time when no record names it (a snapshot archive is used
    with its index). A snapshot goes once unused, whichever lock it was made from: it fits one
    state of a VM that lock serves (a Python minor version, a prefix, what an image lacks), and
    a state Colab has moved on from (it drifts weekly) is never asked for again."""
    now = time.time() if now is None else now
    archives = {e.path.name: e for e in entries if e.kind == "snapshot"}

    def idle(entry: Entry) -> bool:
        used = [last_used.get(entry.file.key, 0.0), entry.file.mtime]
        if entry.kind == "snapshot":  # used whenever an index naming it was
            used += [last_used.get(i.file.key, 0.0) for i in entries
                     if i.kind == "index" and archives.get(i.archive or "") is entry]
        return now - max(used) > retention_days * 86400

    return [e for e in entries
            if (e.kind in ("wheel", "asset", "lock") and not e.owners and idle(e))
            or (e.kind in ("snapshot", "index", "unreadable index") and idle(e))
            or e.kind == "set aside"
            or (e.kind == "temporary" and now - e.file.mtime > STALE_SECONDS)]


UNNAMED = "(named by no current lock or recipe)"  # what sizes() counts the files no recipe names under


def sizes(entries: list[Entry]) -> dict[str, tuple[int, int]]:
    """Bytes per recipe, and how many of them it shares with other recipes (a wheel two recipes
    use counts in each, as shared); UNNAMED for the rest."""
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for entry in entries:
        owners = entry.owners or {UNNAMED}
        for owner in owners:
            totals[owner][0] += entry.size
            totals[owner][1] += entry.size if len(owners) > 1 else 0
    return {owner: (total, shared) for owner, (total, shared) in sorted(totals.items())}
