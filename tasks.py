"""`invoke` in a checkout: the same tasks as the installed `warmstart` command (warmstart/commands.py)."""

import sys

# invoke turns bytecode writing off before it imports this file (unless --write-pyc); its own
# modules were written by then, as the interpreter's setting has it. warmstart's __init__ is
# imported with writing still off: from a checkout on Drive its bytecode would go beside it
# (the rest of the package keeps its bytecode in warmstart's cache folder, warmstart/__init__.py).
# What is imported after it (warmstart and its dependencies) keeps the interpreter's setting
# again, so that a run does not compile it anew: warmstart's tools are installed without
# bytecode (warmstart/tools.py), and compiling a restore's imports took 0.4 s on Colab's Python.
import warmstart  # noqa: F401

sys.dont_write_bytecode = bool(sys.flags.dont_write_bytecode)

from warmstart.commands import namespace, quiet_when_the_reader_leaves  # noqa: E402

quiet_when_the_reader_leaves()

__all__ = ["namespace"]
