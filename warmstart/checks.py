"""Recipe smoke checks, run in the target environment after an install."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import redact
from .home import log_file, state_file
from .recipe import Check
from .transfer import atomic_write_text, write_private

OUTPUT_IN_REPORT = 4096  # characters of a check's output kept in the report (its end)
_COLOURS = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # terminal escapes, as onnxruntime's own log writes them


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    output: str  # the end of it; the whole is in `log`
    seconds: float
    log: str = ""
    summary: str = ""  # the line that says how it went: its last words on stdout, else on stderr

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _keep(check: Check, output: str) -> tuple[str, str]:
    """(what the report keeps, the log file holding all of it when that is more)."""
    if len(output) <= OUTPUT_IN_REPORT:
        return output, ""
    log = log_file("check")
    try:
        write_private(log, f"check {check.name!r}\n\n{output}")
    except OSError:
        return "..." + output[-OUTPUT_IN_REPORT:], ""
    return f"... (all of it in {log})\n" + output[-OUTPUT_IN_REPORT:], str(log)


def _summary(stdout: str, stderr: str) -> str:
    """A check's verdict line: the last line it printed (recipes/checks/ print `FAILED: why` there),
    not a library's log on stderr after it; stderr's last line when stdout is empty."""
    for stream in (stdout, stderr):
        lines = [line.strip() for line in _COLOURS.sub("", stream).splitlines() if line.strip()]
        if lines:
            return lines[-1]
    return ""


def run_check(check: Check, python: Path, cwd: Path) -> CheckResult:
    if check.python is not None:
        cmd = [str(python), "-c", check.python]
    elif check.script is not None:
        cmd = [str(python), str(check.script)]
    else:
        cmd = ["bash", "-c", check.run or ""]
    # `python` in a shell check is the target interpreter.
    env = dict(os.environ, PATH=f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    start = time.perf_counter()
    try:
        # On a timeout or an interrupt, subprocess.run kills the check before going on.
        done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, errors="replace",
                              timeout=check.timeout)
        ok, output = done.returncode == 0, redact((done.stdout + done.stderr).strip())
        summary = redact(_summary(done.stdout, done.stderr))
    except subprocess.TimeoutExpired:
        ok, output = False, f"timed out after {check.timeout:g} s (set timeout for this check in the recipe)"
        summary = output
    kept, log = _keep(check, output)
    return CheckResult(check.name, ok, kept, round(time.perf_counter() - start, 3), log, summary)


def failed_before(prefix: Path, recipe: str) -> list[str]:
    """The checks of `recipe` that failed in this environment and have not passed since."""
    try:
        return list(json.loads(state_file("checks", prefix).read_text()).get(recipe, []))
    except (OSError, ValueError, AttributeError):
        return []


def remember(prefix: Path, recipe: str, failed: list[str]) -> None:
    """Record the failed checks (none: forget them), so a later run that installs nothing runs
    them again instead of saying all is well."""
    path = state_file("checks", prefix)
    try:
        known = dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        known = {}
    if failed:
        known[recipe] = failed
    else:
        known.pop(recipe, None)
    try:
        atomic_write_text(path, json.dumps(known))
    except OSError:
        pass  # without the record the next no-op run skips the checks, as before
