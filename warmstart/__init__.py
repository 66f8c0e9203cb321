"""warmstart: bring a wiped GPU notebook VM back to work from a recipe and a Drive cache."""

from __future__ import annotations

import contextlib
import importlib.machinery
import os
import sys
from pathlib import Path

__version__ = "0.1.0"


def _project_root() -> Path:
    """The folder holding recipes/, requirements/ and envs/: the checkout this package lies in
    (tasks.py lives there too), else the copy an installed wheel carries (see setup.py)."""
    checkout = Path(__file__).resolve().parent.parent
    if all((checkout / folder).is_dir() for folder in ("recipes", "requirements", "envs")):
        return checkout
    return Path(__file__).resolve().parent / "_shipped"


PROJECT_ROOT = _project_root()


class _SourceOnly(importlib.machinery.SourceFileLoader):
    """Reads bytecode where it exists, never writes any."""

    def set_data(self, path: str, data: bytes, *, _mode: int = 0o666) -> None:  # type: ignore[override]
        pass


def _no_bytecode_on_drive() -> None:
    """The notebook kernel imports warmstart from its checkout on Drive (sys.path.append): its
    bytecode would land on Drive, a write per module that outlives the VM. From there, warmstart's
    modules are compiled in memory, and this file's own bytecode, written by this very import, goes."""
    here = Path(__file__).parent
    # Read here, not through warmstart.settings: importing it first would write its bytecode.
    mount = Path(os.environ.get("WARMSTART_MOUNT_POINT") or "/content/drive")
    if not here.is_relative_to(mount):
        return
    finder = importlib.machinery.FileFinder(str(here), (_SourceOnly, importlib.machinery.SOURCE_SUFFIXES))
    for entry in __path__:
        sys.path_importer_cache[entry] = finder
    cached = globals().get("__cached__")
    if cached and not sys.dont_write_bytecode:
        cache = Path(cached)
        cache.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            cache.parent.rmdir()  # only when nothing else is in it


_no_bytecode_on_drive()


def load_ipython_extension(ipython: object) -> None:  # `%load_ext warmstart`
    from .magic import register

    register(ipython)
