"""Turning a task's outcome into output and an exit code, in one place.

Exit codes: 0 done; 2 bad input (recipe, lock, flags); 3 a precondition this machine does not
meet (a read-only, full or failing disk or Drive included); 1 anything else that went wrong;
70 a bug in warmstart (its traceback goes to a log file that the one line on stderr names;
stderr never shows a traceback); 130 interrupted.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable

from . import __version__, transfer
from .errors import PreconditionUnmet, WarmstartError
from .report import Report

INTERNAL_ERROR = 70  # EX_SOFTWARE (sysexits.h)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _log_bug() -> str:
    """Write the current exception's traceback, with versions, to a log file; name it."""
    log = transfer.own_cache() / "logs" / f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log"
    text = (f"warmstart {__version__}, Python {sys.version.split()[0]} on {platform.platform()}\n"
            f"command: {' '.join(sys.argv)}\n\n{traceback.format_exc()}")
    try:
        transfer.write_private(log, text)  # the run made warmstart's folder private as it began
    except OSError as exc:
        return f"this is a bug in warmstart (its log could not be written: {exc.strerror})"
    return f"this is a bug in warmstart: please report it with {log}"


def run_reported(action: Callable[[Report], None], recipe: str, *, as_json: bool) -> Report:
    """Run action with a fresh report; errors become its `error` and `exit_code`."""
    # stdout carries the JSON, so such a run keeps stderr to step lines: no bars.
    report = Report(recipe, bars=transfer.Bars(enabled=not as_json))
    try:
        transfer.private_cache()  # warmstart's own folder: its user's alone
    except OSError:
        pass  # a read-only HOME: said where the run first needs to write there
    # SIGTERM (a notebook interrupt, `kill`) ends a run as Ctrl-C does: children killed, temporary
    # folders removed on the way out.
    main = threading.current_thread() is threading.main_thread()  # only there can it be set
    previous = signal.signal(signal.SIGTERM, _interrupt) if main else None
    try:
        action(report)
    except WarmstartError as exc:
        report.error, report.exit_code = str(exc), exc.exit_code
    except KeyboardInterrupt:
        report.error, report.exit_code = "interrupted", 130
    except OSError as exc:  # the machine: a read-only or full disk, a folder gone
        where = f"{exc.filename}: " if exc.filename else ""
        report.error = (f"{where}{exc.strerror or exc} [errno {exc.errno}]; check that the folder is there, "
                        "writable and not full (TMPDIR, HOME, the Drive folder: on Colab mounted and under "
                        "its quota), then run again")
        report.exit_code = PreconditionUnmet.exit_code
    except Exception as exc:  # a bug: the traceback goes to a log, the user gets one line
        report.error, report.exit_code = f"internal error: {exc!r}; {_log_bug()}", INTERNAL_ERROR
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    if report.error:
        report.error = transfer.redact(report.error)
        print(f"warmstart: error: {transfer.shown(report.error)}", file=sys.stderr, flush=True)
    if as_json:
        print(json.dumps(report.as_json(), indent=None), flush=True)
    return report


def run_plain(action: Callable[[], None]) -> int:
    """For tasks without a report: one-line errors and the same exit codes."""
    return run_reported(lambda _report: action(), "", as_json=False).exit_code
