"""Platform profiles (`envs/*.toml`): where Drive lives on each kind of machine.

The profile is picked by `WARMSTART_PROFILE`, else by the first profile whose `[detect]`
rules match this machine (in name order), else `local`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .config import Field, Schema, read_toml, validate
from .errors import BadInput, PreconditionUnmet

PROFILE_SCHEMA: Schema = {
    "name": Field("str", required=True),
    "description": Field("str", default=""),
    "drive": Field("str", required=True),
    "create_drive": Field("bool", default=False),
    "missing_drive_hint": Field("str", default="create the folder or pass --drive DIR"),
    "detect": {
        "env": Field("str-list", default=[]),
        "files": Field("str-list", default=[]),
    },
}

FALLBACK = "local"


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    drive: Path
    create_drive: bool
    missing_drive_hint: str
    detect_env: tuple[str, ...]
    detect_files: tuple[str, ...]

    def matches(self, environ: Mapping[str, str]) -> bool:
        if not (self.detect_env or self.detect_files):
            return False
        return any(var in environ for var in self.detect_env) or any(
            os.path.exists(f) for f in self.detect_files
        )


def load_profile(path: Path) -> Profile:
    data = validate(read_toml(path), PROFILE_SCHEMA, path)
    return Profile(
        name=data["name"],
        description=data["description"],
        drive=Path(data["drive"]).expanduser(),
        create_drive=data["create_drive"],
        missing_drive_hint=data["missing_drive_hint"],
        detect_env=tuple(data["detect"]["env"]),
        detect_files=tuple(data["detect"]["files"]),
    )


def select_profile(root: Path, environ: Mapping[str, str] = os.environ) -> Profile:
    profiles = {p.stem: p for p in sorted((root / "envs").glob("*.toml"))}
    wanted = environ.get("WARMSTART_PROFILE")
    if wanted:
        if wanted not in profiles:
            raise BadInput(
                f"WARMSTART_PROFILE={wanted!r} names no file in {root / 'envs'}; "
                f"known profiles: {', '.join(profiles)}"
            )
        return load_profile(profiles[wanted])
    for path in profiles.values():
        profile = load_profile(path)
        if profile.matches(environ):
            return profile
    if FALLBACK not in profiles:
        raise BadInput(f"{root / 'envs' / (FALLBACK + '.toml')}: file not found")
    return load_profile(profiles[FALLBACK])


def resolve_drive(option: str | None, profile: Profile, environ: Mapping[str, str]) -> Path:
    """The Drive root: --drive, else WARMSTART_DRIVE, else the profile's default."""
    if option:
        return Path(option).expanduser().resolve()
    if environ.get("WARMSTART_DRIVE"):
        return Path(environ["WARMSTART_DRIVE"]).expanduser().resolve()
    return profile.drive


def require_drive(drive: Path, profile: Profile, *, create: bool) -> None:
    """Exit 3 when Drive is not there; a profile may create its stand-in folder instead."""
    if drive.is_dir():
        return
    if drive.exists():
        raise PreconditionUnmet(f"Drive root {drive} is not a folder; pass --drive DIR")
    if profile.create_drive and create:
        drive.mkdir(parents=True, exist_ok=True)
        return
    if profile.create_drive:  # a dry run: it would be created
        return
    raise PreconditionUnmet(
        f"Drive root {drive} does not exist ({profile.name} profile): {profile.missing_drive_hint}"
    )
