"""`%warmstart`: the in-kernel bootstrap as an IPython line magic.

    %load_ext warmstart
    %warmstart bootstrap --recipe hyperlpr [--drive DIR] [--offline] [--allow-no-gpu] ...
    %warmstart status --recipe hyperlpr [--drive DIR] [--packages-only]
"""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from . import colab
from .settings import STATUS_OPTIONS, add_arguments


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="%warmstart", add_help=True)
    commands = parser.add_subparsers(dest="command", required=True)
    boot = commands.add_parser("bootstrap", help="mount Drive, install the recipe, cd to its workdir")
    add_arguments(boot, skip=("python",))  # the options of `invoke bootstrap`; the target is the kernel
    boot.add_argument("--mount-point", help="where to mount Drive (default: the platform's place)")
    boot.add_argument("--restart", action="store_true", help="restart the runtime when the kernel "
                      "imported a package this run replaced")
    look = commands.add_parser("status", help="what bootstrap would find and do here, changing nothing")
    add_arguments(look, STATUS_OPTIONS, skip=("python",))
    return parser


def _arguments(line: str) -> dict[str, Any] | None:
    """The line's arguments by name; None where argparse has said what is wrong with it (or the
    help): an unclosed quote too, not as shlex's traceback in the notebook."""
    parser = _parser()
    try:
        try:
            words = shlex.split(line)
        except ValueError as exc:
            parser.error(f"{str(exc).lower()} in {line!r}")
        return vars(parser.parse_args(words))
    except SystemExit:
        return None


def warmstart_magic(line: str) -> None:
    """The report stays in `warmstart.colab.last_report` rather than flooding the cell output."""
    if (args := _arguments(line)) is None:
        return
    if args.pop("command") == "status":
        colab.status(args.pop("recipe"), **args)  # what it found stays in its lines
        return
    try:
        colab.bootstrap(args.pop("recipe"), **args)
    except colab.BootstrapFailed:
        pass  # the one-line error is already on stderr; no traceback in the notebook


def register(ipython: Any) -> None:
    ipython.register_magic_function(warmstart_magic, magic_kind="line", magic_name="warmstart")
