"""The errors warmstart reports to users, each tied to the exit code the CLI returns.

Everything that should stop a run raises one of these with a one-line message that names
the file, key or package at fault and the next step; `warmstart.cli` turns them into exit codes
in one place.
"""

from __future__ import annotations


class WarmstartError(Exception):
    """Anything else that went wrong (exit 1)."""

    exit_code = 1


class BadInput(WarmstartError):
    """A recipe, lock, profile or flag is wrong (exit 2)."""

    exit_code = 2


class PreconditionUnmet(WarmstartError):
    """The machine does not meet what the recipe needs (exit 3): GPU, Drive, Python, cache."""

    exit_code = 3
