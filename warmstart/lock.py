"""Locks: pip-tools output with a sha256 for every file of every pin, minus the excluded packages.

A lock is named `requirements/<in-stem>-<pyXY>-<platform>.txt` so locks for several Pythons
sit side by side. A platform that publishes its images (Colab) gets locks of its own,
`requirements/<profile>/<in-stem>-<pyXY>-<platform>.txt`, compiled against the image of that
Python: what the image ships stays at its version unless the recipe rules that out.

Its header records a digest of everything it was compiled from (the `.in` text, the excludes,
the Python and platform, the image); a lock whose inputs changed is refused rather than
silently used, since file times mean nothing after a git clone. Its body ends with the CUDA
libraries each wheel it installs needs and brings, read from the wheels' ELF files, so
`invoke lock --check` can judge it against the platform without downloading anything.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import sys
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import InvalidVersion, Version

from . import PROJECT_ROOT
from .config import read_bytes, read_text
from .console import counted
from .errors import BadInput
from .images import Image, by_likeness, image_named
from .invocation import command_line
from .locktext import HASH, LOCK_SHA256, body_sha256, pin_blocks, requirement_line
from .recipe import Recipe, of_checkout
from .target import platform_tag

LOCK_FORMAT = "warmstart-lock-v1"
_DIGEST_LINE = re.compile(r"^# inputs-sha256: ([0-9a-f]{64})$", re.M)
# The section after the pins: the CUDA libraries of each wheel the lock installs on its platform.
WHEELS_MARK = "# cuda-libraries: read from the wheels' ELF files by `invoke lock`; checked by `invoke lock --check`"
_WHEEL_LINE = re.compile(
    r"^#   (\S+)==(\S+) sha256:([0-9a-f]{64}) needs=(\S+) provides=(\S+)(?: files=([0-9a-f]{64}))?$")


@dataclass(frozen=True)
class Pin:
    name: NormalizedName
    version: str
    hashes: frozenset[str]
    # Who asked for it, from the resolver's `# via` lines: locked distributions by name. A pin
    # the recipe's own `.in` names (or one with no `via` lines) is a root.
    via: frozenset[NormalizedName] = frozenset()
    root: bool = True

    def requirement_line(self) -> str:
        return requirement_line(self.name, self.version, self.hashes)

    def satisfied_by(self, installed: str | None) -> bool:
        """As pip decides (PEP 440): `==2.11.0` is met by 2.11.0 and by a local build 2.11.0+cu128."""
        if installed is None:
            return False
        if installed == self.version:
            return True
        try:
            return SpecifierSet(f"=={self.version}").contains(Version(installed), prereleases=True)
        except (InvalidSpecifier, InvalidVersion):
            return False


@dataclass(frozen=True)
class WheelLibs:
    """What `invoke lock` read from the wheel (named by its sha256) one pin installs on the lock's
    platform: the CUDA libraries it needs (ELF DT_NEEDED, less what it brings itself) and brings
    (DT_SONAME), and the digest of the files it installs (warmstart.manifest), against which a
    snapshot's files are checked."""

    name: NormalizedName
    version: str
    sha256: str
    needs: frozenset[str] = frozenset()
    provides: frozenset[str] = frozenset()
    files: str | None = None  # None: a lock written before warmstart recorded it

    def line(self) -> str:
        def listed(names: frozenset[str]) -> str:
            return ",".join(sorted(names)) or "-"

        return (f"#   {self.name}=={self.version} sha256:{self.sha256} "
                f"needs={listed(self.needs)} provides={listed(self.provides)}"
                + (f" files={self.files}" if self.files else ""))

    @classmethod
    def parse(cls, line: str) -> WheelLibs | None:
        match = _WHEEL_LINE.match(line)
        if not match:
            return None
        name, version, sha256, needs, provides, files = match.groups()

        def unlisted(text: str) -> frozenset[str]:
            return frozenset() if text == "-" else frozenset(text.split(","))

        return cls(canonicalize_name(name), version, sha256, unlisted(needs), unlisted(provides), files)


@dataclass(frozen=True)
class Lock:
    path: Path
    inputs_sha256: str | None
    pins: tuple[Pin, ...]
    # of its body, as its lock-sha256 line states (locktext.body_sha256): which pins a snapshot was made from
    body_sha256: str = field(compare=False)
    # What `invoke lock` read from the wheels this lock installs on its platform; None in a lock
    # written before warmstart recorded it.
    wheels: dict[NormalizedName, WheelLibs] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Needs:
    """What a lock asks of one environment, given what is installed there."""

    install: tuple[Pin, ...]  # pins the environment lacks at their locked version
    provided: dict[NormalizedName, str]  # pins met by another build (torch 2.11.0+cu128): name -> it
    left: tuple[Pin, ...]  # pins only a provided build needs: its own dependencies are the platform's
    wanted: tuple[Pin, ...]  # every pin that must be there: the lock less what is left


def needs(pins: tuple[Pin, ...], installed: Mapping[NormalizedName, str]) -> Needs:
    """Walk the lock's dependency graph from its roots. A pin met by the same version is kept as
    it is; one met by another build (a platform's torch+cu128 for the lock's torch) is the
    platform's, and so are the dependencies only it asks for (the lock's CUDA 13 runtime wheels
    for PyPI's torch): a bare VM installs them all, Colab none of them."""
    by_name = {p.name: p for p in pins}
    children: dict[str, list[Pin]] = defaultdict(list)
    for pin in pins:
        for parent in pin.via:
            children[parent].append(pin)
    # A pin whose every asker is excluded from the lock (onnxruntime's) is the recipe's own.
    stack = [p for p in pins if p.root or not any(v in by_name for v in p.via)]
    reached: set[str] = set()
    provided: dict[NormalizedName, str] = {}
    while stack:
        pin = stack.pop()
        if pin.name in reached:
            continue
        reached.add(pin.name)
        have = installed.get(pin.name)
        if pin.satisfied_by(have) and have != pin.version:
            provided[pin.name] = str(have)
            continue
        stack.extend(children[pin.name])
    install = tuple(p for p in pins if p.name in reached and p.name not in provided
                    and not p.satisfied_by(installed.get(p.name)))
    left = tuple(p for p in pins if p.name not in reached)
    return Needs(install, provided, left, tuple(p for p in pins if p.name in reached))


# Our platform tags, as uv's --python-platform names them (glibc 2.28: Colab's Ubuntu 22.04 has 2.35).
# Linux alone: the VMs warmstart restores, and the only wheels whose CUDA libraries it reads (ELF).
UV_PLATFORMS = {
    "manylinux_x86_64": "x86_64-manylinux_2_28",
    "manylinux_aarch64": "aarch64-manylinux_2_28",
}


def require_known_platform(platform: str) -> None:
    """BadInput for a platform tag no lock is made for, before any resolution."""
    if platform not in UV_PLATFORMS:
        raise BadInput(f"--platform {platform!r} is not one warmstart locks for: {' or '.join(UV_PLATFORMS)} "
                       "(the Linux VMs it restores)")


@dataclass(frozen=True)
class LockTarget:
    python_version: str  # "3.12"
    platform: str  # "manylinux_x86_64"
    image: str | None = None  # the platform image the lock is compiled against (envs/images/NAME.toml)

    @property
    def python_tag(self) -> str:
        return "py" + self.python_version.replace(".", "")

    @classmethod
    def current(cls) -> LockTarget:
        return cls(f"{sys.version_info.major}.{sys.version_info.minor}", platform_tag())

    @classmethod
    def from_tag(cls, python_tag: str, platform: str, image: str | None = None) -> LockTarget:
        return cls(f"{python_tag[2]}.{python_tag[3:]}", platform, image)

    def describe(self) -> str:
        return f"Python {self.python_version} on {self.platform}" + (
            f" for the image {self.image}" if self.image else "")


def lock_path(recipe: Recipe, target: LockTarget) -> Path:
    """requirements/NAME-py312-manylinux_x86_64.txt, or for an image requirements/IMAGE/NAME-...txt."""
    folder = recipe.requirements_in.parent
    if target.image:
        folder = folder / target.image
    return folder / f"{recipe.requirements_in.stem}-{target.python_tag}-{target.platform}.txt"


def existing_locks(recipe: Recipe) -> dict[Path, LockTarget]:
    """Every lock of the recipe's `.in`: beside it, and in a subfolder per platform image."""
    stem = recipe.requirements_in.stem
    pattern = re.compile(rf"^{re.escape(stem)}-(py\d+)-(.+)\.txt$")
    found = {}
    folder = recipe.requirements_in.parent
    candidates = [*folder.glob(f"{stem}-py*-*.txt"), *folder.glob(f"*/{stem}-py*-*.txt")]
    for path in sorted(candidates):
        if match := pattern.match(path.name):
            image = path.parent.name if path.parent != folder else None
            found[path] = LockTarget.from_tag(match.group(1), match.group(2), image)
    return found


def target_image(target: LockTarget, root: Path = PROJECT_ROOT) -> Image | None:
    """The image a lock is compiled against (None: a bare lock)."""
    if not target.image:
        return None
    image = image_named(target.image, root / "envs")
    if image.python_minor != target.python_version:
        raise BadInput(f"the image {image.name} has Python {image.python}, not {target.python_version}; "
                       f"its locks are for Python {image.python_minor}")
    return image


def inputs_digest(recipe: Recipe, target: LockTarget, image: Image | None = None) -> str:
    digest = hashlib.sha256()
    for part in (LOCK_FORMAT, target.python_tag, target.platform, ",".join(recipe.exclude)):
        digest.update(part.encode() + b"\0")
    if image is not None:  # a refreshed image (Colab moved on) makes its locks stale
        digest.update(image.digest.encode() + b"\0")
    # Normalise line endings so a checkout on Windows does not look stale.
    for path in (recipe.requirements_in, *recipe.includes):
        digest.update(read_bytes(path).replace(b"\r\n", b"\n"))
    return digest.hexdigest()


def _via(block: str) -> tuple[frozenset[NormalizedName], bool]:
    """The distributions a block's `# via` lines name, and whether a requirements file does."""
    names, root, inside = set(), False, False
    for line in block.splitlines()[1:]:
        text = line.strip().removeprefix("#").strip()
        if text.startswith("via"):
            inside, text = True, text.removeprefix("via").strip()
        elif not inside or not line.strip().startswith("#"):
            continue
        if text.startswith(("-r ", "-c ")):
            root = True
        elif text:
            names.add(canonicalize_name(re.split(r"[\s\[(;]", text, maxsplit=1)[0]))
    return frozenset(names), root or not names


def parse_pins(text: str, path: Path, remake: Callable[[], str] | None = None) -> tuple[Pin, ...]:
    """The pins of a lock's text; BadInput naming `path`, the pin, and the line that makes the
    lock again (`remake`, see parse_lock) for one that is not pinned and hashed."""
    pins = []
    for block in pin_blocks(text):
        # The requirement is what precedes the first option (`--hash`) or line continuation.
        requirement_text = re.split(r"\s--|\\|\n", block, maxsplit=1)[0].strip()
        if not requirement_text or requirement_text.startswith("#"):
            continue
        try:
            req = Requirement(requirement_text)
        except InvalidRequirement as exc:
            reason = str(exc).splitlines()[0]
            raise BadInput(f"{path}: cannot read requirement {requirement_text!r}: {reason}") from None
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==":
            raise BadInput(f"{path}: '{requirement_text}' is not pinned with ==; recompile with `{_remade(remake)}`")
        hashes = frozenset(HASH.findall(block))
        if not hashes:
            raise BadInput(f"{path}: '{req.name}' has no --hash=sha256 lines; recompile with `{_remade(remake)}`")
        via, root = _via(block)
        pins.append(Pin(canonicalize_name(req.name), specs[0].version, hashes, via, root))
    return tuple(pins)


def _remade(remake: Callable[[], str] | None) -> str:
    return remake() if remake else "invoke lock"


def parse_lock(path: Path, remake: Callable[[], str] | None = None) -> Lock:
    """The lock at `path`, whole as `invoke lock` wrote it; else BadInput naming the line that
    makes it again (`remake`: relock_command's, where the caller knows the recipe; asked only
    then, as it looks for a notebook)."""
    text = read_text(path, "a lock")
    found = _DIGEST_LINE.search(text)
    body = body_sha256(text)
    if body is None and not LOCK_SHA256.search(text):
        raise BadInput(f"{path}: not written by `invoke lock` (no lock-sha256 line); recompile it with "
                       f"`{_remade(remake)}`")
    if body is None:
        raise BadInput(f"{path}: edited by hand since `invoke lock` wrote it (its pins or hashes "
                       f"no longer match its lock-sha256); recompile it with `{_remade(remake)}`")
    pins_text, marked, wheels_text = text.partition(WHEELS_MARK)
    wheels = None
    if marked:
        parsed = [WheelLibs.parse(line) for line in wheels_text.splitlines()[1:]]
        wheels = {w.name: w for w in parsed if w is not None}
    return Lock(path, found.group(1) if found else None, parse_pins(pins_text, path, remake), body, wheels)


def check_fresh(lock: Lock, recipe: Recipe, target: LockTarget, image: Image | None = None) -> None:
    expected = inputs_digest(recipe, target, image)
    if lock.inputs_sha256 != expected:
        # One digest covers them all, so which of them changed cannot be told.
        inputs = [path.name for path in (recipe.requirements_in, *recipe.includes)]
        inputs += ["the recipe's excludes", *(["its platform image"] if image else [])]
        raise BadInput(f"{lock.path}: lock is stale ({', '.join(inputs[:-1])} or {inputs[-1]} changed since it "
                       f"was compiled); run `{relock_command(recipe, target)}`")


def relock_args(recipe: Recipe, target: LockTarget, root: Path = PROJECT_ROOT) -> list[str]:
    """The `lock` task's arguments that compile this one lock again: a recipe other than this
    checkout's by its path (one on Drive is found by name only with the same --drive)."""
    name = recipe.name if of_checkout(recipe.path, root) else str(recipe.path)
    which = ["--image", target.image] if target.image else ["--python-version", target.python_version]
    return ["lock", "--recipe", name, *which]


def relock_command(recipe: Recipe, target: LockTarget, root: Path = PROJECT_ROOT, *more: str) -> str:
    """The `invoke lock` line that compiles this one lock again (with `more` flags), to paste
    where it is printed."""
    return command_line(*relock_args(recipe, target, root), *more)


def image_notes(pins: tuple[Pin, ...], image: Image) -> list[str]:
    """How a lock compiled against an image differs from it: what it installs there, and why."""
    found = needs(pins, image.shipped)
    by_name = {p.name: p for p in pins}
    differ = [f"{p.name} {image.shipped[p.name]} -> {p.version} (asked for by "
              f"{', '.join(sorted(p.via)) if not p.root else 'the recipe'})"
              for p in found.install if p.name in image.shipped]
    new = [f"{p.name}=={p.version}" for p in found.install if p.name not in image.shipped]
    provided = [f"{name} {have} (lock: {by_name[name].version})" for name, have in found.provided.items()]
    return [
        f"image: {image.describe()}",
        f"differs from the image: {'; '.join(differ) or 'none'}",
        f"adds to the image: {', '.join(new) or 'nothing'}",
        f"the image's own build serves: {', '.join(provided) or 'none'}"
        + (f"; with it, {counted(len(found.left), 'pin')} only it needs stay the image's" if found.left else ""),
    ]


def render(recipe: Recipe, target: LockTarget, tool: str, pins_text: str,
           wheels: list[WheelLibs], image: Image | None = None, root: Path = PROJECT_ROOT) -> str:
    """The lock file: a header naming the line that makes it again, its inputs' digest and its own
    body's digest, then the body: the pins, and the CUDA libraries of the wheels it installs."""
    body = pins_text + "\n".join([WHEELS_MARK, *(w.line() for w in wheels)]) + "\n"
    notes = image_notes(parse_pins(pins_text, Path(recipe.name)), image) if image else []
    # the line that makes it again; a runtime's own lock (warmstart.livelock) is a bootstrap's
    made_by = (["bootstrap", "--recipe", recipe.name] if image and image.live else relock_args(recipe, target, root))
    return (
        f"# {LOCK_FORMAT}: generated by `{shlex.join(['invoke', *made_by])}` with {tool}; do not edit.\n"
        f"# recipe: {recipe.name}  python: {target.python_version}  platform: {target.platform}\n"
        f"# excluded: {', '.join(recipe.exclude) or 'none'}\n"
        + "".join(f"# {note}\n" for note in notes)
        + f"# inputs-sha256: {inputs_digest(recipe, target, image)}\n"
        f"# lock-sha256: {hashlib.sha256(body.encode()).hexdigest()}\n"
    ) + body


def select_lock(recipe: Recipe, images: list[Image], python_minor: str, platform: str,
                installed: dict[NormalizedName, str]) -> tuple[LockTarget, Image | None, str | None]:
    """The lock a VM uses, with its image and a warning: of the platform's images for its Python
    (several runtimes share one), the one the VM matches best that the recipe has a lock for;
    without any, the bare lock (with a warning saying what that costs)."""
    bare = LockTarget(python_minor, platform)
    ranked = by_likeness(images, installed)
    if not ranked:
        return bare, None, None
    best = ranked[0]
    make = f"make one with `{relock_command(recipe, LockTarget(python_minor, platform, best.name))}`"
    for image in ranked:
        target = LockTarget(python_minor, platform, image.name)
        if lock_path(recipe, target).exists():
            if image is best:
                return target, image, None
            return target, image, (f"{recipe.name} has no lock for {best.name}, the image this VM matches "
                                   f"best; using the one for {image.name}, which may replace more of what the "
                                   f"VM ships; {make}")
    if lock_path(recipe, bare).exists():
        return bare, None, (f"{recipe.name} has no lock for the {best.profile} image {best.name}; using the "
                            f"bare lock, which may replace packages the image ships; {make}")
    return LockTarget(python_minor, platform, best.name), best, None  # none at all: the error names it
