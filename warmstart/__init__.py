"""warmstart: bring a wiped GPU notebook VM back to work from a recipe and a Drive cache."""

from __future__ import annotations

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


def load_ipython_extension(ipython: object) -> None:  # `%load_ext warmstart`
    from .magic import register

    register(ipython)
