"""Platform images (`envs/images/*.toml`): what a notebook runtime ships, as its provider publishes it.

An image names its platform profile, its Python, its `pip freeze` and the CUDA libraries its
system provides. Locks for that platform are compiled against the image (what it ships stays at
its version unless the recipe rules that out) and their CUDA needs are checked against it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import InvalidVersion, Version

# tomllib: the standard one, or tomli
from .config import Field, Schema, file_text, parse_toml, read_toml_bytes, tomllib, validate
from .console import abridged
from .errors import BadInput
from .invocation import command_line
from .transfer import atomic_write_text

IMAGE_SCHEMA: Schema = {
    "name": Field("str", required=True),
    "profile": Field("str", required=True),
    "python": Field("str", required=True),
    "freeze": Field("str", required=True),
    "cuda": Field("str"),
    "source": Field("str", default=""),
}

# Sonames of the CUDA toolkit, cuDNN and NCCL libraries: what a GPU wheel may need from the
# system or from `nvidia-*` wheels. The driver's own (libcuda.so.1, libnvidia-ml.so.1) and
# TensorRT's (libnvinfer, an optional onnxruntime provider) are not among them.
CUDA_LIBRARY = re.compile(
    r"^lib(cudart|cublas|cublasLt|cufft|cufftw|curand|cusolver|cusolverMg|cusparse|cusparseLt"
    r"|nvrtc|nvJitLink|cupti|cudnn(_\w+)?|nccl|nvToolsExt|npp\w*|nvjpeg|cufile|nvfatbin)\.so\.\d+$"
)
# Libraries whose soname major is the CUDA major they belong to (libcufft.so.11 is CUDA 12).
CUDA_MAJOR_LIBRARY = re.compile(r"^lib(cudart|cublas|cublasLt|nvrtc)\.so\.(\d+)$")

_FREEZE_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)\s*$")


LIVE = "live-"  # the name of this VM as an image begins so (live_image)


@dataclass(frozen=True)
class Image:
    name: str
    profile: str
    python: Version  # 3.13.15
    shipped: dict[NormalizedName, str]  # distribution -> version, local part included (+cu128)
    cuda: frozenset[str]  # sonames the system provides
    source: str
    path: Path
    digest: str  # sha256 of the image's files: a lock compiled against it records it

    @property
    def python_minor(self) -> str:
        return f"{self.python.major}.{self.python.minor}"

    @property
    def live(self) -> bool:
        """This VM's own, made by `live_image`, not a published list."""
        return self.name.startswith(LIVE)

    def describe(self) -> str:
        return f"{self.name} (Python {self.python}, {len(self.shipped)} distributions; {self.source})"


@dataclass(frozen=True)
class Drift:
    """How far this VM is from the image its lock was compiled against (Colab changes its image
    weekly; a VM may match none of the published lists exactly)."""

    image: str
    total: int  # distributions the image ships
    differing: dict[NormalizedName, tuple[str, str | None]]  # the image's version, the VM's (None: absent)
    closure: tuple[NormalizedName, ...]  # of those, the ones the recipe's lock pins
    python: tuple[str, str] | None  # the image's Python and the VM's, when they differ

    def describe(self) -> str:
        if not self.differing and not self.python:
            return f"this runtime matches {self.image}"
        parts = [f"this runtime differs from {self.image} in {len(self.differing)} of {self.total} distributions"]
        if self.closure:
            each = [f"{n} {self.differing[n][1] or 'absent'} (image {self.differing[n][0]})" for n in self.closure]
            parts.append(f"{len(self.closure)} of them in this recipe's closure: " + abridged(each, 6))
        else:
            parts.append("none in this recipe's closure")
        if self.python:
            parts.append(f"Python {self.python[1]} (image {self.python[0]})")
        return "; ".join(parts)

    def as_json(self) -> dict[str, object]:
        return {"summary": self.describe(), "image": self.image, "distributions": self.total,
                "differing": len(self.differing),
                "closure": {n: {"image": self.differing[n][0], "installed": self.differing[n][1]}
                            for n in self.closure},
                "python": {"image": self.python[0], "installed": self.python[1]} if self.python else None}


def drift(image: Image, installed: dict[NormalizedName, str], python: Version,
          pinned: set[NormalizedName]) -> Drift:
    """What the VM has against what the image ships (its distributions, and its Python)."""
    differing = {}
    for name, shipped in image.shipped.items():
        have = installed.get(name)
        if have is None or _normalized(have) != _normalized(shipped):
            differing[name] = (shipped, have)
    closure = tuple(sorted(n for n in differing if n in pinned))
    pythons = (str(image.python), str(python)) if image.python != python else None
    return Drift(image.name, len(image.shipped), differing, closure, pythons)


def _normalized(version: str) -> str:
    try:
        return str(Version(version))
    except InvalidVersion:
        return version


def live_image(nearest: Image, installed: dict[NormalizedName, str], python: Version) -> Image:
    """This VM as an image: what it has installed, on the system of the published image it is
    nearest to (its CUDA libraries). Its digest names the VM's versions of what that image
    ships (what the recipe added since does not count), so a lock made against it is found
    again by this VM and the next one of the same runtime, and by no other."""
    digest = hashlib.sha256(f"{python}\n{nearest.digest}\n".encode())
    digest.update("".join(f"{name}=={installed.get(name)}\n" for name in sorted(nearest.shipped)).encode())
    name = f"{LIVE}{digest.hexdigest()[:16]}"
    return Image(name, nearest.profile, python, dict(installed), nearest.cuda,
                 f"this VM (nearest published: {nearest.name})", nearest.path, digest.hexdigest())


def parse_freeze(text: str) -> dict[NormalizedName, str]:
    """`name==version` lines of a pip freeze; direct references (`name @ url`) name no version."""
    shipped = {}
    for line in text.splitlines():
        if match := _FREEZE_LINE.match(line.strip()):
            shipped[canonicalize_name(match.group(1))] = match.group(2)
    return shipped


def _why(exc: OSError | UnicodeDecodeError) -> str:
    return "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else str(exc.strerror)


def read_cuda_list(path: Path) -> frozenset[str]:
    try:
        lines = file_text(path).splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: cannot read the CUDA library list ({_why(exc)}); restore the file, or fix "
                       "the 'cuda' key of the image that names it") from None
    sonames = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    wrong = sorted(s for s in sonames if not CUDA_LIBRARY.match(s))
    if wrong:
        raise BadInput(f"{path}: {wrong[0]!r} is not a CUDA library soname like libcudart.so.12")
    return frozenset(sonames)


def load_image(path: Path, read_cuda: Callable[[Path], frozenset[str]] = read_cuda_list) -> Image:
    """An image file, with the freeze list and CUDA library list it names (`read_cuda`: images_of
    reads the list they share once). Each file is read once: on Drive every open waits."""
    return _image(path, *_image_file(path), read_cuda)


def _image_file(path: Path) -> tuple[bytes, dict[str, Any]]:
    """An image file's bytes (its digest's part) and its fields, validated."""
    raw = read_toml_bytes(path)
    return raw, validate(parse_toml(raw, path), IMAGE_SCHEMA, path)


def _image(path: Path, raw: bytes, data: dict[str, Any], read_cuda: Callable[[Path], frozenset[str]]) -> Image:
    """The image of the file `path` (its bytes `raw`, validated as `data`), with the freeze and
    CUDA library lists it names."""
    try:
        python = Version(data["python"])
    except InvalidVersion:
        raise BadInput(f"{path}: 'python' must be a version like \"3.13.15\", got {data['python']!r}") from None
    digest = hashlib.sha256(raw)
    freeze = path.parent / data["freeze"]
    try:
        text = file_text(freeze)
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: 'freeze' names {freeze}, which cannot be read ({_why(exc)}); write the image "
                       f"again from its provider's list (see `{command_line('image', '--help')}`)") from None
    digest.update(text.encode())
    cuda: frozenset[str] = frozenset()
    if data["cuda"]:
        cuda = read_cuda(path.parent / data["cuda"])
        digest.update("\n".join(sorted(cuda)).encode())
    return Image(data["name"], data["profile"], python, parse_freeze(text), cuda, data["source"],
                 path, digest.hexdigest())


def images_of(profile: str, envs: Path) -> dict[str, Image]:
    """The images of one platform profile, by name (several may share a Python: Colab's pinned
    runtimes 2026.04 and 2026.07 are both 3.12). The lists of other profiles' images are not read."""
    found = {}
    read_cuda = functools.cache(read_cuda_list)  # the images share one list
    for path in sorted((envs / "images").glob("*.toml")):
        raw, data = _image_file(path)
        if data["profile"] == profile:
            image = _image(path, raw, data, read_cuda)
            found[image.name] = image
    return found


def image_named(name: str, envs: Path) -> Image:
    path = envs / "images" / f"{name}.toml"
    if not path.is_file():
        have = ", ".join(sorted(p.stem for p in (envs / "images").glob("*.toml"))) or "none"
        raise BadInput(f"no image {name!r} in {envs / 'images'} (there are: {have}); add it with the image command "
                       f"(see `{command_line('image', '--help')}`)")
    image = load_image(path)
    if image.name != name:
        raise BadInput(f"{path}: its name is {image.name!r}; an image file is named after its image")
    return image


def by_likeness(images: list[Image], installed: dict[NormalizedName, str]) -> list[Image]:
    """Images, the one this VM matches best first: fewest of the VM's distributions the image
    lacks or has at another version, then fewest of the image's the VM lacks or has otherwise;
    of equals, the later name (the newer runtime)."""
    have = {name: _normalized(version) for name, version in installed.items()}

    def unlike(image: Image) -> tuple[int, int]:
        shipped = {name: _normalized(version) for name, version in image.shipped.items()}
        return (sum(1 for name, version in have.items() if shipped.get(name) != version),
                sum(1 for name, version in shipped.items() if have.get(name) != version))
    return sorted(sorted(images, key=lambda i: i.name, reverse=True), key=unlike)


def write_image(envs: Path, name: str, profile: str, freeze: Path, python: str, source: str,
                cuda: str | None) -> Path:
    """Add or refresh an image from a published `pip freeze` (the `invoke image` task)."""
    if not re.match(r"^[a-z0-9][a-z0-9._-]*$", name):
        raise BadInput(f"image name {name!r}: use lower-case letters, digits, '.', '-' or '_'")
    try:
        Version(python)
        text = freeze.read_text()
    except InvalidVersion:
        raise BadInput(f"--python must be the image's Python version like 3.13.15, got {python!r}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{freeze}: cannot read the freeze file ({exc})") from None
    if not parse_freeze(text):
        raise BadInput(f"{freeze}: no `name==version` lines; pass the output of `pip freeze`")
    folder = envs / "images"
    if cuda is not None:
        if not (folder / cuda).is_file():
            lists = ", ".join(sorted(p.name for p in folder.glob("cuda-*.txt"))) or "none"
            raise BadInput(f"--cuda {cuda!r} names no file in {folder} (there are: {lists}); add the image's "
                           "CUDA library list there, or name one of them")
        read_cuda_list(folder / cuda)  # refuse a list that is malformed
    fields = {"name": name, "profile": profile, "python": python, "freeze": f"{name}.freeze.txt",
              **({"cuda": cuda} if cuda else {}), "source": source}
    path = folder / f"{name}.toml"
    toml = _updated_toml(path, fields)
    # The image's digest covers both files, byte for byte: what is unchanged is not written, so
    # refreshing an image from the same freeze leaves every lock of it fresh.
    for dest, content in ((folder / f"{name}.freeze.txt", text), (path, toml)):
        if not dest.exists() or dest.read_text() != content:
            atomic_write_text(dest, content)
    return path


def _updated_toml(path: Path, fields: dict[str, str]) -> str:
    """The image file with these values: a new one, or the existing one with its comments and
    the lines whose value is unchanged kept as they are (JSON strings are TOML basic strings)."""
    lines = {key: f"{key} = {json.dumps(value)}" for key, value in fields.items()}
    if not path.exists():
        return "# Written by `invoke image`; the freeze beside it is the provider's, verbatim.\n" + "".join(
            line + "\n" for line in lines.values())
    kept, seen = [], set()
    for line in path.read_text().splitlines():
        key = line.split("=", 1)[0].strip() if "=" in line and not line.lstrip().startswith("#") else None
        if key is None or key not in fields:
            if key is None:  # a comment or a blank line; a key no longer given goes
                kept.append(line)
            continue
        seen.add(key)
        try:
            same = tomllib.loads(line).get(key) == fields[key]
        except tomllib.TOMLDecodeError:
            same = False
        kept.append(line if same else lines[key])
    kept += [lines[key] for key in fields if key not in seen]
    return "\n".join(kept) + "\n"
