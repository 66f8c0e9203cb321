"""`invoke` in a checkout: the same tasks as the installed `warmstart` command (warmstart/commands.py)."""

from warmstart.commands import namespace

__all__ = ["namespace"]
