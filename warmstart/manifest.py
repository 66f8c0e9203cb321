"""What a locked wheel puts into an environment, as one digest: how a snapshot is trusted.

A snapshot comes from Drive or a team store, where anybody with write access could rewrite an
archive and the index that vouches for it together. So its files are not trusted because the
index says so: each distribution's installed files must hash, together, to the digest that
`invoke lock` recorded in the lock (in git) from the wheel whose sha256 the lock names.

The digest covers every file of the wheel but its RECORD, keyed by where an installer puts it:
`site/<path>` (site-packages, `.data/purelib` and `.data/platlib` included), `scripts/<name>`
(`.data/scripts`, whose `#!python` line an installer rewrites), `data/<path>`, `headers/<path>`.
What installers generate is not taken from a snapshot: bytecode is not packed, console scripts
are written anew from the (verified) entry_points.txt, RECORD anew from the verified files.
Files a recipe patch changed are checked as the originals the patch marker keeps, plus the
recipe's own patch applied to them.
"""

from __future__ import annotations

import base64
import configparser
import csv
import hashlib
import os
import posixpath
import re
import stat
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

from packaging.utils import NormalizedName

from .patches import MARKER, Patch, apply
from .target import dist_name, record_digest, record_hash, record_rows, record_text
from .transfer import untrusted_json, writing

# Files in a .dist-info folder that installers (and warmstart's patches) write, not the wheel.
GENERATED = frozenset({"RECORD", "INSTALLER", "REQUESTED", "direct_url.json", "uv_cache.json", MARKER})
GENERATED_LIMIT = 64 << 10  # none of them is bigger; a bigger one is not one of them
_WHEEL_SIGNATURES = ("/RECORD", "/RECORD.jws", "/RECORD.p7s")
_SHEBANG = re.compile(rb"^#!python(w)?(\s.*)?$")
CHUNK = 1 << 20


class Untrusted(Exception):
    """The files are not those of the locked wheels; the message says which and how."""


def digest(entries: Iterable[tuple[str, str]]) -> str:
    return hashlib.sha256("".join(f"{key}\t{sha}\n" for key, sha in sorted(entries)).encode()).hexdigest()


def _sha256(stream: IO[bytes], first_line: bytes | None = None) -> str:
    """The sha256 of what is left of a stream, `first_line` (in place of the line read) first."""
    hasher = hashlib.sha256()
    if first_line is not None:
        hasher.update(first_line)
    while chunk := stream.read(CHUNK):
        hasher.update(chunk)
    return hasher.hexdigest()


def _record_sha256(stated: str) -> str | None:
    """The sha256 (hex) a RECORD row states (`sha256=<urlsafe base64>`), or None."""
    algorithm, _, encoded = stated.partition("=")
    if algorithm != "sha256" or len(encoded) != 43:
        return None
    try:
        raw = base64.b64decode(encoded + "=", altchars=b"-_", validate=True)
    except ValueError:
        return None
    return raw.hex() if len(raw) == 32 else None


def _wheel_key(member: str) -> str:
    """Where an installer puts a wheel member, as the digest names it."""
    top, _, rest = member.partition("/")
    if top.endswith(".data") and rest:
        scheme, _, path = rest.partition("/")
        if scheme in ("purelib", "platlib"):
            return f"site/{path}"
        return f"{scheme}/{path}"  # scripts, data, headers
    return f"site/{member}"


def wheel_digest(wheel: Path) -> str:
    """The digest of what a wheel installs (lock time: the wheel's sha256 was checked)."""
    entries = []
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            if info.is_dir() or (".dist-info/" in info.filename and info.filename.endswith(_WHEEL_SIGNATURES)):
                continue
            key = _wheel_key(info.filename)
            with archive.open(info) as member:
                if key.startswith("scripts/"):
                    first = member.readline()
                    entries.append((key, _sha256(member, b"#!python\n" if _SHEBANG.match(first.rstrip()) else first)))
                else:
                    entries.append((key, _sha256(member)))
    return digest(entries)


@dataclass
class Dist:
    """One distribution found in a tree: its files and what the digest makes of them."""

    name: NormalizedName
    info: PurePosixPath  # its .dist-info folder, relative to the prefix
    files: dict[str, str] = field(default_factory=dict)  # prefix-relative path -> digest key
    metadata: list[str] = field(default_factory=list)  # generated .dist-info files (prefix-relative)
    scripts: dict[str, str] = field(default_factory=dict)  # console and GUI scripts: name -> "module:func"
    recorded: dict[str, str] = field(default_factory=dict)  # path -> the hash its RECORD states, as written


def entry_scripts(text: str) -> dict[str, str]:
    """Console and GUI scripts of an entry_points.txt: name -> "module:function"."""
    parser = configparser.ConfigParser(delimiters=("=",), interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # names keep their case
    try:
        parser.read_string(text)
    except configparser.Error as exc:
        raise Untrusted(f"its entry_points.txt cannot be read ({exc.__class__.__name__})") from None
    return {name: value.strip() for section in ("console_scripts", "gui_scripts") if parser.has_section(section)
            for name, value in parser.items(section)}


Signature = tuple[int, int, int, int]  # a file's inode, size, mtime and ctime (ns): what a change changes


def signature(info: os.stat_result) -> Signature:
    return info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


def _walk(root: str) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """Everything below `root`, folders before what they hold, as (path relative to it, entry);
    links are not followed. The entry's type comes with the listing: no file is looked at again."""
    folders = [""]
    while folders:
        inside = folders.pop()
        with os.scandir(os.path.join(root, inside)) as listing:
            for entry in listing:
                rel = os.path.join(inside, entry.name)
                yield rel, entry
                if entry.is_dir(follow_symlinks=False):
                    folders.append(rel)


def _below(path: str, folder: str) -> str | None:
    """`path` relative to `folder` (both relative and normal), or None when it lies elsewhere."""
    if folder == ".":
        return path
    if path == folder:
        return "."
    return path[len(folder) + 1:] if path.startswith(f"{folder}/") else None


class Tree:
    """An environment's files below a prefix (a snapshot's staging folder, or the prefix itself),
    judged against the lock: `check` raises Untrusted; `renew` writes scripts and RECORDs."""

    def __init__(self, root: Path, prefix: Path, site: PurePosixPath, python: Path,
                 listing: list[tuple[str, os.DirEntry[str]]] | None = None) -> None:
        self.root, self.prefix, self.python = root, prefix, python
        self.hashes: dict[str, str] = {}  # prefix-relative path -> sha256 (hex) of the file, as checked
        self.sizes: dict[str, int] = {}  # prefix-relative path -> size, of the files check looked at
        self.listing = listing  # everything below the root, when of_staging walked it
        self.site = site  # site-packages, relative to the prefix (lib/python3.12/site-packages)
        self.base = PurePosixPath(os.path.normpath(site / "../../.."))  # the install scheme's base
        self.bin = self.base / "bin"

    @classmethod
    def of_staging(cls, root: Path, target_path: Iterable[str], prefix: Path, python: Path) -> Tree:
        """The tree a snapshot unpacked: its site-packages is the one folder holding .dist-info
        folders, and must be one of the target's."""
        listing = list(_walk(str(root)))  # walked once: check(complete) looks at the same
        sites = {PurePosixPath(os.path.dirname(rel) or ".") for rel, entry in listing
                 if entry.name.endswith(".dist-info") and entry.is_dir(follow_symlinks=False)}
        allowed = {PurePosixPath(os.path.relpath(p, prefix)) for p in target_path if Path(p).is_relative_to(prefix)}
        if len(sites) != 1 or not sites <= allowed:
            raise Untrusted(f"its distributions lie in {', '.join(map(str, sorted(sites))) or 'no folder'}, "
                            "not in one site-packages folder of the target")
        return cls(root, prefix, sites.pop(), python, listing)

    def _key(self, rel: str, dist: Dist) -> str | None:
        """The digest key of a prefix-relative path a RECORD lists (None: a generated file).
        Paths are strings here: this runs for every file of every restore."""
        parent, name = posixpath.split(rel)
        if (inside := _below(rel, str(self.site))) is not None:
            return None if parent == str(dist.info) and name in GENERATED else f"site/{inside}"
        if parent == str(self.bin):
            return None if name in dist.scripts else f"scripts/{name}"
        inside = _below(rel, str(self.base)) or rel
        parts = inside.split("/")
        if parts[:2] == ["include", "site"] and len(parts) > 4:
            return "headers/" + "/".join(parts[4:])
        return f"data/{inside}"

    def read(self, names: Iterable[NormalizedName], only: bool = True) -> dict[NormalizedName, Dist]:
        """Each named distribution's files, from its RECORD (which only says which files to look
        at). `only`: the tree may hold no other distribution (a snapshot)."""
        wanted, found = set(names), {}
        site = self.root / self.site
        for info in sorted(site.glob("*.dist-info")) if site.is_dir() else ():
            name = dist_name(info)
            if name not in wanted or name in found:
                if only:
                    raise Untrusted(f"it holds {info.name}, which is no distribution it was made of")
                continue
            dist = found[name] = Dist(name, PurePosixPath(info.relative_to(self.root)))
            try:
                record = record_rows(self._text(info / "RECORD", 16 << 20))
                entry_points = info / "entry_points.txt"
                dist.scripts = entry_scripts(self._text(entry_points, 1 << 20)) if entry_points.exists() else {}
            except (OSError, UnicodeDecodeError, csv.Error) as exc:
                raise Untrusted(f"the RECORD of {info.name} cannot be read ({exc.__class__.__name__})") from None
            own_record = f"{dist.info}/RECORD"
            for row in record:
                rel = posixpath.normpath(posixpath.join(self.site, row[0]))
                if rel.startswith("/") or rel.split("/", 1)[0] == "..":
                    raise Untrusted(f"{info.name}'s RECORD names {row[0]!r}, outside the environment")
                # bytecode is never packed (Python writes it again), judged by pathlib's suffix as
                # pack judges it (a file named ".pyc" has none); RECORD is written anew
                if (rel.endswith(".pyc") and PurePosixPath(rel).suffix == ".pyc") or rel == own_record:
                    continue
                key = self._key(rel, dist)
                if key is not None:
                    dist.files[rel] = key
                    if len(row) > 1 and row[1]:  # decoded only when trusted (check's `installed`)
                        dist.recorded[rel] = row[1]
                elif posixpath.dirname(rel) == str(dist.info):
                    dist.metadata.append(rel)
                # else a console script: written anew from entry_points.txt
        missing = wanted - set(found)
        if missing:
            raise Untrusted(f"it lacks {', '.join(sorted(missing))}")
        return found

    def _text(self, path: Path, limit: int) -> str:
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            raise Untrusted(f"{os.path.relpath(path, self.root)} is not a file of at most {limit} bytes")
        return path.read_text(encoding="utf-8")

    def _regular(self, rel: str) -> str:
        path = os.path.join(self.root, rel)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            raise Untrusted(f"it lacks {rel}, which its RECORD lists") from None
        if not stat.S_ISREG(info.st_mode):
            raise Untrusted(f"{rel} is not a regular file")
        self.sizes[rel] = info.st_size
        return path

    def _hash(self, rel: str, key: str) -> str:
        with open(self._regular(rel), "rb") as fh:
            if not key.startswith("scripts/"):
                return _sha256(fh)
            first = fh.readline()  # an installer rewrote `#!python` to name the target's interpreter
            shebang = re.match(rb"#!(\S+)", first)
            interpreter = Path(os.fsdecode(shebang.group(1))) if shebang else None
            ours = interpreter and interpreter.name.startswith("python") and interpreter.is_relative_to(self.prefix)
            return _sha256(fh, b"#!python\n" if ours or _SHEBANG.match(first.rstrip()) else first)

    def _still_known(self, rel: str, key: str, known: Mapping[str, tuple[str, Signature]]) -> str | None:
        """A hash taken while the file was unpacked, when the file is still exactly that one (the
        same inode, size and times, one link: tar replaces a file by unlinking it, and any
        change moves its ctime); else None."""
        if rel in known and not key.startswith("scripts/"):
            digest_hex, was = known[rel]
            now = os.lstat(os.path.join(self.root, rel))
            if stat.S_ISREG(now.st_mode) and now.st_nlink == 1 and signature(now) == was:
                self.sizes[rel] = now.st_size
                return digest_hex
        return None

    def check(self, dists: dict[NormalizedName, Dist], expected: dict[NormalizedName, str | None],
              patches: tuple[Patch, ...] | None = (), complete: bool = True,
              known: Mapping[str, tuple[str, Signature]] | None = None, installed: bool = False) -> None:
        """Each distribution's files hash to the lock's digest (a patched file as its original,
        when it is exactly the recipe's patch of it; `patches` None: the environment's own
        record of its patches is trusted, as in the environment warmstart just patched);
        `complete`: nothing else is there. `known`: hashes already taken (warmstart.unpack), by
        path. `installed`: the files are those an installer just copied out of wheels it checked
        against the lock's sha256 (uv --require-hashes), so the hashes their RECORDs state (the
        wheels') stand for them, and only what the installer wrote itself (scripts) is read."""
        jobs = [(rel, key) for dist in dists.values() for rel, key in dist.files.items()]
        hashes = {rel: got for rel, key in jobs if (got := self._still_known(rel, key, known or {}))}
        if installed:
            for dist in dists.values():
                for rel, key in dist.files.items():
                    stated = _record_sha256(dist.recorded.get(rel, ""))
                    if stated and not key.startswith("scripts/"):
                        self._regular(rel)  # listed, so there, and a file
                        hashes[rel] = stated
        left = [(rel, key) for rel, key in jobs if rel not in hashes]
        with ThreadPoolExecutor(2) as pool:  # hashlib hashes big files without the GIL
            hashes.update(zip([rel for rel, _key in left], pool.map(lambda job: self._hash(*job), left), strict=True))
        # what RECORD will say of each file (a script's digest is of its normalised text: not that)
        self.hashes = {rel: hashes[rel] for rel, key in jobs if not key.startswith("scripts/")}
        for name, dist in dists.items():
            self._originals(dist, hashes, None if patches is None else [p for p in patches if p.distribution == name])
            for rel in dist.metadata:
                self._text(self.root / rel, GENERATED_LIMIT)
            if expected.get(name) is None:
                raise Untrusted(f"the lock records no digest of {name}'s files (re-lock with `invoke lock`)")
            if digest((key, hashes[rel]) for rel, key in dist.files.items()) != expected[name]:
                raise Untrusted(f"the files of {name} are not those of the wheel the lock names")
        if not complete:
            return
        owned = {rel for dist in dists.values() for rel in [*dist.files, *dist.metadata, str(dist.info / "RECORD")]}
        owned |= {str(self.bin / script) for dist in dists.values() for script in dist.scripts}
        for rel, entry in self.listing if self.listing is not None else _walk(str(self.root)):
            if entry.is_symlink():  # a wheel holds none
                raise Untrusted(f"it holds a link, {rel}, which no locked wheel installs")
            if not entry.is_dir(follow_symlinks=False) and rel not in owned:
                raise Untrusted(f"it adds {rel}, which no locked wheel installs")

    def _originals(self, dist: Dist, hashes: dict[str, str], patches: list[Patch] | None) -> None:
        """A file a recipe patch changed counts as its original, when it is exactly the recipe's
        patch of the original the marker keeps."""
        marker = self.root / dist.info / MARKER
        if not marker.exists():
            return
        try:
            kept = untrusted_json(self._text(marker, 16 << 20))["files"]
            originals = {str(self.site / path): entry["original"] for path, entry in kept.items()}
        except (ValueError, KeyError, TypeError, AttributeError):  # Unreadable is a ValueError
            raise Untrusted(f"{dist.info.name}'s patch record cannot be read") from None
        for rel, original in originals.items():
            if not isinstance(original, str) or rel not in dist.files:
                raise Untrusted(f"{dist.info.name}'s patch record names {rel}, which it does not install")
            if patches is not None:
                text: str | None = original
                for diff in (d for p in patches for d in p.files if str(self.site / d.path) == rel):
                    text = apply(text, diff) if text is not None else None
                if text is None or hashlib.sha256(text.encode()).hexdigest() != hashes[rel]:
                    raise Untrusted(f"{rel} is not the recipe's patch of {dist.name}'s own file")
            hashes[rel] = hashlib.sha256(original.encode()).hexdigest()

    def _in_site(self, rel: str) -> str:
        """A prefix-relative path as a RECORD names it: relative to site-packages."""
        inside = _below(rel, str(self.site))
        return os.path.relpath(rel, self.site) if inside is None else inside

    def renew(self, dists: dict[NormalizedName, Dist]) -> None:
        """Console scripts written anew for this target, and each RECORD from the files checked."""
        for dist in dists.values():
            for script, target in dist.scripts.items():
                module, _, func = target.split("[")[0].strip().partition(":")
                path = self.root / self.bin / script
                with writing(path, disk_only=True):  # a full disk is said as such, naming the file
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.unlink(missing_ok=True)
                    path.write_text(_SCRIPT.format(python=self.python, module=module.strip(),
                                                   name=func.strip().split(".")[0], call=func.strip()))
                    path.chmod(0o755)
            rows = []
            for rel in sorted([*dist.files, *dist.metadata, *(str(self.bin / s) for s in dist.scripts)]):
                file = os.path.join(self.root, rel)
                if rel in self.hashes:  # hashed by check() already: not read twice
                    size = self.sizes[rel] if rel in self.sizes else os.stat(file).st_size
                    rows.append([self._in_site(rel), record_digest(self.hashes[rel]), str(size)])
                else:
                    data = Path(file).read_bytes()
                    rows.append([self._in_site(rel), record_hash(data), str(len(data))])
            rows.append([self._in_site(str(dist.info / "RECORD")), "", ""])
            with writing(record := self.root / dist.info / "RECORD", disk_only=True):
                record.write_text(record_text(rows))


# The console script pip writes for an entry point "module:function".
_SCRIPT = """#!{python}
# -*- coding: utf-8 -*-
import re
import sys
from {module} import {name}
if __name__ == "__main__":
    sys.argv[0] = re.sub(r"(-script\\.pyw|\\.exe)?$", "", sys.argv[0])
    sys.exit({call}())
"""
