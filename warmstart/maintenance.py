"""`invoke cache`: what the Drive cache holds for which recipe, checking it, and pruning it."""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from packaging.utils import InvalidWheelFilename, parse_wheel_filename

from .cache import CACHE_DIR
from .lock import existing_locks, parse_lock
from .recipe import known_recipes, load_recipe
from .transfer import STALE_SECONDS, regular_file, set_aside, sha256_of


@dataclass
class Entry:
    kind: str  # wheel, asset, snapshot, index, temporary, set aside
    path: Path
    size: int
    owners: set[str] = field(default_factory=set)  # recipes whose current locks or assets use it
    hashes: set[str] = field(default_factory=set)  # the sha256 it must have
    status: str = "unchecked"
    archive: str | None = None  # for a snapshot index: the archive it names


def inventory(drive: Path, root: Path) -> list[Entry]:
    wheel_refs: dict[tuple[str, str], tuple[set[str], set[str]]] = defaultdict(lambda: (set(), set()))
    asset_refs: dict[str, set[str]] = defaultdict(set)
    lock_refs: dict[str, set[str]] = defaultdict(set)
    for name, path in known_recipes(root, drive).items():
        recipe = load_recipe(str(path), root)
        for lock_file in existing_locks(recipe):
            lock_refs[sha256_of(lock_file)].add(name)
            for pin in parse_lock(lock_file).pins:
                owners, hashes = wheel_refs[(pin.name, pin.version)]
                owners.add(name)
                hashes.update(pin.hashes)
        for asset in recipe.assets:
            asset_refs[asset.sha256].add(name)

    base = drive / CACHE_DIR
    entries: list[Entry] = []
    for folder in ("wheels", "assets", "snapshots"):
        for item in sorted((base / folder).iterdir()) if (base / folder).is_dir() else ():
            entries.append(Entry("?", item, item.lstat().st_size))
    indexes = {}
    for entry in entries:
        name, folder = entry.path.name, entry.path.parent.name
        if not regular_file(entry.path):
            entry.kind = "not a file"  # a pipe, a device, a link: never read, never pruned
        elif name.startswith(".") and name.endswith(".part"):
            entry.kind = "temporary"
        elif ".damaged-" in name:
            entry.kind = "set aside"
        elif folder == "wheels":
            entry.kind = "wheel"
            try:
                project, version, _, _ = parse_wheel_filename(name)
                entry.owners, entry.hashes = wheel_refs.get((project, str(version)), (set(), set()))
            except InvalidWheelFilename:
                pass
        elif folder == "assets":
            entry.kind, entry.owners, entry.hashes = "asset", asset_refs.get(name, set()), {name}
        elif name.endswith(".json"):
            entry.kind = "index"
            try:
                index = json.loads(entry.path.read_text())
                entry.owners = lock_refs.get(index["facts"]["lock_sha256"], set())
                indexes[index["archive"]] = (entry.owners, index["sha256"])
                entry.archive = str(index["archive"])
            except (OSError, ValueError, KeyError, TypeError):
                entry.kind = "unreadable index"  # written by no warmstart, or damaged: prunable
        else:
            entry.kind = "snapshot"
    for entry in entries:
        if entry.kind == "snapshot" and entry.path.name in indexes:
            entry.owners, sha256 = indexes[entry.path.name]
            entry.hashes = {sha256}
    return entries


def verify(entries: list[Entry]) -> None:
    """Hash every cached file; a file whose sha256 is not the one it must have is set aside."""
    for entry in entries:
        if entry.kind not in ("wheel", "asset", "snapshot"):
            continue
        if not entry.hashes:
            entry.status = "unreferenced (no current lock or recipe names it)"
        elif sha256_of(entry.path) in entry.hashes:
            entry.status = "ok"
        else:
            entry.status = f"damaged, set aside as {set_aside(entry.path).name}"


RETENTION_DAYS = 30


def prunable(entries: list[Entry], last_used: dict[str, float], retention_days: float = RETENTION_DAYS,
             now: float | None = None) -> list[Entry]:
    """What was set aside, stale temporaries, and what no current lock or recipe here names and no
    run (of any checkout sharing this Drive) has used for `retention_days`: a file's last use is
    its latest usage record, or its own time when no record names it (a snapshot archive is used
    with its index)."""
    now = time.time() if now is None else now
    archives = {e.path.name: e for e in entries if e.kind == "snapshot"}

    def idle(entry: Entry) -> bool:
        used = [last_used.get(relative_name(entry), 0.0), entry.path.lstat().st_mtime]
        if entry.kind == "snapshot":  # used whenever an index naming it was
            used += [last_used.get(relative_name(i), 0.0) for i in entries
                     if i.kind == "index" and archives.get(i.archive or "") is entry]
        return now - max(used) > retention_days * 86400

    return [e for e in entries
            if (e.kind in ("wheel", "asset", "snapshot", "index") and not e.owners and idle(e))
            or (e.kind == "unreadable index" and idle(e))
            or e.kind == "set aside"
            or (e.kind == "temporary" and now - e.path.lstat().st_mtime > STALE_SECONDS)]


def relative_name(entry: Entry) -> str:
    return f"{entry.path.parent.name}/{entry.path.name}"


def prune(entries: list[Entry]) -> int:
    freed = 0
    for entry in entries:
        try:
            os.unlink(entry.path)
            freed += entry.size
        except FileNotFoundError:
            pass  # another run removed it
    return freed


def sizes(entries: list[Entry]) -> dict[str, int]:
    """Bytes per recipe (a file two recipes share counts for both), and the unowned rest."""
    totals: dict[str, int] = defaultdict(int)
    for entry in entries:
        for owner in entry.owners or {"(no recipe)"}:
            totals[owner] += entry.size
    return dict(sorted(totals.items()))
