"""Where warmstart keeps what on Drive: the one place that layout is spelled.

    <drive>/.warmstart/recipes/             the user's own recipes (read, never written)
    <drive>/.warmstart/v1/wheels/<file>.whl wheels, by their filename (name, version, tags)
    <drive>/.warmstart/v1/assets/<sha256>   recipe assets (model files), by their content
    <drive>/.warmstart/v1/snapshots/        environment archives and the indexes naming them
    <drive>/.warmstart/v1/usage/            which run used which file when (for prune)
    <drive>/.warmstart/v1/placed.json       files warmstart placed in the workdir

warmstart.store reads and writes there, in folders of its own: never through a link or past a
file standing where one goes (DriveStore.folder_in_the_way). Standard library only, and nothing
else: warmstart.sh's first look at Drive (warmstart.prefetch.guess) comes before the rest of
warmstart is imported.
"""

from __future__ import annotations

import re
from pathlib import Path

LAYOUT = Path(".warmstart") / "v1"
RECIPES = Path(".warmstart") / "recipes"
KINDS = ("wheels", "assets", "snapshots", "locks")  # locks: made on a VM for its runtime (livelock.py)


def snapshot_names(recipe: str | None = None, tag: str | None = None, *, index: bool = False) -> re.Pattern[str]:
    """The names snapshot.pack gives in `snapshots/`: an archive, `<recipe>-<pyXY>-<key>-<sha>.tar.zst`
    (key and sha 16 hex digits each), and with `index` its index too, `<recipe>-<pyXY>-<key>.json`;
    of any recipe and Python but those named. For whole names (fullmatch)."""
    stem = rf"{re.escape(recipe) if recipe else '.+'}-{tag or 'py[0-9]+'}-[0-9a-f]{{16}}"
    archive = r"-[0-9a-f]{16}\.tar\.zst"
    return re.compile(rf"{stem}(\.json|{archive})" if index else stem + archive)
