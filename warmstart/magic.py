"""`%warmstart`: the in-kernel bootstrap as an IPython line magic.

    %load_ext warmstart
    %warmstart bootstrap --recipe hyperlpr [--drive DIR] [--offline] [--allow-no-gpu] ...
"""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from . import colab


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="%warmstart", add_help=True)
    commands = parser.add_subparsers(dest="command", required=True)
    boot = commands.add_parser("bootstrap", help="mount Drive, install the recipe, cd to its workdir")
    boot.add_argument("--recipe", required=True)
    boot.add_argument("--drive")
    boot.add_argument("--mount-point")
    boot.add_argument("--installer", choices=("auto", "pip", "uv"), default="auto")
    for flag in ("--offline", "--allow-no-gpu", "--allow-unfit-gpu", "--dry-run", "--packages-only",
                 "--restart"):
        boot.add_argument(flag, action="store_true")
    return parser


def warmstart_magic(line: str) -> None:
    """The report stays in `warmstart.colab.last_report` rather than flooding the cell output."""
    try:
        args = vars(_parser().parse_args(shlex.split(line)))
    except SystemExit:  # argparse printed the usage or the error
        return
    args.pop("command")
    try:
        colab.bootstrap(args.pop("recipe"), **args)
    except colab.BootstrapFailed:
        pass  # the one-line error is already on stderr; no traceback in the notebook


def register(ipython: Any) -> None:
    ipython.register_magic_function(warmstart_magic, magic_kind="line", magic_name="warmstart")
