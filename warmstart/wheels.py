"""Choosing among wheel files by their names: the one a target prefers, the one rule for the
Drive cache and the package index alike."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TypeVar

from packaging.tags import Tag
from packaging.utils import InvalidWheelFilename, NormalizedName, parse_wheel_filename
from packaging.version import Version

T = TypeVar("T")


def parse(filename: str) -> tuple[NormalizedName, Version, frozenset[Tag]] | None:
    """(name, version, tags) of a wheel file name; None for anything else."""
    if not filename.endswith(".whl"):
        return None
    try:
        name, version, _build, wheel_tags = parse_wheel_filename(filename)
    except InvalidWheelFilename:
        return None
    return name, version, wheel_tags


def ranking(supported: Sequence[Tag]) -> dict[Tag, int]:
    """Each tag a target supports by its place in the target's order (0: the most specific). A
    manylinux target supports about a thousand: ranked once for a whole lock, not per wheel."""
    return {tag: n for n, tag in enumerate(supported)}


def best(files: Iterable[tuple[str, T]], rank: Mapping[Tag, int],
         name: str | None = None, version: str | None = None) -> T | None:
    """Of (filename, item) pairs, the item whose wheel the target ranks highest (its most specific
    tag first, as pip does; `rank`: the target's `ranking`), optionally only for one name and
    version; None when none fits."""
    wanted = Version(version) if version is not None else None
    chosen: tuple[int, T] | None = None
    for filename, item in files:
        parsed = parse(filename)
        if parsed is None or (name is not None and parsed[0] != name) or (wanted is not None and parsed[1] != wanted):
            continue
        score = min((rank[t] for t in parsed[2] if t in rank), default=None)
        if score is not None and (chosen is None or score < chosen[0]):
            chosen = (score, item)
    return chosen[1] if chosen else None


def by_release(filenames: Iterable[str]) -> dict[tuple[NormalizedName, Version], list[str]]:
    """Wheel file names grouped by (name, version): one parse per name for a whole listing."""
    groups: dict[tuple[NormalizedName, Version], list[str]] = {}
    for filename in filenames:
        if parsed := parse(filename):
            groups.setdefault((parsed[0], parsed[1]), []).append(filename)
    return groups
