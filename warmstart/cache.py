"""The wheel cache on Drive: `<drive>/.warmstart/v1/wheels/<wheel filename>`.

A wheel's filename carries its name, version, Python, ABI and platform tags, so wheels for
two Pythons or platforms never collide, and one directory listing tells what is there
(Drive is slow per file). Nothing read from the cache is trusted: each wheel is copied to
local disk while hashed, and used only when the sha256 is one the lock allows. Writes go to a
temporary name in the same folder and are renamed into place, so a VM that is killed midway,
or a second VM writing the same wheel, never leaves a half-written file under a real name.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from packaging import tags
from packaging.utils import InvalidWheelFilename, NormalizedName, parse_wheel_filename
from packaging.version import Version

from .lock import Pin
from .transfer import atomic_copy, atomic_write_text, copy_hashed, explain, regular_file, set_aside

CACHE_DIR = Path(".warmstart") / "v1"


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    bytes_read: int = 0
    bytes_written: int = 0


class WheelCache:
    def __init__(self, drive: Path) -> None:
        self.wheels = drive / CACHE_DIR / "wheels"
        self.stats = CacheStats()
        self.warnings: list[str] = []  # Drive writes that failed (the install still goes on)
        self._listing: dict[tuple[NormalizedName, str], list[tuple[Path, frozenset[tags.Tag]]]] | None = None

    def _index(self) -> dict[tuple[NormalizedName, str], list[tuple[Path, frozenset[tags.Tag]]]]:
        if self._listing is None:
            self._listing = {}
            if self.wheels.is_dir():
                for entry in os.scandir(self.wheels):
                    if entry.name.startswith(".") or not entry.name.endswith(".whl"):
                        continue  # temporary files of an interrupted or concurrent write
                    if not entry.is_file(follow_symlinks=False):
                        continue  # only regular files are read off Drive
                    try:
                        name, version, _build, wheel_tags = parse_wheel_filename(entry.name)
                    except InvalidWheelFilename:
                        continue
                    self._listing.setdefault((name, str(version)), []).append(
                        (Path(entry.path), wheel_tags)
                    )
        return self._listing

    def lookup(self, pin: Pin, supported: list[tags.Tag]) -> Path | None:
        """The cached wheel for `pin` that the target prefers, if any (by filename only)."""
        rank = {tag: i for i, tag in enumerate(supported)}
        best: tuple[int, Path] | None = None
        for path, wheel_tags in self._index().get((pin.name, str(Version(pin.version))), []):
            score = min((rank[t] for t in wheel_tags if t in rank), default=None)
            if score is not None and (best is None or score < best[0]):
                best = (score, path)
        return best[1] if best else None

    def fetch(self, cached: Path, pin: Pin, dest_dir: Path) -> Path | None:
        """Copy a cached wheel to local disk and verify it; None when it cannot be read or is
        damaged (then it is set aside)."""
        dest = dest_dir / cached.name
        try:
            sha256, size = copy_hashed(cached, dest)
        except OSError:
            dest.unlink(missing_ok=True)
            return None
        self.stats.bytes_read += size
        if sha256 not in pin.hashes:
            dest.unlink()
            set_aside(cached)  # a fresh download takes its name
            return None
        self.stats.hits += 1
        return dest

    def store(self, wheel: Path) -> None:
        dest = self.wheels / wheel.name
        if dest.exists():
            return  # another VM put it there first; wheels with one name are the same file
        try:
            self.stats.bytes_written += atomic_copy(wheel, dest)
        except OSError as exc:
            self.warnings.append(f"wheel {wheel.name} not cached on Drive: {explain(exc)}")
        self._listing = None


# Usage records: each run writes one small file naming the cache files its lock uses, so that
# `invoke cache --prune` removes only what no lock, of any checkout sharing this Drive, has used
# for its retention period. A record maps paths relative to the cache folder (wheels/x.whl,
# assets/<sha>, snapshots/<index>.json) to when they were used.
USAGE = "usage"


def _write_record(drive: Path, used: dict[str, float]) -> None:
    record = drive / CACHE_DIR / USAGE / f"{int(max(used.values()))}-{uuid.uuid4().hex[:12]}.json"
    atomic_write_text(record, json.dumps({"used": used}, sort_keys=True))


def record_use(drive: Path, used: Iterable[str], now: float | None = None) -> None:
    now = time.time() if now is None else now
    try:
        if names := sorted(set(used)):
            _write_record(drive, dict.fromkeys(names, now))
    except OSError:
        pass  # a record only protects files from pruning; the next run writes another


def last_used(drive: Path) -> tuple[dict[str, float], list[Path]]:
    """When a run last used each cache file, and the record files that say so."""
    folder = drive / CACHE_DIR / USAGE
    when: dict[str, float] = {}
    records = sorted(p for p in folder.glob("*.json") if regular_file(p)) if folder.is_dir() else []
    for record in records:
        try:
            used = {str(name): float(at) for name, at in json.loads(record.read_text())["used"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # not one of ours, or damaged: it protects nothing
        for name, at in used.items():
            when[name] = max(when.get(name, 0.0), at)
    return when, records


def compact_usage(drive: Path, when: dict[str, float], records: list[Path], keep: set[str]) -> None:
    """Fold the records read into one, for the files still there; then remove those read (a run
    writing a record meanwhile adds a new file, which stays)."""
    if len(records) < 2:
        return
    if merged := {name: at for name, at in when.items() if name in keep}:
        _write_record(drive, merged)
    for record in records:
        record.unlink(missing_ok=True)
