"""Recipes: the declarative TOML description of one project's environment.

Paths inside a recipe are relative to its project root: the folder that holds `recipes/`
(for `X/recipes/NAME.toml` that is `X`), or the recipe's own folder when it lies elsewhere.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import InvalidVersion, Version

from .config import Field, Schema, TableList, read_text, read_toml, validate
from .console import abridged
from .disks import real
from .errors import BadInput
from .locktext import given_as_file, project_of, recipe_dirs
from .patches import Patch, load_patch
from .settings import user_path
from .transfer import is_sha256

RECIPE_SCHEMA: Schema = {
    "name": Field("str", required=True),
    "description": Field("str", default=""),
    "python": Field("str", default=""),
    "gpu": {
        "required": Field("bool", default=False),
        "min_memory_gib": Field("number"),
        "min_compute_capability": Field("str"),
        "min_cuda": Field("str"),
    },
    "requirements": {
        "in": Field("str", required=True),
        "exclude": Field("str-list", default=[]),
    },
    "drive": {
        "workdir": Field("str", default=""),
    },
    "assets": TableList({
        "url": Field("str", required=True),
        "sha256": Field("str", required=True),
        "dest": Field("str", required=True),
        "unpack": Field("bool", default=False),
        "allow_outside": Field("bool", default=False),
        "max_unpacked_mib": Field("number"),  # default: 20 times the archive, at least 1 GiB
        "size": Field("number"),  # bytes: a download is read no further
    }),
    "checks": TableList({
        "name": Field("str", required=True),
        "python": Field("str"),
        "script": Field("str"),  # a Python file, relative to the project root
        "run": Field("str"),
        "timeout": Field("number", default=600),  # seconds
    }),
    "patches": TableList({
        "distribution": Field("str", required=True),
        "diff": Field("str", required=True),  # a unified diff, relative to the project root
    }),
}

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_PROJECT = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.I)  # PEP 508 names
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
NAME_MAX = 255  # bytes in one name of a path, on Linux's file systems (Drive's FUSE mount too)
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.zst")


@dataclass(frozen=True)
class GpuNeeds:
    required: bool
    min_memory_gib: float | None = None
    min_compute_capability: Version | None = None
    min_cuda: Version | None = None


@dataclass(frozen=True)
class Asset:
    """A file the project needs besides packages (model weights, data), kept on Drive by sha256."""

    url: str
    sha256: str
    dest: str  # `~` is the user's home; a relative path is under the recipe's Drive workdir
    unpack: bool = False
    allow_outside: bool = False  # may land outside the home folder and the workdir
    max_unpacked_mib: float | None = None  # how far the archive may expand (a zip bomb is not a model)
    size: int | None = None  # bytes, where the recipe states them: a download is read no further

    def unpack_limit(self, archive_bytes: int) -> int:
        if self.max_unpacked_mib is not None:
            return int(self.max_unpacked_mib * 2**20)
        return max(20 * archive_bytes, 2**30)

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    def destination(self, workdir: Path) -> Path:
        return workdir / Path(self.dest).expanduser()  # an absolute right side wins


@dataclass(frozen=True)
class Check:
    """A smoke test run after install: Python code or a Python file in the target interpreter,
    or a shell command."""

    name: str
    python: str | None = None
    script: Path | None = None
    run: str | None = None
    timeout: float = 600  # seconds


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    python: SpecifierSet
    gpu: GpuNeeds
    requirements_in: Path
    exclude: tuple[NormalizedName, ...]
    workdir: PurePosixPath
    path: Path
    project_root: Path
    assets: tuple[Asset, ...] = ()
    checks: tuple[Check, ...] = ()
    patches: tuple[Patch, ...] = ()  # applied after every install, in order
    includes: tuple[Path, ...] = ()  # the files requirements_in includes (-r, -c)

    def supports(self, python: str | Version) -> bool:
        """Whether the recipe's `python` admits this version; for a minor version ("3.12", what a
        lock is made for), some release of it (">=3.12.2" admits 3.12)."""
        version = Version(str(python))
        if len(version.release) > 2:
            return version in self.python
        return any(Version(f"{version}.{micro}") in self.python for micro in range(100))


# Entries a recipe folder is read up to: a team's shared folder on Drive holds tens of recipes, and
# may hold anything.
FOLDER_MOST = 10_000


def of_checkout(recipe_file: Path, root: Path) -> bool:
    """Whether a recipe's file is one of the checkout's at `root` (recipes/NAME.toml), not a user's own."""
    return recipe_file.parent == root / "recipes"


def recipe_files(root: Path, drive: Path | None) -> dict[str, list[Path]]:
    """Recipe name -> its files, over every recipe folder, in their order: more than one where
    a name is defined twice (a copy of a shipped recipe in the Drive's folder, say)."""
    found: dict[str, list[Path]] = {}
    for folder in recipe_dirs(root, drive):
        for path in _recipe_files(folder):
            found.setdefault(path.stem, []).append(path)
    return found


def defined_twice(name: str, files: list[Path]) -> BadInput:
    return BadInput(f"recipe '{name}' is defined twice: {files[0]} and {files[1]}; rename or remove one of them")


def known_recipes(root: Path, drive: Path | None) -> dict[str, Path]:
    """Recipe name -> file, over every recipe folder; one name in two files is an error."""
    found = recipe_files(root, drive)
    for name, files in found.items():
        if len(files) > 1:
            raise defined_twice(name, files)
    return {name: files[0] for name, files in found.items()}


def each_recipe(found: dict[str, list[Path]], root: Path, drive: Path | None = None,
                unreadable: list[str] | None = None) -> Iterator[tuple[str, Recipe]]:
    """Each file of `found` (recipe_files: both files of a name defined twice) loaded, by name.
    One that cannot be read is BadInput, or, given `unreadable`, its line there: a teammate's
    broken recipe in the Drive's folder hides none of the others."""
    for name, paths in sorted(found.items()):
        for path in paths:
            try:
                recipe = load_recipe(str(path), root, drive)
            except BadInput as exc:
                if unreadable is None:
                    raise
                unreadable.append(str(exc))
                continue
            yield name, recipe


def _recipe_files(folder: Path) -> list[Path]:
    """The folder's recipe files (`*.toml`, as glob finds them), sorted; BadInput once it holds
    more than FOLDER_MOST entries, of which no more are read."""
    if not folder.is_dir():
        return []
    files = []
    with os.scandir(folder) as scan:
        for count, entry in enumerate(scan, 1):
            if count > FOLDER_MOST:
                raise BadInput(f"the recipe folder {folder} holds more than {FOLDER_MOST:,} files, more than a "
                               "recipe folder does: remove what does not belong there, or pass the recipe's "
                               "file as --recipe PATH")
            if entry.name.endswith(".toml") and not entry.name.startswith("."):
                files.append(Path(entry.path))
    return sorted(files)


class UnknownRecipe(BadInput):
    """No recipe of that name, or no file at that path (`path`, as the user's words name it). Where
    the user's own recipes lie on a Drive that is not there (not mounted), that is the likelier
    cause: the bootstrap says it."""

    def __init__(self, message: str, *, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


def recipe_path(name_or_path: str, root: Path, drive: Path | None = None) -> Path:
    """A recipe given as a file path is used as is; a bare name is looked up by name."""
    if "\0" in name_or_path:
        raise BadInput(f"recipe {name_or_path!r}: a name or path cannot hold a NUL character")
    if "://" in name_or_path:
        raise BadInput(f"--recipe {name_or_path!r}: a recipe is a name or a file here, not a URL: download it "
                       "(into the Drive's .warmstart/recipes/ to find it by name) and give its name or path")
    if given_as_file(name_or_path):
        path = real(user_path(name_or_path, "--recipe"))
        if not path.exists() and (stem := Path(name_or_path).name.removesuffix(".toml")) in (
                files := recipe_files(root, drive)):
            raise BadInput(f"{path}: file not found; the recipe named '{stem}' is {files[stem][0]}: "
                           f"--recipe {stem} finds it")
        if not os.path.lexists(path):  # (a link that leads nowhere is read, and said as such)
            raise UnknownRecipe(f"{path}: file not found", path=path)
        return path
    # Only the name asked for must be defined once: a teammate's copy of another recipe on a
    # shared Drive stops no one else's run.
    files = recipe_files(root, drive)
    if len(files.get(name_or_path, ())) > 1:
        raise defined_twice(name_or_path, files[name_or_path])
    known = {name: paths[0] for name, paths in files.items()}
    if name_or_path not in known:
        by_case = {name.lower(): name for name in known}  # HyperLPR: the workdir's name, not the recipe's
        close = difflib.get_close_matches(name_or_path.lower(), list(by_case), n=1)
        hint = f" (did you mean '{by_case[close[0]]}'?)" if close else ""
        folders = ", ".join(str(d) for d in recipe_dirs(root, drive))
        raise UnknownRecipe(f"no recipe named '{name_or_path}'{hint} in {folders}; known recipes: "
                            f"{abridged(sorted(known), 20) or 'none'} (or pass a path to a .toml file)")
    return known[name_or_path]


def _version(raw: str | None, path: Path, key: str) -> Version | None:
    if raw is None:
        return None
    try:
        return Version(raw)
    except InvalidVersion:
        raise BadInput(f"{path}: '{key}' must be a version like \"6.0\", got {raw!r}") from None


_INCLUDE = re.compile(r"^(-r|--requirement|-c|--constraint)(?:\s*=\s*|\s+)(\S+)$")
_INDEX_OPTIONS = {"-i", "--index-url", "--extra-index-url", "-f", "--find-links", "--trusted-host", "--no-index"}
# What a .in names is a package of the index, by name: the lock takes its hashes from there.
_FROM_THE_INDEX = ("warmstart installs the packages of the index, by name, with the hashes `invoke lock` takes "
                   "from there")
_YOUR_CODE = "your own code runs from the recipe's workdir ([drive] workdir): list here what it needs"


def _check_requirements_in(path: Path, project_root: Path, seen: tuple[Path, ...] = ()) -> tuple[Path, ...]:
    """Every line of a `.in` is a valid PEP 508 requirement by name (from the index) or a comment,
    or includes (-r, -c) another such file of the project. Index options (--index-url,
    --extra-index-url, --trusted-host, -f, ...) are refused: they would take the lock around pip's
    settings and the plain-http rule; so are editables, paths and URLs, which no index serves and
    no hash from one covers. Returns the files included, for the lock's inputs digest."""
    included: list[Path] = []
    for number, line in enumerate(read_text(path, "a requirements file").splitlines(), 1):
        text = line.split(" #", 1)[0].strip()
        if not text or text.startswith("#"):
            continue
        where = f"{path}:{number}"
        if text.startswith("-"):
            include = _INCLUDE.match(text)
            other = real(path.parent / include.group(2)) if include else None
            if other is None or not other.is_relative_to(real(project_root)) or other in seen:
                option = text.split()[0].split("=")[0]
                raise BadInput(f"{where}: {option!r} is not allowed here: a .in file holds requirements and "
                               f"comments, and may include (-r, -c) only other files of {project_root}; "
                               + _in_option_next_step(option, other, seen))
            included += [other, *_check_requirements_in(other, project_root, (*seen, path))]
            continue
        try:
            requirement = Requirement(text)
        except InvalidRequirement as exc:
            if " -" in text:  # a per-requirement option: --hash, --config-settings
                raise BadInput(f"{where}: {text!r} holds an option, which is not allowed here: list the "
                               "requirement alone (`invoke lock` adds the hashes)") from None
            if "/" in text or text.startswith("."):  # a path, a VCS or a plain URL
                raise BadInput(f"{where}: {text!r} is a path or URL, not a package's name: {_FROM_THE_INDEX}; "
                               f"{_YOUR_CODE}") from None
            raise BadInput(f"{where}: {text!r} is not a valid requirement "
                           f"({str(exc).splitlines()[0]})") from None
        if requirement.url:
            raise BadInput(f"{where}: {text!r} names a URL (`{requirement.name} @ ...`): {_FROM_THE_INDEX}; publish "
                           f"it to an index (PIP_INDEX_URL, PIP_EXTRA_INDEX_URL) and name it as "
                           f"{requirement.name}==VERSION") from None
    return tuple(included)


def _in_option_next_step(option: str, include: Path | None, seen: tuple[Path, ...]) -> str:
    if option in ("-e", "--editable"):
        return f"{_FROM_THE_INDEX}; {_YOUR_CODE}"
    if option in _INDEX_OPTIONS:
        return "set an index with PIP_INDEX_URL (PIP_EXTRA_INDEX_URL) instead"
    if include in seen:
        return f"{include.name} includes itself: remove that include"
    if include is not None:
        return f"copy {include.name} into the project and include that copy"
    return "remove it"


def load_recipe(name_or_path: str, root: Path, drive: Path | None = None) -> Recipe:
    """The recipe `name_or_path` names (recipe_path), read and checked: whatever is wrong is one
    BadInput line naming the file and the key."""
    path = recipe_path(name_or_path, root, drive)
    data = validate(read_toml(path), RECIPE_SCHEMA, path)

    if not _NAME.match(data["name"]):
        raise BadInput(
            f"{path}: 'name' must be lower-case letters, digits, '-' or '_', got {data['name']!r}"
        )
    try:
        python = SpecifierSet(data["python"])
    except InvalidSpecifier:
        raise BadInput(
            f"{path}: 'python' must be a PEP 440 specifier like \">=3.10\", got {data['python']!r}"
        ) from None

    gpu = data["gpu"]
    if gpu["min_memory_gib"] is not None and gpu["min_memory_gib"] < 0:
        raise BadInput(f"{path}: 'gpu.min_memory_gib' must be the GiB of memory the GPU needs, 0 or more, "
                       f"got {gpu['min_memory_gib']!r}")
    needs = GpuNeeds(
        required=gpu["required"],
        min_memory_gib=gpu["min_memory_gib"],
        min_compute_capability=_version(
            gpu["min_compute_capability"], path, "gpu.min_compute_capability"
        ),
        min_cuda=_version(gpu["min_cuda"], path, "gpu.min_cuda"),
    )

    project_root = project_of(path)
    requirements_in = _project_file(project_root, data["requirements"]["in"], path, "requirements.in")

    workdir = PurePosixPath(_path_text(data["drive"]["workdir"], path, "drive.workdir"))
    if workdir.is_absolute() or ".." in workdir.parts:
        raise BadInput(
            f"{path}: 'drive.workdir' must be a folder relative to the Drive root, "
            f"got {str(workdir)!r}"
        )

    for name in data["requirements"]["exclude"]:
        if not _PROJECT.match(name):
            raise BadInput(f"{path}: 'requirements.exclude' holds {name!r}, which is no package name")
    exclude = frozenset(canonicalize_name(n) for n in data["requirements"]["exclude"])
    includes = _check_requirements_in(requirements_in, project_root)

    assets = _assets(data["assets"], path)
    checks = _checks(data["checks"], project_root, path)
    patches = _patches(data["patches"], exclude, project_root, path)

    return Recipe(
        name=data["name"],
        description=data["description"],
        python=python,
        gpu=needs,
        requirements_in=requirements_in,
        exclude=tuple(sorted(exclude)),
        workdir=workdir,
        path=path,
        project_root=project_root,
        assets=assets,
        checks=checks,
        patches=patches,
        includes=includes,
    )


def _assets(tables: list[dict[str, Any]], path: Path) -> tuple[Asset, ...]:
    """The recipe's [[assets]], each checked: a sha256, a web address, a destination it may write."""
    assets = []
    files: dict[Path, int] = {}  # each file asset's destination (relative: under the workdir): its index
    for n, raw in enumerate(tables):
        if not is_sha256(raw["sha256"]):
            raise BadInput(f"{path}: 'assets[{n}].sha256' must be 64 lower-case hex digits")
        if not raw["url"].startswith(("https://", "http://")):
            raise BadInput(f"{path}: 'assets[{n}].url' must be an https:// address, got {raw['url']!r}")
        if raw["size"] is not None and (not isinstance(raw["size"], int) or raw["size"] <= 0):
            raise BadInput(f"{path}: 'assets[{n}].size' must be the file's size in bytes, a whole number above 0")
        _path_text(raw["dest"], path, f"assets[{n}].dest")
        asset = Asset(**raw)
        dest = user_path(asset.dest, f"{path}: 'assets[{n}].dest'")  # Asset.destination expands it too
        if dest.is_absolute() and not asset.allow_outside and not (
                real(dest).is_relative_to(real(Path.home()))):
            raise BadInput(f"{path}: 'assets[{n}].dest' {asset.dest!r} is outside your home folder and "
                           "the workdir; set allow_outside = true if that is meant")
        if not dest.is_absolute() and ".." in Path(asset.dest).parts:
            raise BadInput(f"{path}: 'assets[{n}].dest' {asset.dest!r} leaves the workdir; "
                           "set allow_outside = true if that is meant")
        if not asset.unpack and _names_a_folder(asset.dest):
            raise BadInput(f"{path}: 'assets[{n}].dest' {asset.dest!r} names a folder (the workdir, a home folder, "
                           f"a trailing '/'); a file asset's dest is the file it becomes, e.g. "
                           f"{str(PurePosixPath(asset.dest) / asset.name)!r}")
        if not asset.unpack and (other := files.setdefault(asset.destination(Path()), n)) != n:
            raise BadInput(f"{path}: 'assets[{n}].dest' {asset.dest!r} is where assets[{other}] goes too; "
                           "give each file asset a dest of its own")
        if asset.max_unpacked_mib is not None and (not asset.unpack or asset.max_unpacked_mib <= 0):
            raise BadInput(f"{path}: 'assets[{n}].max_unpacked_mib' needs unpack = true and a size above 0")
        if asset.unpack and not asset.name.endswith(ARCHIVE_SUFFIXES):
            raise BadInput(f"{path}: 'assets[{n}].unpack' is true but {asset.name!r} is not one of "
                           f"{', '.join(ARCHIVE_SUFFIXES)}")
        assets.append(asset)
    return tuple(assets)


def _names_a_folder(dest: str) -> bool:
    """Whether an asset's dest can only mean a folder: empty, `.`, `~` or `~user`, or ending in `/`."""
    parts = PurePosixPath(dest).parts
    return dest.endswith(("/", "/.")) or not parts or (len(parts) == 1 and parts[0].startswith("~"))


def _checks(tables: list[dict[str, Any]], project_root: Path, path: Path) -> tuple[Check, ...]:
    """The recipe's [[checks]], each checked: a name of its own (what the report and the record
    of passed checks know it by), one kind of command, a timeout, a script that exists."""
    checks = []
    names: dict[str, int] = {}
    for n, raw in enumerate(tables):
        if not raw["name"].strip():
            raise BadInput(f"{path}: 'checks[{n}].name' is empty; name what the check proves")
        if (other := names.setdefault(raw["name"], n)) != n:
            raise BadInput(f"{path}: 'checks[{n}].name' {raw['name']!r} is checks[{other}]'s name too; "
                           "give each check a name of its own")
        if sum(raw[key] is not None for key in ("python", "script", "run")) != 1:
            raise BadInput(f"{path}: 'checks[{n}]' needs exactly one of 'python', 'script' or 'run'")
        if raw["timeout"] <= 0:
            raise BadInput(f"{path}: 'checks[{n}].timeout' must be a number of seconds above 0")
        if raw["script"] is not None:
            raw["script"] = _project_file(project_root, raw["script"], path, f"checks[{n}].script")
        checks.append(Check(**raw))
    return tuple(checks)


def _patches(tables: list[dict[str, Any]], exclude: frozenset[NormalizedName], project_root: Path,
             path: Path) -> tuple[Patch, ...]:
    """The recipe's [[patches]], each of a package the recipe installs, its diff read."""
    patches = []
    for n, raw in enumerate(tables):
        name = canonicalize_name(raw["distribution"])
        if not _PROJECT.match(raw["distribution"]) or name in exclude:
            raise BadInput(f"{path}: 'patches[{n}].distribution' {raw['distribution']!r} is no package this "
                           "recipe installs")
        diff = _project_file(project_root, raw["diff"], path, f"patches[{n}].diff")
        patches.append(load_patch(name, diff, raw["diff"]))
    return tuple(patches)


def _path_text(text: str, path: Path, key: str) -> str:
    """A path as the recipe gives it, checked for what the OS or a printed command cannot take: a
    control character (a newline splits the `cd` or `invoke` line warmstart prints with the path),
    a name longer than NAME_MAX (the OS's "File name too long", which names no key)."""
    if control := _CONTROL.search(text):
        raise BadInput(f"{path}: '{key}' {text!r} holds a control character ({control.group()!r}); "
                       "name the path without it")
    if long := [part for part in PurePosixPath(text).parts if len(os.fsencode(part)) > NAME_MAX]:
        raise BadInput(f"{path}: '{key}' holds a name of {len(os.fsencode(long[0]))} bytes, and a file or "
                       f"folder's name has at most {NAME_MAX}; shorten it")
    return text


_PROJECT_ROOT_IS = "the folder that holds the recipe's recipes/ folder, or, outside one, the recipe's own folder"


def _project_file(project_root: Path, relative: str, path: Path, key: str) -> Path:
    """A file a recipe names relative to its project root, which must exist."""
    file = real(project_root / _path_text(relative, path, key))
    if not file.is_file():
        what = ("is a folder, not a file;" if file.is_dir() else "is no regular file (a pipe, socket or device);"
                if file.exists() else "does not exist; create it or")
        raise BadInput(f"{path}: '{key}' names {file}, which {what} fix the path "
                       f"(relative to {project_root}: {_PROJECT_ROOT_IS})")
    return file
