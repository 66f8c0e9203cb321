"""Finding and running uv (Colab ships it as a standalone binary; elsewhere it is a wheel).

The environment uv runs in is pipconfig's (`uv_env`): the same index settings as pip's.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from .background import NEUTRAL_CWD
from .errors import WarmstartError, said_by

UV_REQUIREMENT = "uv>=0.5"


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
                          capture_output=True, text=True, cwd=NEUTRAL_CWD)
    found = find_uv()
    if done.returncode != 0 or not found:
        raise WarmstartError("could not install uv: install it yourself (pip install uv) and run again",
                             detail=said_by("pip", done.stderr))
    return found
