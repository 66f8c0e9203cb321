"""The wheel cache on Drive: `<drive>/.warmstart/v1/wheels/<wheel filename>`.

A wheel's filename carries its name, version, Python, ABI and platform tags, so wheels for
two Pythons or platforms never collide, and one directory listing tells what is there
(Drive is slow per file). Nothing read from the cache is trusted: each wheel is copied to
local disk while hashed, and used only when the sha256 is one the lock allows. Writes go to a
temporary name in the same folder and are renamed into place, so a VM that is killed midway,
or a second VM writing the same wheel, never leaves a half-written file under a real name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from packaging import tags
from packaging.utils import InvalidWheelFilename, NormalizedName, parse_wheel_filename
from packaging.version import Version

from .lock import Pin
from .transfer import atomic_copy, copy_hashed, explain, set_aside

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
