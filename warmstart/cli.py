"""Running a task with a report: its outcome becomes output and an exit code (see warmstart.errors)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

from . import home
from .console import Bars, output_closed, shown, silence, std_streams
from .errors import OUTPUT_CLOSED, failure, interrupts
from .invocation import require_working_folder
from .report import Report


def run_reported(action: Callable[[Report], object], recipe: str, *, as_json: bool, anywhere: bool = False) -> Report:
    """Run action with a fresh report; errors become its `error` and `exit_code`. Where the
    reader of its output left before the end, it stops there, saying nothing (OUTPUT_CLOSED).
    An action runs in a working folder that exists (every program it may start needs one) unless
    it can run `anywhere` (an interrupt's report)."""
    try:
        return _run_reported(action, recipe, as_json=as_json, anywhere=anywhere)
    except BrokenPipeError as exc:
        if not output_closed(exc):
            raise
        for stream in std_streams():  # nothing is wrong, and nothing more can be said
            silence(stream)
        closed = Report(recipe)
        closed.exit_code = OUTPUT_CLOSED
        return closed


def _run_reported(action: Callable[[Report], object], recipe: str, *, as_json: bool, anywhere: bool) -> Report:
    # stdout carries the JSON, so such a run keeps stderr to step lines: no bars.
    report = Report(recipe, bars=Bars(enabled=not as_json))
    try:
        home.private()  # warmstart's own folder: its user's alone
    except OSError:
        pass  # a read-only HOME: said where the run first needs to write there
    try:
        with interrupts():
            if not anywhere:
                require_working_folder()
            action(report)
    except (Exception, KeyboardInterrupt) as exc:
        if output_closed(exc):
            raise
        failed = failure(exc)
        report.error, report.exit_code, report.error_detail = failed.message, failed.exit_code, failed.detail
    for line in report.error_detail:  # what a tool said, a line each; then the one error line
        print(f"warmstart: {shown(line)}", file=sys.stderr)
    if report.error:
        print(f"warmstart: error: {shown(report.error)}", file=sys.stderr, flush=True)
    if as_json:
        print(json.dumps(report.as_json(), indent=None), flush=True)
    return report


def run_plain(action: Callable[[], None]) -> int:
    """For tasks without a report: one-line errors and the same exit codes."""
    return run_reported(lambda _report: action(), "", as_json=False).exit_code
