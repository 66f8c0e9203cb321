"""warmstart: bring a wiped GPU notebook VM back to work from a recipe and a Drive cache."""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

# The checkout that holds recipes/, requirements/ and envs/; tasks.py lives here too.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def load_ipython_extension(ipython):  # `%load_ext warmstart`
    from .magic import register

    register(ipython)
