"""The Colab stand-in's parts that the tests and the bench share: the pyenv interpreter of a
Colab runtime's Python, an image's versions of a set of distributions installed into a VM, and
the environment a wiped VM keeps of this machine's."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from warmstart.images import Image
from warmstart.pipconfig import uv_env
from warmstart.uv import find_uv


def pyenv_python(minor: str) -> Path | None:
    """The newest pyenv interpreter of Python `minor` (3.12, 3.13), as Colab's runtimes have."""
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    if shutil.which("pyenv"):
        root = subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout.strip() or root
    found = sorted(Path(root).glob(f"versions/{minor}.*/bin/python{minor}"),
                   key=lambda p: [int(x) for x in p.parent.parent.name.split(".") if x.isdigit()])
    return found[-1] if found else None


def machine_network() -> dict[str, str]:
    """This machine's own network settings (proxy, CA bundle), all a wiped VM's environment keeps
    of the caller's: no pip configuration, no warmstart variables."""
    return {k: v for k, v in os.environ.items()
            if k.lower().endswith("_proxy") or k in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")}


def install_image_versions(python: Path, names: set[str], image: Image, scratch: Path, uv_cache: Path) -> None:
    """The image's versions of `names`, and what they need, at the image's versions too (from
    PyPI, with uv; `scratch` holds the requirement files)."""
    shipped = image.shipped
    wanted = scratch / "image-wanted.txt"
    wanted.write_text("".join(f"{n}=={shipped[n]}\n" for n in sorted(names)))
    constraints = scratch / "image-constraints.txt"
    constraints.write_text("".join(f"{n}=={v}\n" for n, v in shipped.items() if "+" not in v))
    env = uv_env() | {"UV_CACHE_DIR": str(uv_cache)}
    env.pop("PIP_INDEX_URL", None)
    subprocess.run([str(find_uv()), "pip", "install", "--quiet", "--python", str(python), "-r", str(wanted),
                    "-c", str(constraints)], check=True, env=env)
