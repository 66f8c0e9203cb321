"""warmstart's optional parts (pyproject's extras), and the command that installs one here.

warmstart is not on the package index, so `pip install 'warmstart[lock]'` would install nothing
(or, one day, someone else's package). The command named instead installs the extra's own
requirements, read from warmstart's metadata, into the interpreter running warmstart.
"""

from __future__ import annotations

import importlib
import subprocess
import sys

from packaging.requirements import Requirement

from . import PROJECT_ROOT
from .background import NEUTRAL_CWD
from .config import tomllib
from .errors import PreconditionUnmet
from .invocation import in_cell, in_notebook
from .settings import PYTHON


def requirements_of(extra: str) -> list[str]:
    """The requirements an extra adds: from the installed metadata, else the checkout's pyproject."""
    # here, not at the top: only a message needs it, and every run imports this module (importlib's
    # metadata and the email package it brings took 15 ms, 75 ms on a wiped VM's busy CPUs)
    from importlib import metadata

    try:
        declared = [Requirement(line) for line in metadata.requires("warmstart") or []]
    except metadata.PackageNotFoundError:  # imported from a checkout that was never installed
        declared = []
    found = []
    for req in declared:
        # the extra's own: wanted with it, not without it (a python_version marker alone is neither)
        if req.marker and req.marker.evaluate({"extra": extra}) and not req.marker.evaluate({"extra": ""}):
            req.marker = None
            found.append(str(req))
    if found:
        return found
    try:
        project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return []
    return [r for r in project.get("optional-dependencies", {}).get(extra, []) if not r.startswith("warmstart[")]


def install_command(extra: str) -> str:
    """A command that, pasted where it is printed (a shell, a notebook's cell), gives the
    interpreter running warmstart the extra."""
    return pip_install_command(requirements_of(extra) or [f"warmstart[{extra}]"])


def pip_install_command(wanted: list[str]) -> str:
    """A command that, pasted where it is printed, installs `wanted` into the interpreter running
    warmstart."""
    # asked of a fresh interpreter (this one's sys.path may have been changed): only when an
    # error is said, so the fraction of a second it costs is no one's wait
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, cwd=NEUTRAL_CWD).returncode == 0:
        return in_cell([sys.executable, "-m", "pip", "install", *wanted], in_notebook())
    # warmstart's own tools on Colab live in a virtualenv without pip (warmstart.sh fills it with
    # the notebook's pip): that pip, aimed at this interpreter
    host = PYTHON.get() or "python3"
    return in_cell([host, "-m", "pip", "--python", sys.executable, "install", *wanted], in_notebook())


def require(extra: str, module: str, needed_for: str) -> None:
    """Refuse (exit 3) before any work when the extra's module is not importable."""
    try:
        importlib.import_module(module)
    except ImportError:
        raise PreconditionUnmet(f"{needed_for} needs warmstart's `{extra}` extra, which is not installed: "
                                f"{install_command(extra)}") from None
