"""Locks: pip-tools output with a sha256 for every file of every pin, minus the excluded packages.

A lock is named `requirements/<in-stem>-<pyXY>-<platform>.txt` so locks for several Pythons
sit side by side. Its header records a digest of everything it was compiled from (the `.in`
text, the excludes, the Python and platform); a lock whose inputs changed is refused rather
than silently used, since file times mean nothing after a git clone.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import NormalizedName, canonicalize_name

from .errors import BadInput, WarmstartError
from .installer import pip_env
from .recipe import Recipe
from .target import platform_tag
from .uv import ensure_uv, uv_env

LOCK_FORMAT = "warmstart-lock-v1"
_DIGEST_LINE = re.compile(r"^# inputs-sha256: ([0-9a-f]{64})$", re.M)
_BODY_LINE = re.compile(r"^# lock-sha256: ([0-9a-f]{64})\n", re.M)
_HASH = re.compile(r"--hash[= ]sha256:([0-9a-f]{64})")


@dataclass(frozen=True)
class Pin:
    name: NormalizedName
    version: str
    hashes: frozenset[str]

    def requirement_line(self) -> str:
        hashes = " ".join(f"--hash=sha256:{h}" for h in sorted(self.hashes))
        return f"{self.name}=={self.version} {hashes}"


@dataclass(frozen=True)
class Lock:
    path: Path
    inputs_sha256: str | None
    pins: tuple[Pin, ...]


# Our platform tags, as uv's --python-platform names them (glibc 2.28: Colab's Ubuntu 22.04 has 2.35).
UV_PLATFORMS = {
    "manylinux_x86_64": "x86_64-manylinux_2_28",
    "manylinux_aarch64": "aarch64-manylinux_2_28",
    "macos_arm64": "aarch64-apple-darwin",
    "macos_x86_64": "x86_64-apple-darwin",
    "win_amd64": "x86_64-pc-windows-msvc",
}


@dataclass(frozen=True)
class LockTarget:
    python_version: str  # "3.12"
    platform: str  # "manylinux_x86_64"

    @property
    def python_tag(self) -> str:
        return "py" + self.python_version.replace(".", "")

    @classmethod
    def current(cls) -> LockTarget:
        return cls(f"{sys.version_info.major}.{sys.version_info.minor}", platform_tag())


def lock_path(recipe: Recipe, python_tag: str, platform: str) -> Path:
    stem = recipe.requirements_in.stem
    return recipe.requirements_in.with_name(f"{stem}-{python_tag}-{platform}.txt")


def existing_locks(recipe: Recipe) -> dict[Path, tuple[str, str]]:
    """Every lock beside the recipe's `.in`, with the (python tag, platform) its name says."""
    pattern = re.compile(rf"^{re.escape(recipe.requirements_in.stem)}-(py\d+)-(.+)\.txt$")
    found = {}
    for path in sorted(recipe.requirements_in.parent.glob(f"{recipe.requirements_in.stem}-py*-*.txt")):
        if match := pattern.match(path.name):
            found[path] = (match.group(1), match.group(2))
    return found


def stale_locks(recipe: Recipe) -> list[Path]:
    return [path for path, (tag, platform) in existing_locks(recipe).items()
            if parse_lock(path).inputs_sha256 != inputs_digest(recipe, tag, platform)]


def inputs_digest(recipe: Recipe, python_tag: str, platform: str) -> str:
    digest = hashlib.sha256()
    for part in (LOCK_FORMAT, python_tag, platform, ",".join(recipe.exclude)):
        digest.update(part.encode() + b"\0")
    # Normalise line endings so a checkout on Windows does not look stale.
    digest.update(recipe.requirements_in.read_bytes().replace(b"\r\n", b"\n"))
    return digest.hexdigest()


def _blocks(text: str) -> list[str]:
    """Split pip-compile output into requirement blocks (a pin with its hash and via lines)."""
    blocks: list[str] = []
    for line in text.splitlines():
        if line[:1] not in ("", " ", "#") or not blocks:
            blocks.append(line)
        else:
            blocks[-1] += "\n" + line
    return blocks


def parse_lock(path: Path) -> Lock:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise BadInput(f"{path}: lock not found") from None
    found = _DIGEST_LINE.search(text)
    body = _BODY_LINE.search(text)
    if not body:
        raise BadInput(f"{path}: not written by `invoke lock` (no lock-sha256 line); recompile it")
    if hashlib.sha256(text[body.end():].encode()).hexdigest() != body.group(1):
        raise BadInput(f"{path}: edited by hand since `invoke lock` wrote it (its pins or hashes "
                       "no longer match its lock-sha256); recompile it with `invoke lock`")
    pins = []
    for block in _blocks(text):
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
            raise BadInput(f"{path}: '{requirement_text}' is not pinned with =="
                           "; recompile with `invoke lock`")
        hashes = frozenset(_HASH.findall(block))
        if not hashes:
            raise BadInput(f"{path}: '{req.name}' has no --hash=sha256 lines"
                           "; recompile with `invoke lock`")
        pins.append(Pin(canonicalize_name(req.name), specs[0].version, hashes))
    return Lock(path, found.group(1) if found else None, tuple(pins))


def check_fresh(lock: Lock, recipe: Recipe, python_tag: str, platform: str) -> None:
    expected = inputs_digest(recipe, python_tag, platform)
    if lock.inputs_sha256 != expected:
        raise BadInput(
            f"{lock.path}: lock is stale, {recipe.requirements_in.name} or the recipe's excludes "
            f"changed since it was compiled; run `invoke lock --recipe {recipe.name}`"
        )


def _without_excluded(text: str, exclude: tuple[NormalizedName, ...]) -> str:
    kept = []
    for block in _blocks(text):
        head = block.split("\n", 1)[0].split("==", 1)[0].split("[", 1)[0].strip()
        if head and not head.startswith("#") and canonicalize_name(head) in exclude:
            continue
        kept.append(block)
    return "\n".join(kept).strip() + "\n"


def render(recipe: Recipe, target: LockTarget, tool: str, body: str) -> str:
    """The lock file: a header naming its inputs' digest and its own body's digest, then the body."""
    python_tag, platform = target.python_tag, target.platform
    return (
        f"# {LOCK_FORMAT}: generated by `invoke lock --recipe {recipe.name}` with {tool}; do not edit.\n"
        f"# recipe: {recipe.name}  python: {target.python_version}  platform: {platform}\n"
        f"# excluded: {', '.join(recipe.exclude) or 'none'}\n"
        f"# inputs-sha256: {inputs_digest(recipe, python_tag, platform)}\n"
        f"# lock-sha256: {hashlib.sha256(body.encode()).hexdigest()}\n"
    ) + body


def _pip_compile(recipe: Recipe, draft: Path, upgrade: bool, upgrade_packages: tuple[str, ...]) -> list[str]:
    cmd = [
        sys.executable, "-m", "piptools", "compile", "--quiet",
        "--generate-hashes", "--allow-unsafe", "--strip-extras", "--no-header",
        "--no-emit-index-url", "--no-emit-trusted-host", "--no-emit-find-links",
        "--output-file", str(draft), os.path.relpath(recipe.requirements_in, recipe.project_root),
    ]
    return cmd + (["--upgrade"] if upgrade else []) + [
        arg for p in upgrade_packages for arg in ("--upgrade-package", p)]


def _uv_compile(recipe: Recipe, target: LockTarget, draft: Path, upgrade: bool,
                upgrade_packages: tuple[str, ...], say) -> list[str]:
    if target.platform not in UV_PLATFORMS:
        raise BadInput(f"unknown platform {target.platform!r}; known: {', '.join(UV_PLATFORMS)}")
    cmd = [
        str(ensure_uv(say)), "pip", "compile", "--quiet", "--generate-hashes", "--no-header",
        "--python-version", target.python_version, "--python-platform", UV_PLATFORMS[target.platform],
        "--output-file", str(draft), os.path.relpath(recipe.requirements_in, recipe.project_root),
    ]
    return cmd + (["--upgrade"] if upgrade else []) + [
        arg for p in upgrade_packages for arg in ("--upgrade-package", p)]


def compile_lock(recipe: Recipe, target: LockTarget, *, upgrade: bool = False,
                 upgrade_packages: tuple[str, ...] = (), say=print) -> Path:
    """Resolve the recipe for `target` and write its lock atomically.

    pip-tools resolves for the interpreter it runs in, so it serves the current Python; any
    other target goes through uv's cross-target `uv pip compile`."""
    path = lock_path(recipe, target.python_tag, target.platform)
    with tempfile.TemporaryDirectory() as tmp:
        draft = Path(tmp) / path.name
        if path.exists() and not upgrade:
            shutil.copyfile(path, draft)  # both resolvers keep the pins they find there
        if target == LockTarget.current():
            cmd, env, tool = _pip_compile(recipe, draft, upgrade, upgrade_packages), pip_env(), "pip-tools"
        else:
            say(f"locking {recipe.name} for Python {target.python_version} on {target.platform} with uv")
            cmd, env, tool = _uv_compile(recipe, target, draft, upgrade, upgrade_packages, say), uv_env(), "uv"
        done = subprocess.run(cmd, cwd=recipe.project_root, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise WarmstartError(f"{tool} could not lock {recipe.requirements_in} for Python "
                                 f"{target.python_version}:\n{done.stderr.strip()}")
        body = _without_excluded(draft.read_text(), recipe.exclude)
    tmp_path = path.with_name(f".{path.name}.tmp")
    tmp_path.write_text(render(recipe, target, tool, body))
    os.replace(tmp_path, path)
    return path
