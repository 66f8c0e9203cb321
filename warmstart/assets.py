"""Recipe assets (model files, data): kept on Drive by sha256, verified on every use.

`<drive>/.warmstart/v1/assets/<sha256>` holds each file once, whichever recipes declare it.
A restore copies it off Drive while hashing, and places it (or extracts it) at its destination
under a temporary name first, so a destination is either whole and verified or untouched.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import uuid
import zipfile
from collections.abc import Mapping
from pathlib import Path

from .cache import CACHE_DIR, CacheStats
from .errors import PreconditionUnmet, WarmstartError
from .recipe import Asset
from . import faults
from .transfer import atomic_copy, copy_hashed, download, explain, set_aside, sha256_of, zstd_open

MARKER = ".warmstart-asset"  # inside an unpacked folder: the sha256 of the archive it came from


class AssetStore:
    def __init__(self, drive: Path, stats: CacheStats | None = None) -> None:
        self.root = drive / CACHE_DIR / "assets"
        self.stats = stats or CacheStats()
        self.warnings: list[str] = []

    def path(self, asset: Asset) -> Path:
        return self.root / asset.sha256

    def state(self, asset: Asset, dest: Path) -> str:
        if in_place(asset, dest):
            return "in place"
        return "cached" if self.path(asset).is_file() else "missing"


def downloads_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """Local (never Drive) folder for partial downloads, so a killed run can resume."""
    base = environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "warmstart" / "downloads"


def source_url(asset: Asset, environ: Mapping[str, str] = os.environ) -> str:
    """The asset's URL, or the same file name under WARMSTART_ASSET_MIRROR when that is set."""
    mirror = environ.get("WARMSTART_ASSET_MIRROR")
    return f"{mirror.rstrip('/')}/{asset.name}" if mirror else asset.url


def in_place(asset: Asset, dest: Path) -> bool:
    if asset.unpack:
        marker = dest / MARKER
        return marker.is_file() and marker.read_text().strip() == asset.sha256
    return dest.is_file() and sha256_of(dest) == asset.sha256


def _escapes(root: Path, member: str) -> bool:
    target = (root / member).resolve()
    return member.startswith("/") or not target.is_relative_to(root.resolve())


def _open_tar(archive: Path, name: str) -> tarfile.TarFile:
    if name.endswith(".tar.zst"):
        return tarfile.open(fileobj=zstd_open(archive, "rb"), mode="r|")
    return tarfile.open(archive, "r:*")


def safe_extract(archive: Path, into: Path, name: str) -> None:
    """Extract a zip or tar archive, refusing any member that would land outside `into`."""
    if name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
                if _escapes(into, info.filename) or is_link:
                    raise WarmstartError(f"asset {name}: member {info.filename!r} would land outside "
                                         "its destination; refusing to extract it")
            zf.extractall(into)
        return
    with _open_tar(archive, name) as tf:
        try:
            # The "data" filter refuses absolute paths, "..", links pointing out and devices.
            tf.extractall(into, filter="data")
        except tarfile.FilterError as exc:
            raise WarmstartError(f"asset {name}: {exc}; refusing to extract it") from None


def place(asset: Asset, verified: Path, dest: Path) -> None:
    """Put a verified file (or its extracted contents) at dest, replacing what was there."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")
    try:
        if not asset.unpack:
            shutil.copyfile(verified, tmp)
            os.replace(tmp, dest)
            return
        tmp.mkdir()
        safe_extract(verified, tmp, asset.name)
        (tmp / MARKER).write_text(asset.sha256 + "\n")
        if dest.exists():
            old = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.old")
            os.replace(dest, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, dest)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def ensure(asset: Asset, dest: Path, store: AssetStore, *, offline: bool, scratch: Path) -> str:
    """Make dest hold the asset; returns where it came from."""
    if in_place(asset, dest):
        return "in place"
    cached = store.path(asset)
    if cached.is_file():
        local = scratch / asset.sha256
        try:
            sha256, size = copy_hashed(cached, local)
        except OSError as exc:
            sha256, size, why = "", 0, f"cannot be read: {explain(exc)}"
        else:
            why = f"does not match its sha256 {asset.sha256}"
        store.stats.bytes_read += size
        if sha256 == asset.sha256:
            store.stats.hits += 1
            place(asset, local, dest)
            return "from Drive"
        if sha256:
            why += f" (set aside as {set_aside(cached).name})"
        if offline:
            raise PreconditionUnmet(f"asset {asset.name}: {cached} {why}; run once without "
                                    "--offline to fetch it again")
    elif offline:
        raise PreconditionUnmet(f"--offline, but asset {asset.name} ({dest}) is not in the Drive "
                                f"cache {store.root}; run once without --offline to fetch it")
    url = source_url(asset)
    part = download(url, downloads_dir() / f"{asset.sha256}.part")
    faults.point("asset-download")
    sha256 = sha256_of(part)
    if sha256 != asset.sha256:
        part.unlink()
        raise WarmstartError(f"asset {asset.name}: {url} served a file with sha256 {sha256}, but the "
                             f"recipe says {asset.sha256}; fix the recipe's sha256 or the URL")
    store.stats.misses += 1
    try:
        store.stats.bytes_written += atomic_copy(part, cached)
    except OSError as exc:
        store.warnings.append(f"asset {asset.name} not cached on Drive: {explain(exc)}")
    place(asset, part, dest)
    part.unlink()
    return "downloaded"


def asset_table(assets: tuple[Asset, ...], drive: Path, workdir: Path) -> list[tuple[str, str, Path]]:
    """(state, name, destination) of each asset: "in place", "cached" on Drive, or "missing"."""
    store = AssetStore(drive)
    return [(store.state(a, a.destination(workdir)), a.name, a.destination(workdir)) for a in assets]
