"""A lock's text as the standard library reads it: its pin blocks and their hashes; and where
recipes and their locks lie.

warmstart.lock parses a lock whole, with packaging. warmstart.sh reads the pins a snapshot holds
from the lock it was made from before packaging is there (warmstart.headstart), so the parts
both need live here, and so do the rules by which warmstart.recipe finds a recipe's file (by
name, in the recipe folders) and its project.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from .errors import BadInput
from .layout import RECIPES
from .settings import RECIPES_FOLDER, user_path

HASH = re.compile(r"--hash[= ]sha256:([0-9a-f]{64})")
# The header's digest of the lock's body: of all below it (the pins, their hashes, the wheels' libraries)
LOCK_SHA256 = re.compile(r"^# lock-sha256: ([0-9a-f]{64})\n", re.M)
_PINNED = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")


def pin_blocks(text: str) -> list[str]:
    """Split pip-compile output into requirement blocks (a pin with its hash and via lines)."""
    blocks: list[str] = []
    for line in text.splitlines():
        if line[:1] not in ("", " ", "#") or not blocks:
            blocks.append(line)
        else:
            blocks[-1] += "\n" + line
    return blocks


def body_sha256(text: str) -> str | None:
    """The sha256 of a lock's body, which is what it installs (its header's comments are not), as
    its `lock-sha256` line states it; None where there is no such line or the body does not match it."""
    stated = LOCK_SHA256.search(text)
    if stated and hashlib.sha256(text[stated.end():].encode()).hexdigest() == stated.group(1):
        return stated.group(1)
    return None


def canonical(name: str) -> str:
    """A distribution's name as PEP 503 compares it (packaging's canonicalize_name)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(text: str) -> dict[str, str]:
    """The distributions the lock `text` pins: canonical name, version."""
    return {canonical(pinned.group(1)): pinned.group(2) for block in pin_blocks(text)
            if (pinned := _PINNED.match(block))}


def requirement_line(name: str, version: str, hashes: Iterable[str]) -> str:
    """A pin as uv and pip install it, hashes required: one line, its hashes sorted."""
    return f"{name}=={version} " + " ".join(f"--hash=sha256:{h}" for h in sorted(hashes))


def requirement_lines(text: str, wanted: Iterable[str]) -> list[str] | None:
    """The requirement lines of the pins `wanted` (`name==version`, canonical names) in the lock
    `text`, in the lock's order; None unless each is there once, with a hash."""
    wanted = set(wanted)
    lines = []
    for block in pin_blocks(text):
        pinned = _PINNED.match(block)
        if not pinned:
            continue
        name, version = canonical(pinned.group(1)), pinned.group(2)
        if f"{name}=={version}" in wanted and (hashes := HASH.findall(block)):
            lines.append(requirement_line(name, version, hashes))
    return lines if len(lines) == len(wanted) else None


def given_as_file(recipe: str) -> bool:
    """A recipe named by its file's path (used as it is), not by a name to look up."""
    candidate = Path(os.path.expanduser(recipe))  # never raises: this only tells a path from a name
    return candidate.suffix == ".toml" or len(candidate.parts) > 1


def project_of(recipe_file: Path) -> Path:
    """The folder of a recipe file's project, where its requirements and locks are named from:
    its recipes/ folder's parent, else its own folder."""
    return recipe_file.parent.parent if recipe_file.parent.name == "recipes" else recipe_file.parent


def recipe_dirs(root: Path, drive: Path | None, environ: Mapping[str, str] = os.environ) -> list[Path]:
    """Where recipes are found: the project's recipes/, then the user's folder (WARMSTART_RECIPES,
    else the Drive store's recipes folder) so recipes can live next to the data on Drive."""
    dirs = [root / "recipes"]
    if own := RECIPES_FOLDER.get(environ):
        folder = user_path(own, RECIPES_FOLDER.name)
        if folder.exists() and not folder.is_dir():  # a recipe's own file, say: read as a folder of none
            raise BadInput(f"{RECIPES_FOLDER.name} {folder} is a file, not a folder: set it to the folder that "
                           "holds your recipes, or pass the recipe's file as --recipe PATH")
        dirs.append(folder)
    elif drive is not None:
        dirs.append(drive / RECIPES)
    return dirs
