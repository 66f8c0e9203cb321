"""Recipe smoke checks, run in the target environment after an install."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
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


class _Running:
    """The checks' processes, so an interrupt can kill them all, those starting meanwhile too."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._processes: set[subprocess.Popen[str]] = set()
        self._stopped = False

    def add(self, process: subprocess.Popen[str]) -> None:
        with self._lock:
            self._processes.add(process)
            if self._stopped:
                process.kill()

    def discard(self, process: subprocess.Popen[str]) -> None:
        with self._lock:
            self._processes.discard(process)

    def kill_all(self) -> None:
        with self._lock:
            self._stopped = True
            for process in self._processes:
                process.kill()


def run_checks(checks: tuple[Check, ...], python: Path, cwd: Path) -> list[CheckResult]:
    """Every check at once, each in its own process, the results in the recipe's order: on a
    GPU each check spends seconds starting CUDA (5.5 and 7.5 s for the hyperlpr recipe's two on an H200),
    and checks are independent by contract. An interrupt kills every check still running."""
    running = _Running()
    with ThreadPoolExecutor(max_workers=max(1, len(checks)), thread_name_prefix="check") as pool:
        futures = [pool.submit(_run_check, check, python, cwd, running) for check in checks]
        try:
            return [future.result() for future in futures]
        except BaseException:  # Ctrl-C or SIGTERM (KeyboardInterrupt), here in the main thread
            running.kill_all()
            raise


def _run_check(check: Check, python: Path, cwd: Path, running: _Running) -> CheckResult:
    if check.python is not None:
        cmd = [str(python), "-c", check.python]
    elif check.script is not None:
        cmd = [str(python), str(check.script)]
    else:
        cmd = ["bash", "-c", check.run or ""]
    # `python` in a shell check is the target interpreter. A check writes no bytecode: the code it
    # runs is the user's, in the workdir (on Drive on Colab, where each file written waits).
    env = dict(os.environ, PATH=f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONDONTWRITEBYTECODE="1")
    start = time.perf_counter()
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, errors="replace") as process:
        running.add(process)
        try:
            stdout, stderr = process.communicate(timeout=check.timeout)
            ok, output = process.returncode == 0, redact((stdout + stderr).strip())
            summary = redact(_summary(stdout, stderr))
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            ok, output = False, f"timed out after {check.timeout:g} s (set timeout for this check in the recipe)"
            summary = output
        finally:
            running.discard(process)
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
