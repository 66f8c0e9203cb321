"""warmstart's own tools that the notebook's interpreter already has, copied from there (stdlib only).

A Colab image ships 12 of the 18 distributions of warmstart's tools, at the versions their lock
pins: that lock is compiled against the image (requirements/colab-*/, whose header names the 6 it
adds), as a recipe's is. So warmstart.sh takes those from the image, as a recipe keeps what the
image ships, and reads from Drive only the wheels of the rest: 0.5 MB where it read 7 MB (the
largest, zstandard's, 5 MB, among the image's).

Copied into the tools' own folder, not shared (a virtualenv with the system's site-packages): the
folder stays the lock's alone, whatever `pip install` does in the notebook later. Each file is
checked against its distribution's RECORD as it is copied. One that is not whole there (a file
edited or gone, one RECORD gives no hash for), or that reaches outside its site folder (a `.pth`
file, an editable install; files beside the interpreter other than its console scripts, which
the tools never run) is left to its wheel, as one the image lacks. Bytecode is not copied: the
tools' is written later, as for those installed from wheels (warmstart.tools).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import os
import site
from collections.abc import Iterable, Mapping
from pathlib import Path

from .distinfo import distributions
from .locktext import canonical
from .transfer import writing

FILE_MOST = 64 << 20  # bytes of one file read at once: a tool's largest (zstandard's library) is 24 MB


def site_folders() -> list[Path]:
    """Where this interpreter's installed distributions lie (a virtualenv's own, or the system's
    and the user's)."""
    found = [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]
    return [Path(folder) for folder in dict.fromkeys(found) if os.path.isdir(folder)]


def find(pins: Mapping[str, str], folders: Iterable[Path]) -> dict[str, Path]:
    """The `.dist-info` folder of each pin (canonical name: version) that one of `folders` holds
    at just that version."""
    found: dict[str, Path] = {}
    for name, version, where in distributions([str(folder) for folder in folders]):
        key = canonical(name)
        if pins.get(key) == version and key not in found and where.endswith(".dist-info"):
            found[key] = Path(where)
    return found


def _stated(value: str) -> bytes | None:
    """The digest a RECORD row states (`sha256=<urlsafe base64, unpadded>`), or None."""
    algorithm, _, encoded = value.partition("=")
    if algorithm != "sha256":
        return None
    try:
        digest = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except ValueError:
        return None
    return digest if len(digest) == hashlib.sha256().digest_size else None


class NotWhole(Exception):
    """The distribution is not as its RECORD says, or reaches outside its site folder."""


def _files(info: Path) -> list[tuple[str, bytes | None]]:
    """(path under the site folder, the sha256 RECORD states; None for RECORD itself) of each
    file to copy."""
    site_folder, record = info.parent, f"{info.name}/RECORD"
    with open(info / "RECORD", newline="", encoding="utf-8") as fh:
        rows = [row for row in csv.reader(fh) if row]
    files: list[tuple[str, bytes | None]] = []
    for path, stated, *_ in ([*row, "", ""] for row in rows):
        relative = os.path.normpath(path)
        if relative.startswith(("..", "/")):
            if os.path.basename(os.path.dirname(os.path.normpath(site_folder / path))) != "bin":
                raise NotWhole(f"{path} lies outside {site_folder}")
            continue  # a console script: the tools run their modules (`python -m invoke`)
        if relative.endswith(".pth"):
            raise NotWhole(f"{path} extends sys.path")
        if relative.endswith(".pyc"):
            continue
        digest = _stated(stated)
        if relative == record:
            files.append((relative, None))
        elif digest is None:
            raise NotWhole(f"RECORD states no sha256 for {path}")
        else:
            files.append((relative, digest))
    if (record, None) not in files:
        raise NotWhole("RECORD does not list itself")
    return files


def copy(info: Path, into: Path) -> None:
    """The files of the distribution whose `.dist-info` folder is `info` into the site folder
    `into`, each checked against RECORD; raises NotWhole, WriteFailed (the disk of `into`) or
    OSError with nothing of it left there."""
    made: list[Path] = []
    try:
        for relative, digest in _files(info):
            source, target = info.parent / relative, into / relative
            with open(source, "rb") as fh:
                data = fh.read(FILE_MOST + 1)
                mode = os.fstat(fh.fileno()).st_mode & 0o777
            if len(data) > FILE_MOST:
                raise NotWhole(f"{relative} is larger than a tool's file is ({FILE_MOST >> 20} MiB)")
            if digest is not None and hashlib.sha256(data).digest() != digest:
                raise NotWhole(f"{relative} is not as its RECORD says")
            for folder in reversed(target.parents):
                if not folder.exists() and folder.is_relative_to(into):
                    folder.mkdir()
                    made.append(folder)
            # A file already there is not this copy's to replace; a full disk is said as such.
            with writing(target, disk_only=True), open(target, "xb") as out:
                made.append(target)
                out.write(data)
            os.chmod(target, mode)
    except (csv.Error, ValueError) as exc:  # a RECORD that is not UTF-8 text, a path in it with a NUL
        _undo(made)
        raise NotWhole(f"its RECORD cannot be used ({exc})") from None
    except BaseException:
        _undo(made)
        raise


def _undo(made: list[Path]) -> None:
    """Remove what a copy made, the files and then the folders they are in."""
    for path in reversed(made):
        path.unlink() if path.is_file() else path.rmdir()
