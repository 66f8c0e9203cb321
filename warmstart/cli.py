"""Turning a task's outcome into output and an exit code, in one place.

Exit codes: 0 done; 2 bad input (recipe, lock, flags); 3 a precondition this machine does not
meet; 1 anything else.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable

from . import transfer
from .errors import WarmstartError
from .report import Report


def run_reported(action: Callable[[Report], None], recipe: str, *, as_json: bool) -> Report:
    """Run action with a fresh report; errors become its `error` and `exit_code`."""
    report = Report(recipe)
    transfer.SHOW_PROGRESS = not as_json  # stdout carries the JSON; keep stderr to step lines
    try:
        action(report)
    except WarmstartError as exc:
        report.error, report.exit_code = str(exc), exc.exit_code
    except KeyboardInterrupt:
        report.error, report.exit_code = "interrupted", 130
    except Exception as exc:  # a bug: keep the traceback, still answer in JSON
        traceback.print_exc()
        report.error, report.exit_code = f"internal error: {exc!r}", 1
    if report.error:
        report.error = transfer.redact(report.error)
        print(f"warmstart: error: {report.error}", file=sys.stderr, flush=True)
    if as_json:
        print(json.dumps(report.as_json(), indent=None), flush=True)
    return report


def run_plain(action: Callable[[], None]) -> int:
    """For tasks without a report: one-line errors and the same exit codes."""
    return run_reported(lambda _report: action(), "", as_json=False).exit_code
