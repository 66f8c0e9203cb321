"""warmstart's own folder on local disk, and everything in it: the one place its layout is spelled.

    ~/.cache/warmstart/            ($XDG_CACHE_HOME/warmstart), its user's alone (0700)
        tools/<pyXY>/              warmstart's own virtualenv (warmstart.sh)
        tools/<pyXY>.lock          one warmstart.sh at a time restores it
        logs/                      bug reports and failed checks' output: the one log folder
        downloads/                 partial downloads, resumed by the next run
        elf/                       what `invoke lock` read from wheels' ELF files, by sha256
        uv/                        uv's cache
        uv-credentials/            uv's credential store, where the user keeps none of their own
        pip/                       pip's cache
        pip-tools/                 pip-tools' cache (`invoke lock`)
        live-locks/                locks made for a drifted runtime, before they reach Drive
        placed.json                assets placed in workdirs, as last seen
        <kind>/<prefix hash>.json  one record per target environment and kind (STATE_KINDS)
        drivework/<prefix hash>/   that target's pending Drive writes, one folder per job
        locks/<prefix hash>.lock   one run at a time per target
        pycache/                   a checkout on Drive keeps its bytecode here (warmstart/__init__.py)

Standard library only (warmstart.sh uses it before any dependency is there).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from . import cache_home

# The records kept per target environment (see state_file).
STATE_KINDS = ("verified", "restart", "checks", "used", "drivework", "locks")


def root(environ: Mapping[str, str] = os.environ) -> Path:
    """`$XDG_CACHE_HOME/warmstart`, else ~/.cache/warmstart."""
    return cache_home(environ) / "warmstart"


def private(environ: Mapping[str, str] = os.environ) -> Path:
    """root(), made (or kept) readable by its user alone: it holds job files, logs and state that
    name the user's folders and stores."""
    folder = root(environ)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if folder.stat().st_uid == os.getuid() and folder.stat().st_mode & 0o077:
        folder.chmod(0o700)
    return folder


def log_file(what: str) -> Path:
    """A new log's path: logs/<what>-<time>-<pid>.log."""
    return root() / "logs" / f"{what}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log"


def python_tag() -> str:
    """The running Python's tag (py312): warmstart's tools, their locks and snapshots are per Python."""
    return f"py{sys.version_info.major}{sys.version_info.minor}"


def tools(python_tag: str, environ: Mapping[str, str] = os.environ) -> Path:
    return root(environ) / "tools" / python_tag


def downloads(environ: Mapping[str, str] = os.environ) -> Path:
    return root(environ) / "downloads"


def elf() -> Path:
    return root() / "elf"


def uv_cache(environ: Mapping[str, str] = os.environ) -> Path:
    return root(environ) / "uv"


def pip_cache(environ: Mapping[str, str] = os.environ) -> Path:
    return root(environ) / "pip"


def uv_credentials(environ: Mapping[str, str] = os.environ) -> Path:
    return root(environ) / "uv-credentials"


def pip_tools_cache() -> Path:
    return root() / "pip-tools"


def live_locks() -> Path:
    return root() / "live-locks"


def placed(environ: Mapping[str, str] = os.environ) -> Path:
    return root(environ) / "placed.json"


def _key(prefix: Path) -> str:
    return hashlib.sha256(str(prefix).encode()).hexdigest()[:16]


def state_file(kind: str, prefix: Path) -> Path:
    """warmstart's record of one kind about one target environment (verified RECORDs, a pending
    restart notice, failed checks, ...), keyed by the environment's prefix."""
    assert kind in STATE_KINDS, kind
    return root() / kind / f"{_key(prefix)}.json"


def jobs(prefix: Path) -> Path:
    """The folder of a target's pending Drive writes: one subfolder per run that left some."""
    return root() / "drivework" / _key(prefix)


def run_lock(prefix: Path) -> Path:
    """The file that lets one run at a time install into a target. In warmstart's own folder,
    which only its user can write, not at a name anybody could plant in the shared /tmp."""
    return run_locks() / f"{_key(prefix)}.lock"


def run_locks(environ: Mapping[str, str] = os.environ) -> Path:
    """The folder of the run locks: there once a bootstrap has run on this machine (a wiped VM
    has none)."""
    return root(environ) / "locks"
