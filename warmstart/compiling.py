"""Compiling locks (`invoke lock`): resolving a recipe for a target with pip-tools (this
interpreter) or uv (any other), holding a platform image's versions, and reading the CUDA
libraries of the wheels from their ELF files; `lock_targets`, which locks a recipe gets;
`audit` and `check`, which judge them as `invoke lock --check` does. None of this runs in a
bootstrap, which only reads locks (warmstart.lock).
"""

from __future__ import annotations

import difflib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import InvalidVersion, Version

from . import PROJECT_ROOT, cudalibs, home
from .console import counted
from .download import Downloader
from .errors import BadInput, WarmstartError, said_by
from .images import Image, image_named, images_of
from .lock import (
    UV_PLATFORMS,
    WHEELS_MARK,
    LockTarget,
    existing_locks,
    image_notes,
    inputs_digest,
    lock_path,
    needs,
    parse_lock,
    parse_pins,
    relock_command,
    render,
    require_known_platform,
    target_image,
)
from .locktext import pin_blocks
from .pipconfig import IndexSettings, pip_env, uv_env
from .recipe import Recipe, of_checkout
from .transfer import atomic_write_text
from .uv import ensure_uv


def _block_name(block: str) -> NormalizedName | None:
    head = block.split("\n", 1)[0].split("==", 1)[0].split("[", 1)[0].strip()
    return canonicalize_name(head) if head and not head.startswith("#") else None


def _without_excluded(text: str, exclude: tuple[NormalizedName, ...]) -> str:
    kept = [block for block in pin_blocks(text) if _block_name(block) not in exclude]
    return "\n".join(kept).strip() + "\n"


# A bare lock holds wheels only, as a bootstrap installs them (each checked against the files
# its lock records, which `invoke lock` reads from the wheel): a version published as a source
# distribution alone is passed over for the newest with a wheel for the target, and no package's
# build code runs to read its metadata. Not an image's lock: what the image ships stays at its
# version, published as it may be, and is never installed from the lock.
_ONLY_WHEELS = "--only-binary=:all:"


def _pip_compile() -> list[str]:
    return [sys.executable, "-m", "piptools", "compile", "--quiet",
            "--generate-hashes", "--allow-unsafe", "--strip-extras", "--no-header",
            "--no-emit-index-url", "--no-emit-trusted-host", "--no-emit-find-links", "--no-emit-options",
            "--cache-dir", str(home.pip_tools_cache())]  # in warmstart's folder, not ~/.cache/pip-tools


def _uv_compile(target: LockTarget, say: Callable[[str], None]) -> list[str]:
    require_known_platform(target.platform)
    return [str(ensure_uv(say)), "pip", "compile", "--quiet", "--generate-hashes", "--no-header",
            "--python-version", target.python_version, "--python-platform", UV_PLATFORMS[target.platform]]


def _seed(existing: Path, image: Image | None, upgrade: bool) -> str:
    """Both resolvers prefer the pins they find in the output file: the lock's own and, for an
    image lock, the image's versions, which win where both name one (a local build, +cu128, is
    asked for by its public version)."""
    blocks = pin_blocks(existing.read_text().partition(WHEELS_MARK)[0]) if existing.exists() and not upgrade else []
    if image is not None:
        blocks = [b for b in blocks if _block_name(b) not in image.shipped]
        for name, version in image.shipped.items():
            try:
                blocks.append(f"{name}=={Version(version).public}")
            except InvalidVersion:
                continue  # a version pip itself could not compare: no preference
    return "\n".join(blocks) + "\n" if blocks else ""


@dataclass(frozen=True)
class _Resolver:
    """One resolution of the recipe for a target: pip-tools for this interpreter, uv for others."""

    recipe: Recipe
    target: LockTarget
    seed: str
    upgrade: bool
    upgrade_packages: tuple[str, ...]
    say: Callable[[str], None]
    wheels_only: bool = True  # a bare lock's (_ONLY_WHEELS)

    @property
    def tool(self) -> str:
        return "pip-tools" if self.target == LockTarget.current() else "uv"

    def run(self, constraints: Mapping[NormalizedName, str]) -> tuple[str | None, str]:
        """(the compiled pins less the excluded, or None when unsatisfiable; the resolver's words)"""
        with tempfile.TemporaryDirectory() as tmp:
            draft, pinned = Path(tmp) / "lock.txt", Path(tmp) / "constraints.txt"
            if self.seed:
                draft.write_text(self.seed)
            pinned.write_text("".join(f"{name}=={version}\n" for name, version in constraints.items()))
            if self.tool == "pip-tools":
                head, only_wheels, env = _pip_compile(), ["--pip-args", _ONLY_WHEELS], pip_env()
            else:
                head, only_wheels, env = _uv_compile(self.target, self.say), [_ONLY_WHEELS], uv_env()
            cmd = [*head, *(only_wheels if self.wheels_only else []), "--constraint", str(pinned),
                   "--output-file", str(draft), os.path.relpath(self.recipe.requirements_in, self.recipe.project_root),
                   *(["--upgrade"] if self.upgrade else []),
                   *(arg for package in self.upgrade_packages for arg in ("--upgrade-package", package))]
            done = subprocess.run(cmd, cwd=self.recipe.project_root, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                return None, done.stderr.strip()
            return _without_excluded(draft.read_text(), self.recipe.exclude), ""


def _require_index() -> None:
    """IndexUnavailable (exit 3), as a bootstrap says it, where the package index cannot be reached
    or refuses access: a resolver says that in a page of retries ending in "No matching
    distribution". Asked once (the resolver has retried), for pip, which every index that mirrors
    PyPI serves (one that does not answers 404: reachable, and the resolver's words stand)."""
    settings = replace(IndexSettings.from_environ(), retries=0)
    Downloader(settings, parallel=1, offline_way_out=False).project_files("pip")


def _hold_image_versions(resolver: _Resolver, pins_text: str, image: Image) -> str:
    """Preferences give way to the newest release of whatever is new (onnx 1.23 asks for a newer
    protobuf than Colab's). Hold every shipped package this lock would change at the image's
    version, all at once or one by one, where the recipe's requirements still resolve."""
    pins = parse_pins(pins_text, Path(resolver.recipe.name))
    changed = {p.name: Version(image.shipped[p.name]).public
               for p in needs(pins, image.shipped).install if p.name in image.shipped}
    if not changed:
        return pins_text
    held_text, _ = resolver.run(changed)
    if held_text is not None:
        resolver.say(f"held at the image's versions: {', '.join(f'{n}=={v}' for n, v in changed.items())}")
        return held_text
    held: dict[NormalizedName, str] = {}
    for name, version in changed.items():
        attempt, why = resolver.run({**held, name: version})
        if attempt is None:
            resolver.say(f"{name} {version} (the image's) is ruled out by the recipe's requirements "
                         f"({resolver.tool}: {_conflict(why)})")
            continue
        held[name], pins_text = version, attempt
    return pins_text


def _conflict(why: str, most: int = 300) -> str:
    """A resolver's refusal in one line: what it said before any traceback (pip-tools prints
    pip's), without uv's header and indentation; past `most` characters, its conclusion (uv's
    last "because" clause: a tree of versions comes before it)."""
    text = " ".join(why.split("Traceback (most recent call last)")[0].split())
    text = re.sub(r"^error: No solution found when resolving dependencies:? (cause: )?", "", text)
    if len(text) > most:
        text = "... " + text[text.lower().rfind("because"):]
    return text[:most] or "no resolution"


def compile_lock(recipe: Recipe, target: LockTarget, *, upgrade: bool = False,
                 upgrade_packages: tuple[str, ...] = (), say: Callable[[str], None] = print,
                 root: Path = PROJECT_ROOT, image: Image | None = None, path: Path | None = None) -> Path:
    """Resolve the recipe for `target`, read the CUDA libraries of the wheels it installs, refuse
    it when the platform cannot load them, else write it atomically (to `path`, default: the
    target's place in requirements/). `image`: what to hold, default: the target's image.

    pip-tools resolves for the interpreter it runs in, so it serves the current Python; any
    other target goes through uv's cross-target `uv pip compile`."""
    path = path or lock_path(recipe, target)
    image = image or target_image(target, root)
    # With --upgrade uv ignores every preference: an image lock re-resolves from the image alone.
    resolver = _Resolver(recipe, target, _seed(path, image, upgrade), upgrade and image is None,
                         upgrade_packages, say, wheels_only=image is None)
    say(f"locking {recipe.name} for {target.describe()} with {resolver.tool}")
    pins_text, why = resolver.run({})
    if pins_text is None:  # a conflict takes several lines: all of them
        _require_index()
        raise WarmstartError(f"{resolver.tool} could not lock {recipe.requirements_in} for "
                             f"{target.describe()}: its reasons are above", detail=said_by(resolver.tool, why, 60))
    if image is not None:
        pins_text = _hold_image_versions(resolver, pins_text, image)
    pins = parse_pins(pins_text, path)
    installs = needs(pins, image.shipped if image else {}).install
    if installs:  # the image has all the lock pins: nothing to read
        say(f"reading the CUDA libraries of {counted(len(installs), 'wheel')} for {target.describe()}")
    wheels = cudalibs.scan(installs, target, say)
    problems = cudalibs.problems(recipe, target, installs, {w.name: w for w in wheels},
                                 cudalibs.platforms_for(target, image, root))
    if problems:
        raise BadInput(f"{path.name} would not load on its platform: " + "; ".join(problems))
    atomic_write_text(path, render(recipe, target, resolver.tool, pins_text, wheels, image, root))
    for note in image_notes(pins, image) if image else []:
        say(note)
    return path


def audit(recipe: Recipe, path: Path, target: LockTarget, root: Path = PROJECT_ROOT) -> list[str]:
    """What `invoke lock --check` finds wrong with one lock, without downloading anything: stale
    inputs, or CUDA libraries its platform cannot provide (from what the lock recorded)."""
    image = target_image(target, root)
    lock = parse_lock(path, lambda: relock_command(recipe, target, root))
    if lock.inputs_sha256 != inputs_digest(recipe, target, image):
        return ["stale (its inputs changed since it was compiled)"]
    if lock.wheels is None:
        return ["records no CUDA libraries (written before `invoke lock` read them)"]
    installs = needs(lock.pins, image.shipped if image else {}).install
    if any(lock.wheels[p.name].files is None for p in installs if p.name in lock.wheels):
        return ["records no digests of its wheels' files (written before `invoke lock` read them), "
                "so snapshots of it cannot be checked"]
    return cudalibs.problems(recipe, target, installs, lock.wheels,
                             cudalibs.platforms_for(target, image, root))


def require_pinned(recipe: Recipe, names: Sequence[str]) -> None:
    """BadInput for an --upgrade-package that no lock of the recipe pins: uv and pip-tools pass
    over any other name in silence, so a misspelt one rewrote the lock with nothing upgraded.
    Before the recipe's first lock there is nothing to upgrade, and nothing to hold against."""
    pinned: set[str] = set()
    for path in existing_locks(recipe):
        try:
            pinned |= {pin.name for pin in parse_lock(path).pins}
        except BadInput:  # a damaged lock: compiling it again mends it
            continue
    for name in names:
        if pinned and canonicalize_name(name) not in pinned:
            close = difflib.get_close_matches(canonicalize_name(name), sorted(pinned), n=1)
            raise BadInput(f"--upgrade-package {name!r}: no lock of {recipe.name} pins it"
                           + (f" (did you mean {close[0]!r}?)" if close else "")
                           + "; name a package the lock pins, or add it to " + recipe.requirements_in.name)


def lock_targets(recipe: Recipe, platform: str, versions: Sequence[str], this_python: str,
                 images: Sequence[Image] | None, say: Callable[[str], None]) -> list[LockTarget]:
    """The locks `invoke lock` makes for `recipe`: one per image given (`images`: the one
    --image, or a --platform-profile's; those of `versions` only, when any), else one per Python
    version (`this_python` when none), none for a Python the recipe does not admit, since a
    bootstrap refuses that Python and no VM would use the lock. An image left out is said; a
    version given that the recipe does not admit, or nothing left to lock, is BadInput."""
    require_known_platform(platform)
    needs = f"{recipe.path}: the recipe needs Python {recipe.python}"
    if images is None:
        unsupported = [v for v in versions or [this_python] if not recipe.supports(v)]
        if unsupported:
            given = ("; pass a --python-version it admits" if versions
                     else " (this interpreter's); pass --python-version with one it admits")
            raise BadInput(f"{needs}, not {unsupported[0]}{given}, or change its python")
        return [LockTarget(version, platform) for version in versions or [this_python]]
    chosen = [i for i in images if not versions or i.python_minor in versions]
    if not chosen:
        pythons = ", ".join(sorted({f"{i.name} {i.python}" for i in images}))
        raise BadInput(f"no image has Python {' or '.join(versions)} ({pythons}): leave --python-version out, "
                       "or lock for it without --image and --platform-profile")
    for outside in [i for i in chosen if not recipe.supports(i.python)]:
        say(f"no lock for the image {outside.name} (Python {outside.python}): {needs}")
    targets = [LockTarget(i.python_minor, platform, i.name) for i in chosen if recipe.supports(i.python)]
    if not targets:
        raise BadInput(f"{needs}: no image asked for has it, so no lock is made; lock without --image and "
                       "--platform-profile for a bare lock, or change its python")
    return targets


def check(recipe: Recipe, root: Path = PROJECT_ROOT) -> list[str]:
    """`invoke lock --check`'s lines for one recipe: each lock that is stale or whose platform
    cannot load its wheels, with the command that makes it again; each lock for a Python the
    recipe no longer admits, to be removed (no VM uses it, and no relock mends it); each image
    it has no lock for, of a platform it is locked against (missing_image_locks)."""
    lines = []
    locks = existing_locks(recipe)
    for path, target in locks.items():
        if not recipe.supports(target.python_version):
            lines.append(f"{path}: for Python {target.python_version}, which the recipe's python ({recipe.python}) "
                         "does not admit: no VM uses it; remove it")
            continue
        lines += [f"{path}: {problem}: run `{relock_command(recipe, target, root)}`"
                  for problem in audit(recipe, path, target, root)]
    return lines + missing_image_locks(recipe, list(locks.values()), root)


def missing_image_locks(recipe: Recipe, locks: list[LockTarget], root: Path = PROJECT_ROOT) -> list[str]:
    """For a recipe of this checkout: a line for each published image, of a platform it has an
    image's lock for, that has none of its own and whose Python it admits (an image added with
    `invoke image` and not locked for yet). A VM of that runtime would take another image's
    lock, or the bare one, and with it replace what its image ships. A recipe of the user's own
    (on Drive) may be locked for the runtimes its user runs alone."""
    if not of_checkout(recipe.path, root):
        return []
    envs = root / "envs"
    locked = {(t.image, t.platform) for t in locks if t.image}
    lines = []
    for profile, platform in sorted({(image_named(name, envs).profile, platform) for name, platform in locked}):
        for name, image in images_of(profile, envs).items():
            if (name, platform) not in locked and recipe.supports(image.python):
                target = LockTarget(image.python_minor, platform, name)
                lines.append(f"{lock_path(recipe, target)}: missing: the {profile} image {name} (Python "
                             f"{image.python}) has no lock of {recipe.name}; run "
                             f"`{relock_command(recipe, target, root)}`")
    return lines
