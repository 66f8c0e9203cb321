"""The options of `bootstrap`, declared once: the invoke task, `%warmstart` and warmstart.sh all
read this table (standard library only: warmstart.sh parses it before any dependency is there).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import BadInput

INSTALLERS = ("auto", "pip", "uv")


def _opt(help: str, default: Any = None) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Options:
    recipe: str = field(metadata={"help": "recipe name (recipes/NAME.toml, or the Drive recipe folder) "
                                          "or a .toml path"})
    drive: str | None = _opt("Drive root (default: WARMSTART_DRIVE, else the platform profile's folder)")
    python: str | None = _opt("interpreter whose environment receives the packages: a path or a command "
                              "on PATH (default: WARMSTART_PYTHON, else this one)")
    offline: bool = _opt("never contact a package index; install from the Drive cache only", False)
    allow_no_gpu: bool = _opt("go on with a warning when the recipe needs a GPU and there is none", False)
    allow_unfit_gpu: bool = _opt("go on with a warning when the GPU is below the recipe's limits", False)
    dry_run: bool = _opt("run the checks that change nothing and print the plan", False)
    installer: str = _opt("pip or uv (default: uv when it is installed, else pip)", "auto")
    packages_only: bool = _opt("install the lock only; leave the recipe's assets and checks alone", False)
    wait: bool = _opt("write the Drive cache and the snapshot before returning, not in the background "
                      "(WARMSTART_WAIT=1 does the same)", False)
    cache: str | None = _opt("the team cache behind Drive: s3://bucket/prefix, gs://bucket/prefix, another "
                             "fsspec URL, or a shared folder (default: WARMSTART_CACHE)")
    cache_read_only: bool = _opt("read the team cache, never write it (WARMSTART_CACHE_READ_ONLY=1 does the same)",
                                 False)
    keep_runtime: bool = _opt("refuse, rather than replace, any version of a distribution the environment "
                              "already has (a runtime's own packages stay exactly as they are)", False)
    # Set by the in-kernel API, not a flag: the distributions whose modules the running kernel has
    # imported. A `!invoke` subprocess cannot know them and uses the platform's preloaded list.
    kernel_imported: frozenset[str] | None = None

    def __post_init__(self) -> None:
        required_recipe(self.recipe)

    @classmethod
    def flags(cls) -> dict[str, str]:
        """`--flag-name` -> its help, for every option a user can pass."""
        return {f.name.replace("_", "-"): f.metadata["help"] for f in fields(cls) if "help" in f.metadata}


def required_recipe(recipe: str | None) -> str:
    if not recipe:
        raise BadInput("--recipe NAME is needed (see `invoke recipes` for the names)")
    return recipe


def add_arguments(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """Options' flags on an argparse parser (the `%warmstart` magic), less those in `skip`."""
    for f in fields(Options):
        if "help" not in f.metadata or f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            parser.add_argument(flag, action="store_true", help=f.metadata["help"])
        elif f.name == "installer":
            parser.add_argument(flag, choices=INSTALLERS, default="auto", help=f.metadata["help"])
        else:
            parser.add_argument(flag, required=f.name == "recipe", help=f.metadata["help"])


def value_of(args: list[str], flag: str) -> str | None:
    """The value of `--flag VALUE` or `--flag=VALUE` in a command line, without parsing the rest
    (warmstart.sh needs --drive before warmstart's own tools are there)."""
    for n, arg in enumerate(args):
        if arg == flag and n + 1 < len(args):
            return args[n + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None
