"""`invoke` in a checkout: the same tasks as the installed `warmstart` command (warmstart/commands.py)."""

import sys

# invoke turns bytecode writing off for all it imports (unless --write-pyc). What is imported
# from here on (warmstart and its dependencies) keeps the interpreter's own setting instead, so
# a checkout's runs do not compile warmstart anew each time (0.1 s a run); a checkout on Drive
# keeps its bytecode in warmstart's cache folder instead, whatever the setting (warmstart/__init__.py).
sys.dont_write_bytecode = bool(sys.flags.dont_write_bytecode)

from warmstart.commands import namespace  # noqa: E402

__all__ = ["namespace"]
