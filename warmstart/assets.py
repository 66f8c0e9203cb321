"""Recipe assets (model files, data): kept on Drive by sha256, verified on every use.

The store's `assets/<sha256>` holds each file once, whichever recipes declare it.
A restore copies it off Drive while hashing, and places it (or extracts it) at its destination
under a temporary name first, so a destination is either whole and verified or untouched. On a
FUSE Drive (Colab's) each file is written there by a child, bounded (PlacedFiles.put).

warmstart replaces only what it placed. A file asset's destination is replaced only when the
ledger of placed files (beside the destination: on Drive for the workdir, in warmstart's cache
folder for the rest) names that very file; an archive is merged into its folder, whose marker
lists the members warmstart put there: those alone are ever replaced or removed, and any other
file in the way is refused (exit 2) rather than overwritten. Beside a destination it removes only
the temporary files of killed writes of that destination, its marker or the ledger
(_writer_beside).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from . import faults, flock, home
from .disks import kind_of, not_a_folder, real, regular_file, stopped_answering
from .download import Downloader, Job, partial_dir
from .drivework import DriveWork
from .errors import BadInput, PreconditionUnmet, WarmstartError
from .recipe import Asset
from .settings import ASSET_MIRROR
from .store import Stalled
from .tiered import TieredStore
from .transfer import (
    atomic_write_bytes,
    part_name,
    parts_of,
    read_head,
    read_untrusted_json,
    sha256_of,
    writing,
    zstd_open,
)

KIND = "assets"
# Inside an unpacked folder: the sha256 of the archive it came from, then one member a line.
MARKER = ".warmstart-asset"
MARKER_MOST = 16 << 20  # read no further: a marker of more is none of warmstart's
_MARKER_HEAD = re.compile(r"-|[0-9a-f]{64}")
LEDGER_WAIT = 30.0  # seconds a run waits for another's write of the placed files' ledger


def state(store: TieredStore, asset: Asset, dest: Path) -> str:
    """"in place" at dest, "cached" on Drive, or "missing"."""
    if in_place(asset, dest):
        return "in place"
    return "cached" if asset.sha256 in store.names(KIND) else "missing"


def source_url(asset: Asset, environ: Mapping[str, str] = os.environ) -> str:
    """The asset's URL, or the same file name under WARMSTART_ASSET_MIRROR when that is set."""
    mirror = ASSET_MIRROR.get(environ)
    return f"{mirror.rstrip('/')}/{asset.name}" if mirror else asset.url


def in_place(asset: Asset, dest: Path) -> bool:
    if asset.unpack:
        return _marker(dest)[:1] == [asset.sha256]
    return dest.is_file() and not dest.is_symlink() and sha256_of(dest) == asset.sha256


class PlacedFiles:
    """The files warmstart placed, with their sha256: on Drive for destinations under the Drive
    root (they outlive the VM together), in warmstart's cache folder for the others."""

    def __init__(self, store: TieredStore, environ: Mapping[str, str] = os.environ) -> None:
        self.store = store
        self.environ = environ
        self.local = home.placed(environ)

    def _ledger(self, dest: Path) -> Path:
        return self.store.placed_ledger if dest.is_relative_to(self.store.drive) else self.local

    def _read(self, ledger: Path) -> dict[str, list[str]]:
        """Each destination's sha256: of the file warmstart placed there; while it replaced it,
        of either (a list: the one it replaced, then the new one)."""
        try:  # the workdir's ledger lies on Drive
            return {str(k): [str(sha) for sha in v] if isinstance(v, list) else [str(v)]
                    for k, v in read_untrusted_json(ledger, 16 << 20).items()}
        except (OSError, ValueError):
            return {}

    def owns(self, dest: Path) -> bool:
        """dest is a file warmstart placed there, unchanged since."""
        recorded = self._read(self._ledger(dest)).get(str(dest), [])
        return bool(recorded) and dest.is_file() and sha256_of(dest) in recorded

    def placed(self, dest: Path) -> str | None:
        """The sha256 of the file warmstart last placed at dest, whatever is there now."""
        recorded = self._read(self._ledger(dest)).get(str(dest))
        return recorded[-1] if recorded else None

    def replacing(self, dest: Path, sha256: str) -> None:
        """Before dest is replaced with the file `sha256`: either is warmstart's, so a run killed
        between the rename and `record` leaves a file the next finds its own, whichever it is."""
        self._write(dest, [*self._read(self._ledger(dest)).get(str(dest), []), sha256])

    def record(self, dest: Path, sha256: str) -> None:
        self._write(dest, [sha256])

    def _write(self, dest: Path, sha256s: list[str]) -> None:
        ledger = self._ledger(dest)
        try:
            # Runs on this machine one at a time (two recipes may place assets at once): read and
            # written apart, the later write dropped what the other recorded meanwhile. Bounded:
            # the ledger on a Drive that stopped answering holds no other run up for longer.
            with (flock.held(home.private(self.environ) / "placed.lock", timeout=LEDGER_WAIT),
                  _writer_beside(ledger, self, unpack=False)):
                # one sha256 as a string: the ledger as warmstart wrote it before it kept two
                placed = self._read(ledger) | {str(dest): sha256s}
                shown = {k: v[0] if len(v) == 1 else v for k, v in placed.items()}
                self.put(ledger, (json.dumps(shown, indent=1, sort_keys=True) + "\n").encode())
        except OSError:
            pass  # unrecorded, the file is left alone next time rather than replaced

    def write(self, verified: Path, dest: Path) -> None:
        """The verified file as dest, atomically."""
        with writing(dest):  # a full disk is said as dest's (a copy's error names the source)
            self.put(dest, verified)

    def by_child(self, dest: Path) -> bool:
        """Whether dest is written by a child (it lies on a FUSE Drive: see put)."""
        return dest.is_relative_to(self.store.drive) and self.store.here.is_fuse

    def put(self, dest: Path, data: bytes | Path) -> None:
        """A file of warmstart's at dest, atomically. On Drive as the store writes its own files
        there: on a FUSE mount by a child, bounded (Stalled, once Drive stopped answering: a
        thread caught in that write would hold the run)."""
        if dest.is_relative_to(self.store.drive):
            self.store.here.write_file(dest, data)
        elif isinstance(data, Path):
            _copy_here(data, dest)
        else:
            atomic_write_bytes(dest, data)


def _copy_here(verified: Path, dest: Path) -> None:
    """A copy on this machine's disk, renamed into place, not flushed to the disk first: that cost
    7 ms for hyperlpr's models on every wiped VM, whose disk a crash takes with it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = part_name(dest)
    try:
        shutil.copyfile(verified, tmp)
        faults.point("asset-write")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _escapes(root: Path, member: str) -> bool:
    return member.startswith("/") or not real(root / member).is_relative_to(real(root))


def _open_tar(archive: Path, name: str) -> tarfile.TarFile:
    if name.endswith(".tar.zst"):
        return tarfile.open(fileobj=zstd_open(archive, "rb"), mode="r|")
    return tarfile.open(archive, "r:*")


def _too_big(name: str, limit: int) -> WarmstartError:
    return WarmstartError(f"asset {name} expands to more than {limit / 2**20:.0f} MiB; if that is "
                          "meant, set max_unpacked_mib for it in the recipe")


def safe_extract(archive: Path, into: Path, name: str, limit: int) -> None:
    """Extract a zip or tar archive, refusing any member that would land outside `into`, and an
    archive whose members add up to more than `limit` bytes (counted before they are written)."""
    if name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
                if _escapes(into, info.filename) or is_link:
                    raise WarmstartError(f"asset {name}: member {info.filename!r} would land outside "
                                         "its destination; refusing to extract it")
            # zipfile reads no member past its declared size, so the declared sizes are the bound.
            if sum(info.file_size for info in zf.infolist()) > limit:
                raise _too_big(name, limit)
            zf.extractall(into)
        return
    total = 0

    def bounded(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        nonlocal total
        # The "data" filter refuses absolute paths, "..", links pointing out and devices.
        member = tarfile.data_filter(member, path)
        total += member.size
        if total > limit:
            raise _too_big(name, limit)
        return member

    with _open_tar(archive, name) as tf:
        try:
            tf.extractall(into, filter=bounded)
        except tarfile.FilterError as exc:
            raise WarmstartError(f"asset {name}: {exc}; refusing to extract it") from None


def _not_ours(asset: Asset, path: Path, what: str, whose: str = "which warmstart did not place") -> BadInput:
    return BadInput(f"asset {asset.name}: {path} {what}, {whose}; move it away "
                    "(or point the asset's dest elsewhere) and run again")


def in_the_way(asset: Asset, dest: Path, placed: PlacedFiles) -> BadInput | None:
    """What of the user's keeps the asset from dest, as the refusal that says it: a link, or the
    wrong kind of thing, at dest; a file there that warmstart did not place; a file or link where
    a folder above dest goes. None when nothing does. The run asks before anything changes
    (bootstrap.prepare), `place` again before it writes; what an archive's members meet in its
    folder is known once it is unpacked (_merge_into)."""
    if blocking := not_a_folder(dest.parent):
        return _not_ours(asset, blocking, f"is a {kind_of(blocking)} where a folder goes")
    if dest.is_symlink() or (dest.exists() and dest.is_dir() != asset.unpack):
        return _not_ours(asset, dest, f"is a {kind_of(dest)}")
    if not asset.unpack and dest.exists() and not placed.owns(dest):
        if placed.placed(dest):  # the user's now: a fine-tuned model saved over it, say
            return _not_ours(asset, dest, "was changed since warmstart placed it", "so it is yours now")
        return _not_ours(asset, dest, "holds another file")
    return None


def refuse_any_in_the_way(destinations: Mapping[Asset, Path], store: TieredStore) -> None:
    """Raise the refusal (BadInput) of the first asset something of the user's keeps from its
    destination in `destinations`."""
    placed = PlacedFiles(store)
    for asset, dest in destinations.items():
        if refused := in_the_way(asset, dest, placed):
            raise refused


def place(asset: Asset, verified: Path, dest: Path, placed: PlacedFiles, scratch: Path) -> None:
    """Put a verified file (or its extracted contents) at dest, replacing only what warmstart put
    there before; anything else in the way is refused (BadInput) with nothing changed. `scratch`:
    a folder of the run's on local disk."""
    if refused := in_the_way(asset, dest, placed):
        raise refused
    try:
        with _writer_beside(dest, placed, asset.unpack):
            if asset.unpack:
                _unpack(asset, verified, dest, placed, scratch)
                return
            # Either file is warmstart's from now on: a run killed before `record` leaves one that
            # the next finds its own, whichever it is.
            placed.replacing(dest, asset.sha256)
            placed.write(verified, dest)
            faults.point("asset-place")
            placed.record(dest, asset.sha256)
    except Stalled as exc:
        raise PreconditionUnmet(stopped_answering(f"asset {asset.name}:", dest, str(exc))) from None


@contextmanager
def _writer_beside(dest: Path, placed: PlacedFiles, unpack: bool) -> Iterator[None]:
    """Held while dest (an asset's place, or the ledger) is written under a temporary name beside
    it (transfer.part_name) and renamed into place. A run killed meanwhile leaves that file (or
    an archive's folder) there: the next that writes dest, alone in its folder, removes what
    writers of dest left there (see flock.writing_in), and in an archive's folder what writers of
    its marker left (only writers of dest write it). On a FUSE Drive a child writes dest, and
    ends its write when the run is killed (its own session), so nothing is left to remove; and
    the run lists no folder there."""
    if placed.by_child(dest):
        yield
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    written = [dest, dest / MARKER] if unpack else [dest]
    with flock.writing_in(dest.parent, lambda: _remove(part for path in written for part in parts_of(path))):
        yield


def _remove(parts: Iterable[Path]) -> None:
    for part in parts:
        try:
            if part.is_dir():
                shutil.rmtree(part)
            else:
                part.unlink(missing_ok=True)
        except OSError:
            pass  # a courtesy: the next run that writes there tries again


def _unpack(asset: Asset, archive: Path, dest: Path, placed: PlacedFiles, scratch: Path) -> None:
    """Unpacked beside dest, then each member renamed into place; on a FUSE Drive unpacked in
    `scratch`, then each member copied into place by a child (placed.write), which a Drive that
    stops answering holds instead of the run."""
    by_child = placed.by_child(dest)
    tmp = scratch / f"{asset.sha256}.unpacked" if by_child else part_name(dest)
    try:
        tmp.mkdir(parents=True)
        with writing(tmp if by_child else dest):  # a full disk names the folder (the OS's error names no file)
            safe_extract(archive, tmp, asset.name, asset.unpack_limit(archive.stat().st_size))
        _merge_into(asset, tmp, dest, placed, placed.write if by_child else _rename_into)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _rename_into(member: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(member, dest)


def _marker(dest: Path) -> list[str]:
    """The lines of dest's marker: the archive's sha256 (or `-` while its members move), then the
    members; none where there is no marker, or one that is not warmstart's (larger than a marker
    is, or beginning otherwise). Its names are file names, bytes (_write_marker)."""
    try:
        raw = read_head(dest / MARKER, MARKER_MOST)
    except OSError:
        return []
    lines = os.fsdecode(raw).split("\n")[:-1] if len(raw) <= MARKER_MOST else []
    return lines if lines and _MARKER_HEAD.fullmatch(lines[0]) else []


def _write_marker(placed: PlacedFiles, marker: Path, head: str, members: Iterable[str]) -> None:
    """The marker's lines written as the file names they are: a tar made on Windows names its
    files in its code page (GBK for a Chinese plate's photo), not UTF-8, and os.fsencode gives
    back the bytes the unpacked file is named by."""
    placed.put(marker, os.fsencode("".join(f"{line}\n" for line in [head, *members])))


def _inside(dest: Path, member: str) -> bool:
    """A member the marker names lies inside dest, reached through no link: the marker lies on
    Drive, which may be shared, so `..`, an absolute path or a link would reach anywhere."""
    path = PurePosixPath(member)
    if not path.parts or path.is_absolute() or ".." in path.parts:
        return False
    return not any((dest / parent).is_symlink() for parent in path.parents if parent.parts)


def _members(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


def _merge_into(asset: Asset, staged: Path, dest: Path, placed: PlacedFiles,
                move: Callable[[Path, Path], None]) -> None:
    """Move extracted members into dest (`move`), which may hold the user's files: those stay.
    Members of the previous archive warmstart unpacked there (its marker lists them) are replaced
    or removed."""
    marker = dest / MARKER
    marked = _marker(dest)
    previous = {member for member in marked[1:] if _inside(dest, member)}
    new = _members(staged)
    for member in new:  # every clash first: refuse before anything moves
        target = dest / member
        for parent in target.relative_to(dest).parents:
            if (dest / parent).is_symlink() or (dest / parent).is_file():
                raise _not_ours(asset, dest / parent, "is in the way of an archive member")
        if target.is_symlink() or target.is_dir():
            raise _not_ours(asset, target, "is in the way of an archive member")
        if target.exists() and member not in previous and sha256_of(target) != sha256_of(staged / member):
            raise _not_ours(asset, target, "holds another file")
    # Every member that may lie here meanwhile is named before one moves, under the archive it
    # replaces (the folder is not in place until the last line): a run killed while they move
    # leaves none that the next version would not remove.
    _write_marker(placed, marker, marked[0] if marked else "-", sorted(previous | set(new)))
    for member in sorted(previous - set(new)):
        old = dest / member
        if old.is_file() and not old.is_symlink():
            old.unlink()
    for member in new:
        move(staged / member, dest / member)
        faults.point("asset-member")
    _write_marker(placed, marker, asset.sha256, new)  # last: the folder is whole


def ensure(asset: Asset, dest: Path, store: TieredStore, downloader: Downloader, work: DriveWork, *,
           offline: bool, scratch: Path) -> str:
    """Make dest hold the asset; returns where it came from. A download is queued for Drive."""
    if in_place(asset, dest):
        return "in place"
    placed = PlacedFiles(store)
    if asset.sha256 in store.names(KIND):
        verified = store.get(KIND, asset.sha256, scratch / asset.sha256, {asset.sha256})
        if verified:
            place(asset, verified, dest, placed, scratch)
            if verified not in store.from_team:
                return "from Drive"
            work.add(KIND, verified)  # Drive gets it too
            return "from the team cache"
        if offline:
            raise PreconditionUnmet(f"asset {asset.name}: {store.warnings[-1]}; run once without "
                                    "--offline to fetch it again")
    elif offline:
        raise PreconditionUnmet(f"--offline, but asset {asset.name} ({dest}) is not in the Drive "
                                f"cache {store.root / KIND}; run once without --offline to fetch it")
    url = source_url(asset)
    # Kept on local disk until placed, so a run killed midway resumes the download.
    local = partial_dir() / asset.sha256
    if not (regular_file(local) and sha256_of(local) == asset.sha256):
        downloader.fetch([Job(url, asset.sha256, local, asset.size, "the recipe")], f"download {asset.name[:30]}")
    faults.point("asset-download")
    store.stats.misses += 1
    place(asset, local, dest, placed, scratch)
    work.add(KIND, local)
    return "downloaded"


def asset_table(assets: tuple[Asset, ...], store: TieredStore, workdir: Path) -> list[tuple[str, str, Path, str]]:
    """(state, name, destination, what keeps it from there: "" when nothing) of each asset."""
    placed, rows = PlacedFiles(store), []
    for asset in assets:
        dest = asset.destination(workdir)
        now = state(store, asset, dest)
        refused = in_the_way(asset, dest, placed) if now != "in place" else None
        rows.append((now, asset.name, dest, str(refused or "")))
    return rows
