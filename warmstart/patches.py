"""Recipe patches: fixes to installed distributions, kept as data (one unified diff per patch).

A recipe may name a diff for a distribution it installs (`[[patches]]`), as patch-package and
conda-forge recipes do. After every install (and restore) `sync` makes the distribution's files
what the recipe asks for:

- a patch is applied only to the files its distribution's RECORD names, and only when each such
  file is exactly the one RECORD describes (its sha256): an edited file or another version is
  refused in one line (exit 2), before anything is written;
- hunks apply at their stated lines with their context matching exactly: no fuzz, no offset;
- the originals and what was written are kept in the distribution's own metadata folder
  (`WARMSTART-PATCHES.json`, listed in RECORD, so `pip uninstall` removes it), and RECORD gets
  the patched files' hashes, so `pip check`, `pip uninstall`, a snapshot and the next no-op run
  all see one consistent distribution;
- a patch dropped from the recipe is undone on the next run, from the kept originals;
- every file is replaced atomically, and the marker is written first and removed last, so a run
  killed midway leaves a state the next run recognises and finishes.

Reading (`survey`) changes nothing; it is what `prepare`, `status` and `--dry-run` use.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Set
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from packaging.utils import NormalizedName, canonicalize_name

from . import faults
from .config import read_bytes
from .errors import BadInput
from .target import dist_name, dist_version, read_record, record_hash, record_text
from .transfer import AtomicFile, read_untrusted_json

MARKER = "WARMSTART-PATCHES.json"
MARKER_FORMAT = 1

# States a distribution's patches can be in (the report's and status's words).
APPLIED, TO_APPLY, TO_UPDATE, TO_REMOVE = "applied", "to apply", "to update", "to remove"


class PatchRefused(BadInput):
    """A patch cannot be applied as the recipe asks (exit 2); the message names both."""


# -- the diff -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Hunk:
    old_start: int  # 1-based line of the first old line (for an empty old side: the line before)
    old: tuple[str, ...]  # lines with their line ends, as they must stand in the file
    new: tuple[str, ...]


@dataclass(frozen=True)
class FileDiff:
    path: str  # as RECORD names it: relative to the folder that holds the distribution
    hunks: tuple[Hunk, ...]


@dataclass(frozen=True)
class Patch:
    """One `[[patches]]` entry of a recipe: a diff for one distribution."""

    distribution: NormalizedName
    path: Path  # the diff file
    label: str  # how messages name it (relative to the recipe's project root)
    sha256: str
    files: tuple[FileDiff, ...]


def load_patch(distribution: str, path: Path, label: str) -> Patch:
    """Read and check a diff: it may only change existing files, by relative paths that stay
    inside the distribution's folder. Raises BadInput naming the file."""
    from unidiff import PatchSet  # only recipes with patches need the parser
    from unidiff.errors import UnidiffParseError

    try:
        raw = read_bytes(path)
        text = raw.decode("utf-8")
        parsed = PatchSet(io.StringIO(text))
    except FileNotFoundError:
        raise BadInput(f"{path}: patch file not found; fix the path (relative to the folder that holds "
                       "recipes/)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: cannot be read as a UTF-8 diff ({exc.__class__.__name__})") from None
    except UnidiffParseError as exc:
        raise BadInput(f"{path}: not a unified diff ({exc})") from None
    if not len(parsed):
        raise BadInput(f"{path}: holds no file changes; make it with `diff -u` or `git diff`")
    files = []
    for patched in parsed:
        where = _safe_path(patched.path)
        # A new or removed file names /dev/null (unidiff's is_added_file would also take a change to
        # an empty file, such as an __init__.py, for one).
        if (where is None or patched.is_binary_file or _strip(patched.source_file) != _strip(patched.target_file)
                or "/dev/null" in (patched.source_file, patched.target_file)):
            raise BadInput(f"{path}: {patched.path!r} is not a change to an existing file inside the "
                           "distribution; a patch may only change the files its distribution installed")
        files.append(FileDiff(where, tuple(_hunk(h) for h in patched)))
    return Patch(canonicalize_name(distribution), path, label, hashlib.sha256(raw).hexdigest(), tuple(files))


def _strip(name: str) -> str:
    return re.sub(r"^[ab]/", "", name)


def _safe_path(name: str) -> str | None:
    path = PurePosixPath(_strip(name))
    if not name or path.is_absolute() or ".." in path.parts or "\\" in name:
        return None
    return str(path)


def _hunk(hunk: Any) -> Hunk:
    old: list[str] = []
    new: list[str] = []
    previous: list[list[str]] = []  # the sides the last line went to
    for line in hunk:
        if line.line_type == "\\":  # "\ No newline at end of file": the last line has no end
            for side in previous:
                side[-1] = side[-1].removesuffix("\n")
            continue
        previous = [old, new] if line.line_type == " " else [old] if line.line_type == "-" else [new]
        for side in previous:
            side.append(line.value)
    start = hunk.source_start if old else hunk.source_start + 1  # "-0,0" / "-5,0": insert after line 5
    return Hunk(start, tuple(old), tuple(new))


def _lines(text: str) -> list[str]:
    """Split on "\\n" only, keeping it (str.splitlines would also split on form feeds)."""
    return re.findall(r"[^\n]*\n|[^\n]+\Z", text)


def apply(text: str, diff: FileDiff) -> str | None:
    """The file with the diff applied, or None when a hunk's old lines are not exactly where it
    says they are (a hunk without any, from `diff -U0`, only applies to an empty file)."""
    lines, shift = _lines(text), 0
    for hunk in diff.hunks:
        at = hunk.old_start - 1 + shift
        if at < 0 or lines[at:at + len(hunk.old)] != list(hunk.old):
            return None
        if not hunk.old and lines:  # no context to check it against: only an empty file takes it
            return None
        lines[at:at + len(hunk.old)] = hunk.new
        shift += len(hunk.new) - len(hunk.old)
    return "".join(lines)


# -- state ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class PatchState:
    """A distribution's patches, as the recipe asks for them and as the environment has them."""

    distribution: str
    version: str
    patches: tuple[str, ...]  # the recipe's patches for it (labels); empty: only an undo is left
    state: str  # APPLIED, TO_APPLY, TO_UPDATE or TO_REMOVE

    def as_json(self) -> dict[str, Any]:
        return {"distribution": self.distribution, "version": self.version, "patches": list(self.patches),
                "state": self.state}

    def describe(self) -> str:
        names = ", ".join(self.patches) or "(no longer in the recipe)"
        return f"{self.distribution} {self.version}: {names}: {self.state}"


@dataclass
class _Work:
    """A distribution's patches as the recipe wants them: everything `sync` would write,
    computed in full before anything is written."""

    name: NormalizedName
    info: Path
    wanted: list[Patch]
    files: dict[str, bytes] = field(default_factory=dict)  # path -> the content it must have
    modes: dict[str, int] = field(default_factory=dict)  # path -> its permission bits now
    record: list[list[str]] = field(default_factory=list)  # RECORD's rows afterwards
    marker: dict[str, Any] | None = None  # the marker afterwards (None: none)
    had_marker: bool = False
    changes: bool = False  # anything to write at all

    @property
    def version(self) -> str:
        return dist_version(self.info)

    @property
    def marker_row(self) -> str:
        return f"{self.info.name}/{MARKER}"

    def state(self) -> PatchState:
        labels = tuple(p.label for p in self.wanted)
        state = (APPLIED if not self.changes else TO_REMOVE if not self.wanted
                 else TO_UPDATE if self.had_marker else TO_APPLY)
        return PatchState(self.name, self.version, labels, state)


def _marker(info: Path) -> dict[str, Any] | None:
    """warmstart's record of what it patched in this distribution, checked for shape."""
    path = info / MARKER
    if not path.exists():
        return None
    try:
        data = read_untrusted_json(path, 16 << 20)  # a snapshot may have brought it
        files = data.get("files")
        if (data.get("format") != MARKER_FORMAT or not isinstance(data.get("patches"), list)
                or not isinstance(files, dict) or not all(
                    isinstance(f.get("original"), str) and isinstance(f.get("written"), list)
                    and isinstance(f.get("record"), list) and len(f["record"]) == 2 for f in files.values())):
            raise ValueError("not in warmstart's format")
        return data
    except (OSError, ValueError, AttributeError) as exc:
        name = dist_name(info)
        raise PatchRefused(f"{path}: warmstart's record of its patches is unreadable ({exc.__class__.__name__}); "
                           f"reinstall {name} (pip uninstall it, then run bootstrap again)") from None


def _plan(name: NormalizedName, info: Path, wanted: list[Patch], prefix: Path) -> _Work:
    """The distribution's files as the recipe wants them, or PatchRefused: nothing is written."""
    work = _Work(name, info, wanted)
    rows = read_record(info)
    recorded = {row[0]: row for row in rows}
    marker = _marker(info)
    work.had_marker = marker is not None
    kept: dict[str, Any] = marker["files"] if marker else {}
    touched = sorted({d.path for p in wanted for d in p.files} | set(kept))
    now = {path: _read_unchanged(work, path, recorded, kept, prefix) for path in touched}  # each file as it is
    # what each was before any patch: the marker keeps what an earlier patch replaced
    originals = {path: kept[path]["original"].encode("utf-8") if path in kept else now[path] for path in touched}
    desired = _patched(work, originals)

    new_rows = {}
    for path in touched:
        data = work.files[path] = desired[path].encode("utf-8")
        original_row = kept[path]["record"] if path in kept else recorded[path][1:]
        new_rows[path] = ([path, *original_row] if data == originals[path]
                          else [path, record_hash(data), str(len(data))])
    work.record = [new_rows.get(row[0], row) for row in rows if wanted or row[0] != work.marker_row]
    if wanted:
        work.marker = {
            "format": MARKER_FORMAT,
            "patches": [{"label": p.label, "sha256": p.sha256} for p in wanted],
            "files": {path: {"original": originals[path].decode("utf-8"),
                             "record": kept[path]["record"] if path in kept else recorded[path][1:],
                             "written": [record_hash(work.files[path])]} for path in touched},
        }
        if work.marker_row not in recorded:  # listed before RECORD's own row; its hash is filled in when written
            at = next((n for n, row in enumerate(work.record) if row[0] == f"{info.name}/RECORD"), len(work.record))
            work.record.insert(at, [work.marker_row, "", ""])
    work.changes = (marker != work.marker or now != work.files
                    or _rows_without_marker(rows, work) != _rows_without_marker(work.record, work))
    return work


def _read_unchanged(work: _Work, path: str, recorded: dict[str, list[str]], kept: dict[str, Any],
                    prefix: Path) -> bytes:
    """The bytes of the distribution's file `path`, which a patch of the recipe (or an earlier one)
    touches, with its mode in `work.modes`; PatchRefused unless it is the distribution's own file,
    under `prefix`, as installed (its RECORD's hash) or as warmstart last wrote it (the marker's)."""
    label = next((p.label for p in work.wanted if any(d.path == path for d in p.files)), "an earlier patch")
    if path not in recorded:
        raise PatchRefused(f"{label} changes {path}, which {work.name} {work.version} did not install (it is not "
                           "in its RECORD); a patch may only change the distribution's own files")
    file = work.info.parent / path
    if not Path(os.path.realpath(file)).is_relative_to(os.path.realpath(prefix)):
        raise PatchRefused(f"{label} changes {path}, which lies outside {prefix}; refused")
    try:
        current = file.read_bytes()
        work.modes[path] = os.stat(file).st_mode & 0o777
    except OSError as exc:
        raise PatchRefused(f"{label}: cannot read {file} ({exc.strerror}); reinstall {work.name}") from None
    if path in kept:  # patched before: the original is in the marker, with what was written
        known = {record_hash(kept[path]["original"].encode("utf-8")), *kept[path]["written"]}
    else:
        known = {recorded[path][1]}
    if record_hash(current) not in known:
        raise PatchRefused(f"{label} cannot change {path} of {work.name} {work.version}: the file differs from its "
                           f"RECORD (edited by hand?); reinstall {work.name}, or drop the patch from the recipe")
    return current


def _patched(work: _Work, originals: dict[str, bytes]) -> dict[str, str]:
    """Each file's text with the recipe's patches applied, in order, to its original."""
    desired = {}
    for path, data in originals.items():
        try:
            desired[path] = data.decode("utf-8")
        except UnicodeDecodeError:
            raise PatchRefused(f"{work.name}'s {path} is not UTF-8 text; a patch changes text files only") from None
    for patch in work.wanted:
        for diff in patch.files:
            changed = apply(desired[diff.path], diff)
            if changed is None:
                raise PatchRefused(f"{patch.label} does not apply to {work.name} {work.version}: {diff.path} is not "
                                   "the file it was made for; patch a version whose files it matches, or drop it")
            desired[diff.path] = changed
    return desired


def _rows_without_marker(rows: list[list[str]], work: _Work) -> list[list[str]]:
    return [row if row[0] != work.marker_row else row[:1] for row in rows]


def _works(patches: tuple[Patch, ...], path: tuple[str, ...], prefix: Path, locked: set[NormalizedName],
           skip: Set[NormalizedName] = frozenset()) -> tuple[list[_Work], list[NormalizedName]]:
    """For each locked distribution that has patches wanted or applied, what `sync` would write;
    and the patched distributions that are not installed."""
    wanted: dict[NormalizedName, list[Patch]] = {}
    for patch in patches:
        if patch.distribution not in locked:
            raise PatchRefused(f"{patch.label} patches {patch.distribution}, which the recipe's lock does not "
                               "install; patch a locked distribution, or drop the patch")
        wanted.setdefault(patch.distribution, []).append(patch)
    infos = {name: info for name, info in _dist_infos(path, locked - skip).items()
             if name in wanted or (info / MARKER).exists()}
    works = [_plan(name, info, wanted.get(name, []), prefix) for name, info in sorted(infos.items())]
    return works, sorted(set(wanted) - set(infos) - skip)


def _dist_infos(path: tuple[str, ...], names: set[NormalizedName]) -> dict[NormalizedName, Path]:
    """Each named distribution's metadata folder, the first along sys.path (as importlib finds it)."""
    found: dict[NormalizedName, Path] = {}
    for folder in map(Path, path):
        for info in sorted(folder.glob("*.dist-info")) if folder.is_dir() else ():
            name = dist_name(info)
            if name in names and name not in found:
                found[name] = info
    return found


def survey(patches: tuple[Patch, ...], path: tuple[str, ...], prefix: Path, locked: dict[NormalizedName, str],
           installing: set[NormalizedName]) -> list[PatchState]:
    """The recipe's patches against the environment, changing nothing: each distribution with
    patches wanted or applied, and what a bootstrap would do about them. A distribution this run
    installs counts as unpatched. A file a patch cannot take raises PatchRefused."""
    works, absent = _works(patches, path, prefix, set(locked), installing)
    states = [w.state() for w in works]
    for name in sorted({p.distribution for p in patches} & installing | set(absent)):
        states.append(PatchState(name, locked.get(name, ""), tuple(p.label for p in patches
                                                                  if p.distribution == name), TO_APPLY))
    return sorted(states, key=lambda s: s.distribution)


def sync(patches: tuple[Patch, ...], path: tuple[str, ...], prefix: Path,
         locked: set[NormalizedName]) -> list[PatchState]:
    """Make every locked distribution's files what the recipe's patches ask for: apply, update
    or undo; returns what each was before. Every distribution is checked before a file is written."""
    works, absent = _works(patches, path, prefix, locked)
    if absent:
        first = next(p for p in patches if p.distribution == absent[0])
        raise PatchRefused(f"{first.label} patches {absent[0]}, which is not installed in {prefix}")
    before = [w.state() for w in works]
    for work in works:
        if work.changes:
            _write(work)
    return before


def _write(work: _Work) -> None:
    """Marker first, naming every content a file may have meanwhile; then each file; then RECORD;
    then the marker's final form, or its removal. Each step is atomic, so a run killed anywhere
    leaves a state the next run recognises."""
    marker = work.info / MARKER
    before = _marker(work.info)
    if work.marker is not None or before is not None:
        interim = json.loads(json.dumps(work.marker or before))
        for path, entry in interim["files"].items():
            earlier = (before or {}).get("files", {}).get(path, {}).get("written", [])
            entry["written"] = sorted({*entry["written"], *earlier, record_hash(work.files[path])})
        _replace(marker, _json_bytes(interim), 0o644)
    for path, data in work.files.items():
        file = work.info.parent / path
        if file.read_bytes() != data:
            _replace(file, data, work.modes[path])
            faults.point("patch")
    rows = work.record
    if work.marker is not None:
        final = _json_bytes(work.marker)
        rows = [[row[0], record_hash(final), str(len(final))] if row[0] == work.marker_row else row for row in rows]
    _replace(work.info / "RECORD", record_text(rows).encode("utf-8"), 0o644)
    if work.marker is not None:
        _replace(marker, final, 0o644)
    else:
        marker.unlink(missing_ok=True)


def _json_bytes(data: dict[str, Any]) -> bytes:
    return json.dumps(data, indent=1, sort_keys=True).encode("utf-8") + b"\n"


def _replace(dest: Path, data: bytes, mode: int) -> None:
    """dest, whole, with these bytes and permission bits."""
    with AtomicFile(dest) as part:
        part.write(data)
        os.chmod(part.tmp, mode)
        part.commit(dest)
