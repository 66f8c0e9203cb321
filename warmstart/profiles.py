"""Platform profiles (`envs/*.toml`): where Drive lives on each kind of machine, and its quirks.

The profile is picked by `WARMSTART_PLATFORM`, else by the first profile whose `[detect]`
rules match this machine (in name order), else `local`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .config import Field, Schema, read_toml, validate
from .disks import is_mount_point, not_writable
from .errors import BadInput, PreconditionUnmet
from .settings import DRIVE, MOUNT_POINT, PLATFORM

if TYPE_CHECKING:
    from .images import Image

PROFILE_SCHEMA: Schema = {
    "name": Field("str", required=True),
    "description": Field("str", default=""),
    "drive": Field("str", required=True),
    "mount_point": Field("str"),
    "create_drive": Field("bool", default=False),
    "notebook": Field("bool", default=False),
    "missing_drive_hint": Field("str", default="create the folder or pass --drive DIR"),
    "preloaded": Field("str-list", default=[]),
    # The CUDA libraries the platform's system provides (a list in envs/images/); images of the
    # profile name their own. Absent: not known (a workstation), and locks are not checked for it.
    "cuda": Field("str"),
    "detect": {
        "env": Field("str-list", default=[]),
        "files": Field("str-list", default=[]),
    },
    "env": {
        "unset": Field("str-list", default=[]),
    },
}

FALLBACK = "local"


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    drive: str  # relative to the mount point when there is one
    mount_point: Path | None  # Drive counts as present only while this is mounted
    create_drive: bool  # a local stand-in folder may be created
    notebook: bool  # commands run from notebook cells (`!invoke ...`)
    missing_drive_hint: str
    preloaded: tuple[str, ...]  # distributions a fresh kernel has already imported
    unset_env: tuple[str, ...]  # variables that break installers on this platform
    detect_env: tuple[str, ...]
    detect_files: tuple[str, ...]
    envs: Path = Path("envs")  # the folder the profile was read from; its images/ lie there
    cuda_list: str | None = None  # envs/images/<cuda_list>: sonames the system provides

    def images(self) -> dict[str, Image]:
        """This platform's published images, by name (Colab: latest on 3.13; 2026.04 and 2026.07 on 3.12)."""
        # Lazily: images need packaging, and warmstart.sh reads profiles before it is there.
        from .images import images_of

        return images_of(self.name, self.envs)

    def images_for(self, python_minor: str) -> list[Image]:
        return [i for i in self.images().values() if i.python_minor == python_minor]

    def cuda(self, image: Image | None) -> frozenset[str] | None:
        """The CUDA sonames the system provides (the image's when it names them); None: unknown."""
        if image is not None and image.cuda:
            return image.cuda
        from .images import read_cuda_list  # lazily, as in images()

        return read_cuda_list(self.envs / "images" / self.cuda_list) if self.cuda_list else None

    def matches(self, environ: Mapping[str, str]) -> bool:
        return any(var in environ for var in self.detect_env) or any(
            os.path.exists(f) for f in self.detect_files
        )

    def mount(self, environ: Mapping[str, str] = os.environ) -> Path | None:
        """Where Drive is mounted: WARMSTART_MOUNT_POINT (Colab lets you pick), else the profile's."""
        if self.mount_point is None:
            return None
        return Path(MOUNT_POINT.get(environ) or self.mount_point)

    def default_drive(self, environ: Mapping[str, str] = os.environ) -> Path:
        mount = self.mount(environ)
        return (mount / self.drive) if mount else Path(self.drive).expanduser()


def load_profile(path: Path) -> Profile:
    data = validate(read_toml(path), PROFILE_SCHEMA, path)
    return Profile(
        name=data["name"],
        description=data["description"],
        drive=data["drive"],
        mount_point=Path(data["mount_point"]) if data["mount_point"] else None,
        create_drive=data["create_drive"],
        notebook=data["notebook"],
        missing_drive_hint=data["missing_drive_hint"],
        preloaded=tuple(data["preloaded"]),
        unset_env=tuple(data["env"]["unset"]),
        detect_env=tuple(data["detect"]["env"]),
        detect_files=tuple(data["detect"]["files"]),
        envs=path.parent,
        cuda_list=data["cuda"],
    )


def profile_paths(root: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted((root / "envs").glob("*.toml"))}


def select_profile(root: Path, environ: Mapping[str, str] = os.environ, given_as: str = PLATFORM.name) -> Profile:
    """The platform profile `environ`'s WARMSTART_PLATFORM names (`given_as`: how the user named
    it, for the message), else the first whose markers this machine shows, else the fallback."""
    profiles = profile_paths(root)
    wanted = PLATFORM.get(environ)
    if wanted:
        if wanted not in profiles:
            raise BadInput(
                f"{given_as}={wanted!r} names no file in {root / 'envs'}; "
                f"known platforms: {', '.join(profiles)}"
            )
        return load_profile(profiles[wanted])
    for path in profiles.values():
        profile = load_profile(path)
        if profile.matches(environ):
            return profile
    if FALLBACK not in profiles:
        raise BadInput(f"{root / 'envs' / (FALLBACK + '.toml')}: file not found")
    return load_profile(profiles[FALLBACK])


def mount_hint(mount: Path, recipe: str | None) -> str:
    """The cell that mounts Drive, and the one that does it all from the notebook, for `recipe`
    (None: a command other than a bootstrap, which that cell does not do), both as they paste: the
    second imports warmstart from where this process did (a checkout on local disk: one on Drive
    is not there before the mount, and then needs no hint)."""
    hint = f"run this in a notebook cell first: from google.colab import drive; drive.mount({str(mount)!r})"
    checkout = Path(__file__).resolve().parent.parent
    if recipe is None or checkout.is_relative_to(mount):
        return hint
    return (f"{hint}  (or do it all from the notebook: import sys; sys.path.insert(0, {str(checkout)!r}); "
            f"import warmstart.colab; warmstart.colab.bootstrap({recipe!r}))")


def require_no_file_as_drive(drive: Path) -> None:
    """Exit 3 when what stands at the Drive root is no folder (a file given as --drive), or a link
    that leads nowhere (a loop of links: a folder can be made in neither)."""
    if drive.exists() and not drive.is_dir():
        raise PreconditionUnmet(f"Drive root {drive} is not a folder; pass --drive DIR")
    if os.path.lexists(drive) and not drive.exists():
        raise PreconditionUnmet(f"Drive root {drive} is a link that leads nowhere (a loop of links); pass --drive DIR")


def require_mounted(path: Path, profile: Profile, environ: Mapping[str, str] = os.environ, *,
                    recipe: str | None) -> None:
    """Exit 3, with the cell that mounts it, when `path` lies under the platform's Drive mount
    point and nothing is mounted there."""
    mount = profile.mount(environ)
    if mount and path.is_relative_to(mount) and not is_mount_point(mount):
        raise PreconditionUnmet(f"Google Drive is not mounted at {mount}; {mount_hint(mount, recipe)}")


def require_drive(drive: Path, profile: Profile, environ: Mapping[str, str] = os.environ, *,
                  recipe: str | None) -> None:
    """Exit 3 when Drive is not there, or not yet where a profile that makes its folder (a local
    stand-in for Drive) may make it: the run creates it with the workdir. Nothing is ever written
    under an unmounted mount point: that would make the later mount fail ("Mountpoint must not
    already contain files")."""
    require_mounted(drive, profile, environ, recipe=recipe)
    if drive.is_dir():
        if problem := not_writable(drive):
            raise PreconditionUnmet(problem)
        return
    require_no_file_as_drive(drive)
    if profile.create_drive:
        return
    if drive != profile.default_drive(environ):  # the user's folder: the platform's way to its own is beside the point
        raise PreconditionUnmet(f"Drive root {drive} does not exist: create it, or pass --drive (or {DRIVE.name}) "
                                "a folder that exists")
    raise PreconditionUnmet(
        f"Drive root {drive} does not exist ({profile.name} platform): {profile.missing_drive_hint}"
    )
