"""Which CUDA libraries a lock's wheels need, read from the wheels themselves (lock time only).

A GPU wheel says nothing in its metadata about the CUDA it was built for; its ELF files do:
`libonnxruntime_providers_cuda.so` of onnxruntime-gpu 1.31 has DT_NEEDED `libcudart.so.13`.
`invoke lock` downloads each binary wheel a lock installs on its platform (the index's file for
the lock's Python and platform, its sha256 checked), reads DT_NEEDED and DT_SONAME of every
shared object with pyelftools, and records the CUDA ones in the lock. A lock is refused when a
wheel needs a CUDA library that neither the platform's system nor the lock's own wheels
(`nvidia-*`) provide, or when the recipe's `[gpu] min_cuda` is below what its wheels need.

The same pass records the digest of each wheel's files (warmstart.manifest), against which a
snapshot of the environment is checked. Results are cached by wheel sha256 in
`~/.cache/warmstart/elf/`, so a re-lock reads only new wheels.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from packaging import tags
from packaging.utils import NormalizedName, parse_wheel_filename

from . import PROJECT_ROOT, extras, home, manifest, wheels
from .download import Downloader, Job
from .errors import BadInput, WarmstartError
from .images import CUDA_LIBRARY, CUDA_MAJOR_LIBRARY, Image
from .lock import LockTarget, Pin, WheelLibs, relock_command
from .pipconfig import IndexSettings
from .profiles import load_profile, profile_paths
from .recipe import Recipe
from .transfer import atomic_write_text

SHARED_OBJECT = re.compile(r"\.so(\.\d+)*$")
# Colab's Ubuntu 22.04 has glibc 2.35: every manylinux tag up to that one fits the lock's platform.
_GLIBC_MINORS = range(35, 4, -1)  # manylinux_2_35 down to manylinux1 (2_5)
_LEGACY_MANYLINUX = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}  # PEP 599, 571, 513


def read_elf(path: Path) -> tuple[set[str], set[str]]:
    """(DT_NEEDED, DT_SONAME) of one shared object."""
    try:
        from elftools.common.exceptions import ELFError
        from elftools.elf.elffile import ELFFile
    except ImportError:
        extras.require("lock", "elftools", "reading the CUDA libraries of wheels")
        raise  # found, yet not importable: the ImportError itself says why

    needed, sonames = set(), set()
    try:
        with open(path, "rb") as fh:
            for segment in ELFFile(fh).iter_segments():
                if segment["p_type"] != "PT_DYNAMIC":
                    continue
                for tag in segment.iter_tags():  # type: ignore[attr-defined]  # a DynamicSegment
                    if tag.entry.d_tag == "DT_NEEDED":
                        needed.add(tag.needed)
                    elif tag.entry.d_tag == "DT_SONAME":
                        sonames.add(tag.soname)
    except ELFError as exc:
        raise WarmstartError(f"{path} is not a readable ELF file ({exc})") from None
    return needed, sonames


def cuda_of(needed: set[str], sonames: set[str]) -> tuple[frozenset[str], frozenset[str]]:
    """(needs, provides): the CUDA sonames needed from elsewhere, and those brought along."""
    provides = frozenset(s for s in sonames if CUDA_LIBRARY.match(s))
    return frozenset(n for n in needed if CUDA_LIBRARY.match(n)) - provides, provides


def read_wheel(wheel: Path) -> tuple[frozenset[str], frozenset[str]]:
    """(needs, provides) of every shared object in a wheel, taken together."""
    needed, sonames = set(), set()
    with zipfile.ZipFile(wheel) as archive, tempfile.TemporaryDirectory(prefix="warmstart-elf-") as tmp:
        for member in archive.infolist():
            if member.is_dir() or not SHARED_OBJECT.search(member.filename):
                continue
            scratch = Path(tmp) / "member"
            with archive.open(member) as src, open(scratch, "wb") as dst:
                if src.read(4) != b"\x7fELF":
                    continue
                dst.write(b"\x7fELF")
                shutil.copyfileobj(src, dst, 1 << 20)
            try:
                more_needed, more_sonames = read_elf(scratch)
            except WarmstartError:
                raise WarmstartError(f"{wheel.name}: {member.filename} is not a readable ELF file") from None
            finally:
                scratch.unlink(missing_ok=True)
            needed |= more_needed
            sonames |= more_sonames
    return cuda_of(needed, sonames)


def lock_tags(target: LockTarget) -> list[tags.Tag]:
    """The wheel tags an interpreter of the lock's Python on the lock's platform accepts."""
    version = tuple(int(part) for part in target.python_version.split("."))
    system, _, arch = target.platform.partition("_")
    if system != "manylinux":
        raise BadInput(f"reading CUDA libraries is only done for manylinux locks, not {target.platform}")
    platforms = []
    for minor in _GLIBC_MINORS:
        platforms.append(f"manylinux_2_{minor}_{arch}")
        if minor in _LEGACY_MANYLINUX:  # some wheels carry only the old name (manylinux2014)
            platforms.append(f"{_LEGACY_MANYLINUX[minor]}_{arch}")
    platforms.append(f"linux_{arch}")
    abi = f"cp{version[0]}{version[1]}"
    return [*tags.cpython_tags(version, platforms=platforms),
            *tags.compatible_tags(version, abi, platforms=platforms)]


def _cache_dir() -> Path:
    return home.elf()


def _scan_one(downloader: Downloader, pin: Pin, rank: dict[tags.Tag, int], say: Callable[[str], None]) -> WheelLibs:
    files = [f for f in downloader.project_files(pin.name) if f.sha256 in pin.hashes]
    choice = wheels.best(((f.filename, f) for f in files), rank)
    if choice is None:
        raise WarmstartError(f"the index lists no wheel of {pin.name}=={pin.version} with a hash the lock "
                             "names that fits its Python and platform; cannot read its CUDA libraries")
    cached = _cache_dir() / f"{choice.sha256}.json"
    try:
        facts = json.loads(cached.read_text())
        return WheelLibs(pin.name, pin.version, choice.sha256, frozenset(facts["needs"]),
                         frozenset(facts["provides"]), str(facts["files"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    pure = all(tag.platform == "any" for tag in parse_wheel_filename(choice.filename)[3])
    with tempfile.TemporaryDirectory(prefix="warmstart-scan-") as tmp:
        wheel = Path(tmp) / choice.filename
        downloader.fetch([Job(choice.url, choice.sha256, wheel, choice.size)], f"read {choice.filename[:30]}")
        size = wheel.stat().st_size
        say(f"  read {choice.filename} ({f'{size / 2**20:.0f} MiB' if size >= 2**20 else f'{size / 2**10:.0f} KiB'})")
        needs_, provides = (frozenset[str](), frozenset[str]()) if pure else read_wheel(wheel)  # pure: no ELF
        digest = manifest.wheel_digest(wheel)
    atomic_write_text(cached, json.dumps({"file": choice.filename, "needs": sorted(needs_),
                                          "provides": sorted(provides), "files": digest}))
    return WheelLibs(pin.name, pin.version, choice.sha256, needs_, provides, digest)


def scan(pins: tuple[Pin, ...], target: LockTarget, say: Callable[[str], None] = print) -> list[WheelLibs]:
    """The CUDA libraries of the wheel each pin installs on the lock's platform, in lock order."""
    rank = wheels.ranking(lock_tags(target))
    downloader = Downloader(IndexSettings.from_environ(), parallel=1, offline_way_out=False)
    with ThreadPoolExecutor(4) as pool:  # big wheels: a few at a time, each read once
        return list(pool.map(lambda pin: _scan_one(downloader, pin, rank, say), pins))


def platforms_for(target: LockTarget, image: Image | None,
                  root: Path = PROJECT_ROOT) -> dict[str, frozenset[str] | None]:
    """The platforms a lock serves and the CUDA libraries each one's system provides (None: not
    declared, as on a workstation, so not checked). An image lock serves its image; a bare lock
    every profile that has no image for its Python."""
    if image is not None:
        return {f"the {image.profile} image {image.name}": image.cuda}
    served = {}
    for name, path in profile_paths(root).items():
        profile = load_profile(path)
        if not profile.images_for(target.python_version):
            served[f"the {name} platform"] = profile.cuda(None)
    return served


def problems(recipe: Recipe, target: LockTarget, installs: tuple[Pin, ...], wheels: Mapping[NormalizedName, WheelLibs],
             platforms: dict[str, frozenset[str] | None]) -> list[str]:
    """Why the lock cannot load on a platform it serves: one line per wheel and library."""
    found = []
    missing = [p for p in installs if p.name not in wheels or wheels[p.name].sha256 not in p.hashes]
    if missing:
        return [f"no CUDA facts for {', '.join(f'{p.name}=={p.version}' for p in missing)}; "
                f"recompile with `{relock_command(recipe, target)}`"]
    installed = [wheels[p.name] for p in installs]
    brought = frozenset().union(*(w.provides for w in installed))
    for label, system in platforms.items():
        if system is None:
            continue
        for wheel in installed:
            if lacking := sorted(wheel.needs - system - brought):
                found.append(
                    f"{wheel.name}=={wheel.version} needs {', '.join(lacking)}, which neither {label} "
                    f"(CUDA: {_summary(system)}) nor the lock's own wheels provide")
    majors = {int(m.group(2)): (w, lib) for w in installed for lib in w.needs
              if (m := CUDA_MAJOR_LIBRARY.match(lib))}
    if majors:
        top = max(majors)
        wheel, library = majors[top]
        stated = recipe.gpu.min_cuda
        if stated is None or stated.major < top:
            found.append(f"{recipe.path}: [gpu] min_cuda is {stated or 'not set'} but "
                         f"{wheel.name}=={wheel.version} needs {library} (CUDA {top}); "
                         f"set min_cuda = \"{top}.0\"")
    return found


def _summary(sonames: frozenset[str]) -> str:
    runtime = sorted(s for s in sonames if s.startswith("libcudart."))
    return ", ".join(runtime) + (f" and {len(sonames) - len(runtime)} more" if sonames else "none")
