"""Finding and running uv (Colab ships it as a standalone binary; elsewhere it is a wheel).

uv's own cache stays on local disk (Drive refuses the symlinks uv uses), and the variables that
have broken it on Colab (UV_CONSTRAINT / UV_BUILD_CONSTRAINT pointing at missing files) are
cleared for every call.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from .errors import WarmstartError

UV_REQUIREMENT = "uv>=0.5"
_CLEARED = ("UV_CONSTRAINT", "UV_BUILD_CONSTRAINT", "UV_OVERRIDE", "UV_REQUIRE_HASHES",
            "UV_NO_BINARY", "UV_FIND_LINKS", "UV_CONFIG_FILE", "UV_SYSTEM_PYTHON")


def find_uv() -> Path | None:
    try:
        from uv import find_uv_bin  # the `uv` wheel, when installed next to warmstart

        return Path(find_uv_bin())
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        return Path(found) if found else None


def ensure_uv(say) -> Path:
    """uv, installing the `uv` wheel into this environment first when there is none."""
    found = find_uv()
    if found:
        return found
    say(f"installing {UV_REQUIREMENT} into {sys.prefix} (needed to lock for another Python)")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", UV_REQUIREMENT],
                          capture_output=True, text=True)
    found = find_uv()
    if done.returncode != 0 or not found:
        raise WarmstartError(f"could not install uv: {done.stderr.strip()[-500:]}; "
                             "install it yourself (pip install uv) and run again")
    return found


def uv_env(unset: Iterable[str] = ()) -> dict[str, str]:
    drop = set(_CLEARED) | set(unset)
    env = {k: v for k, v in os.environ.items() if k not in drop}
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "warmstart" / "uv"
    env.update(UV_CACHE_DIR=str(cache), UV_NO_CONFIG="1", UV_NO_PROGRESS="1")
    if "PIP_INDEX_URL" in os.environ and "UV_INDEX_URL" not in os.environ:
        env["UV_INDEX_URL"] = os.environ["PIP_INDEX_URL"]  # one mirror setting serves both
    return env
