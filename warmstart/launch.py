"""The `invoke` that warmstart.sh writes (and runs for its own bootstrap), and the `warmstart`
console script: a bootstrap line runs its task at once; any other line is invoke's, as before.

A bootstrap is what a VM runs most (`!invoke bootstrap --recipe hyperlpr` in every new
notebook, and the one warmstart.sh starts). invoke's imports and its program (the collection,
its parser, tasks.py) took a quarter of a no-op bootstrap: 200 ms against 148 without them (20
alternated pairs, medians; bench/README.md). The line is read against the same declaration
(settings.Options), strictly: a flag bootstrap does not take, an abbreviation, `--help`, a core
option of invoke's, a second task or a value the declaration refuses, and the line is invoke's
to read, in its words and with its exit codes, as it always was.
"""

from __future__ import annotations

import argparse
import gc
import runpy
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

from . import PROJECT_ROOT
from .console import flushed
from .errors import interrupts
from .settings import Options, add_arguments


class _NotOurs(Exception):
    """A line the bootstrap's own reading does not take."""


class _Strict(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse would print its usage and exit 2
        raise _NotOurs(message)


def bootstrap_line(argv: list[str]) -> tuple[dict[str, Any], bool] | None:
    """`bootstrap ...`'s flags by name, as the task takes them, and --json; None for any other line."""
    if not argv or argv[0] != "bootstrap":
        return None
    parser = _Strict(add_help=False, allow_abbrev=False)
    add_arguments(parser)
    parser.add_argument("--json", action="store_true")
    try:
        flags = vars(parser.parse_args(argv[1:]))
    except Exception:  # _NotOurs, or a value the declaration refuses (`--drive ""`): invoke says it
        return None
    return flags, flags.pop("json")


def run_bootstrap(flags: Mapping[str, Any], root: Path, *, as_json: bool) -> int:
    """The bootstrap task (its flags by name, as settings.Options declares them): its exit code.
    Both entries run it, invoke's task (warmstart.commands) and the launcher; it imports the rest
    of warmstart once the snapshot's read has begun (warmstart.early), as the plan is made."""
    # No collection until the imports are frozen (below): it would walk what they make, which
    # lives until the end, for nothing (a no-op run 136 ms against 141, 20 alternated pairs).
    gc.disable()
    try:
        with interrupts():
            return _run_bootstrap(flags, root, as_json=as_json)
    except KeyboardInterrupt:  # before the run's report began, as the rest was imported
        gc.enable()
        return _ended_by(KeyboardInterrupt(), flags.get("recipe") or "", as_json=as_json)


def _run_bootstrap(flags: Mapping[str, Any], root: Path, *, as_json: bool) -> int:
    from . import config, early

    with config.reading_ahead(root, flags.get("recipe")):
        early.begin(flags, root)  # while the rest of warmstart is imported and the plan made
        from . import headstart, target

        # The target Python's answer (a child, 30 to 50 ms) comes meanwhile too, on the other CPU.
        target.begin_probe(flags.get("python"))
        headstart.receive()  # uv from the index, when warmstart.sh began it
        try:
            from . import bootstrap as bootstrapping
            from .cli import run_reported

            # What the imports made lives until this process ends: frozen, the collector never walks
            # it again. That took the interpreter's teardown after a restore from 48-81 ms to 13-28 ms.
            # (The kernel's own entry, warmstart.colab, leaves the notebook's process alone.)
            gc.freeze()
            gc.enable()
            return run_reported(lambda report: bootstrapping.bootstrap(Options(**flags), root, report),
                                flags.get("recipe") or "", as_json=as_json).exit_code
        finally:
            early.drop()
            headstart.drop()
            target.forget_begun()


def _ended_by(exc: BaseException, recipe: str, *, as_json: bool) -> int:
    """What ended a command before its report began, said as a run says it (warmstart.cli, which
    imports much): Ctrl-C or SIGTERM ends it as an interrupted run (its --json report too), never
    with a traceback or by the signal; an OSError of invoke's own is a line. Its exit code."""
    from .cli import run_reported

    def ended(_report: object) -> None:
        raise exc

    return run_reported(ended, recipe, as_json=as_json, anywhere=True).exit_code


def _command(run: Callable[[], object]) -> NoReturn:
    """Any other line: invoke's program (which ends an interrupt as it ends it, exit 1, once it
    runs), its import an interrupted run's as the bootstrap's are (_ended_by). Its tasks say their
    own errors; an OSError comes from invoke's program itself, before any task: its configuration
    files (`~/.invoke.yaml`, whose read fails with a traceback where HOME lies under a file)."""
    try:
        with interrupts():
            run()
    except (KeyboardInterrupt, OSError) as exc:
        sys.exit(_ended_by(exc, "", as_json=False))
    sys.exit(0)


def _bootstrap(line: tuple[dict[str, Any], bool]) -> NoReturn:
    flags, as_json = line
    sys.exit(flushed(run_bootstrap(flags, PROJECT_ROOT, as_json=as_json)))


def launcher(search_root: str, argv: list[str]) -> NoReturn:
    """warmstart.sh's `invoke` (`python -P -c ... CHECKOUT ARGS`: warmstart.tools.launch_command)."""
    line = bootstrap_line(argv)
    if line is not None:
        _bootstrap(line)
    # `python -m invoke --search-root CHECKOUT ARGS`, as the launcher ran before
    sys.argv = [sys.argv[0], "--search-root", search_root, *argv]
    _command(lambda: runpy.run_module("invoke", run_name="__main__", alter_sys=True))


def console() -> NoReturn:
    """The `warmstart` console script."""
    line = bootstrap_line(sys.argv[1:])
    if line is not None:
        _bootstrap(line)
    _command(_tasks)


def _tasks() -> None:
    from .commands import main

    main()
