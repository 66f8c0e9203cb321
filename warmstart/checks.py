"""Recipe smoke checks, run in the target environment after an install."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple, TypedDict

from .background import kill_session
from .config import read_bytes
from .errors import ended, redact, signal_of
from .home import log_file, state_file
from .recipe import Check
from .transfer import atomic_write_text, write_private

OUTPUT_IN_REPORT = 4096  # characters of a check's output kept in the report (its end)
OUTPUT_READ = 4 << 20  # bytes of each of a check's streams read back, its end: a check that prints
# without end (a library's log in a loop until its timeout) fills no memory, and no log past this
OUTPUT_MOST = 64 << 20  # bytes a check may print (both streams): they go to the temporary folder,
# whose disk (on Colab the VM's own) one printing without end fills long before its timeout
WATCH = 0.2  # seconds between looks at how much a running check has printed
KILLED_WAIT = 10.0  # seconds a killed check may take to end (a CUDA context's teardown takes a few)
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


def _text(output: IO[bytes]) -> str:
    """What a check wrote to `output`, as text (invalid bytes replaced, newlines universal): its
    last OUTPUT_READ bytes, after a line saying how much came before them."""
    size = output.seek(0, os.SEEK_END)
    output.seek(max(0, size - OUTPUT_READ))
    text = io.TextIOWrapper(io.BytesIO(output.read()), errors="replace").read()
    return f"... ({size - OUTPUT_READ} bytes before this not kept)\n{text}" if size > OUTPUT_READ else text


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
        self._processes: set[subprocess.Popen[bytes]] = set()
        self._stopped = False

    def add(self, process: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._processes.add(process)
            if self._stopped:
                kill_session(process)

    def discard(self, process: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._processes.discard(process)

    def kill_all(self) -> None:
        with self._lock:
            self._stopped = True
            for process in self._processes:
                kill_session(process)


def checks_at_once() -> int:
    """How many checks run together: a CPU each (of those this process may run on: a container's
    cpuset, not the host's count), two at least. Each is a process that loads the user's libraries
    and a CUDA context (hundreds of MiB of the VM's memory and the GPU's): a recipe of twenty
    checks all at once would put Colab's 12 GiB VM in reach of its OOM killer."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(2, cpus)


def run_checks(checks: tuple[Check, ...], python: Path, cwd: Path) -> list[CheckResult]:
    """The checks side by side (checks_at_once), each in its own process, the results in the
    recipe's order: on a GPU each check spends seconds starting CUDA (5.5 and 7.5 s for the hyperlpr
    recipe's two on an H200), and checks are independent by contract. An interrupt kills every
    check still running; those not begun never begin."""
    running = _Running()
    workers = max(1, min(len(checks), checks_at_once()))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="check") as pool:
        futures = [pool.submit(_run_check, check, python, cwd, running) for check in checks]
        try:
            return [future.result() for future in futures]
        except BaseException:  # Ctrl-C or SIGTERM (KeyboardInterrupt), here in the main thread
            running.kill_all()
            pool.shutdown(wait=False, cancel_futures=True)
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
    # Its output goes to files, not pipes: a helper it leaves running (a server, an agent) holds a
    # pipe open, and reading one to its end waited for the helper, past the timeout (a check that
    # passed at once was "timed out"). In a session of its own: the group is what a timeout kills.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                   start_new_session=True)
        running.add(process)
        try:
            stopped = _stopped(process, check, out, err)
        finally:
            running.discard(process)
        stdout, stderr = _text(out), _text(err)
    if stopped is not None and stopped.startswith(TIMED_OUT):  # and maybe more: it did not end
        ok, output = False, (f"timed out after {check.timeout:g} s (set timeout for this check in the recipe)"
                             + stopped.removeprefix(TIMED_OUT))
        summary = output
    elif stopped:
        ok, summary = False, stopped
        output = f"{redact((stdout + stderr).strip())}\n{stopped}"
    else:
        ok, output = process.returncode == 0, redact((stdout + stderr).strip())
        summary = redact(_summary(stdout, stderr))
        shell = check.run is not None
        if signal_of(process.returncode, shell) is not None:  # its last line was no verdict (Colab's OOM killer)
            killed = ended(process.returncode, shell)
            summary = killed + (f"; its last line: {summary}" if summary else "")
            output = f"{output}\n{killed}".lstrip()
    kept, log = _keep(check, output)
    return CheckResult(check.name, ok, kept, round(time.perf_counter() - start, 3), log, summary)


TIMED_OUT = "timed out"


def _stopped(process: subprocess.Popen[bytes], check: Check, out: IO[bytes], err: IO[bytes]) -> str | None:
    """Wait for a check to end: None, or why it was stopped, its session killed: TIMED_OUT, or it
    printed more than OUTPUT_MOST (looked at every WATCH seconds)."""
    deadline = time.monotonic() + check.timeout
    while True:
        try:
            process.wait(timeout=max(0.0, min(WATCH, deadline - time.monotonic())))
            return None
        except subprocess.TimeoutExpired:
            if time.monotonic() >= deadline:
                why = TIMED_OUT
            elif os.fstat(out.fileno()).st_size + os.fstat(err.fileno()).st_size > OUTPUT_MOST:
                why = (f"stopped: it printed more than {OUTPUT_MOST >> 20} MiB, which would fill its output's "
                       "disk before its timeout")
            else:
                continue
        kill_session(process)
        try:
            process.wait(KILLED_WAIT)
        except subprocess.TimeoutExpired:  # left: it ends when what holds it answers
            why += (f"; it did not end when killed (still there {KILLED_WAIT:g} s later): a file it reads or "
                    "writes lies on a mount that stopped answering (Drive?)")
        return why


class _Record(TypedDict):
    failed: list[str]  # the checks that failed in this environment and have not passed since
    passed: dict[str, str]  # those that passed, as they were then: name -> fingerprint


def _records(prefix: Path) -> dict[str, _Record]:
    """The environment's record, per recipe; one of before 6 December holds the failed names
    alone, and whatever else is there (warmstart's own file, but read as any file) counts as none."""
    try:
        known = json.loads(state_file("checks", prefix).read_text())
    except (OSError, ValueError):
        return {}
    records: dict[str, _Record] = {}
    for recipe, record in (known.items() if isinstance(known, dict) else ()):
        failed, passed = (record, {}) if isinstance(record, list) else (
            (record.get("failed"), record.get("passed")) if isinstance(record, dict) else ([], {}))
        records[str(recipe)] = {
            "failed": [str(name) for name in failed] if isinstance(failed, list) else [],
            "passed": {str(k): str(v) for k, v in passed.items()} if isinstance(passed, dict) else {}}
    return records


def fingerprint(check: Check) -> str:
    """A check as it is now: what it runs (a script's own bytes too), its name and timeout. One
    changed since it passed is not known to pass."""
    what = [check.name, check.python, check.run, str(check.script), check.timeout]
    digest = hashlib.sha256(json.dumps(what).encode())
    if check.script is not None:
        try:  # read ahead with the recipe from a checkout on Drive (config.reading_ahead)
            digest.update(read_bytes(check.script))
        except (OSError, ValueError):
            digest.update(b"\0unreadable")  # it fails when it runs, and says why
    return digest.hexdigest()


class Due(NamedTuple):
    """The checks a run that installs nothing runs (in the recipe's order): those that have not
    passed in this environment as they are now; and the names of those that failed here last
    time (the environment's record: a check dropped from the recipe since may be among them)."""

    checks: list[Check]
    failed: list[str]

    @property
    def again(self) -> list[str]:
        """Due because they failed here last time."""
        return [check.name for check in self.checks if check.name in self.failed]

    @property
    def new(self) -> list[str]:
        """Due because they were added or changed since they passed, or never ran here (a
        `--packages-only` run skips them)."""
        return [check.name for check in self.checks if check.name not in self.failed]


def due(prefix: Path, recipe: str, checks: tuple[Check, ...]) -> Due:
    """What a run that installs nothing checks here (Due), from one read of the record."""
    record = _records(prefix).get(recipe) or {"failed": [], "passed": {}}
    return Due([check for check in checks if record["passed"].get(check.name) != fingerprint(check)],
               record["failed"])


def remember(prefix: Path, recipe: str, checks: tuple[Check, ...], results: list[CheckResult]) -> None:
    """Record how each check run went, so that a later run that installs nothing runs the failed
    ones again instead of saying all is well, and skips those that passed as they are."""
    records = _records(prefix)
    by_name = {check.name: check for check in checks}
    before = records[recipe]["passed"] if recipe in records else {}
    passed = {name: mark for name, mark in before.items() if name in by_name}  # a dropped check is forgotten
    for result in results:
        if result.ok:
            passed[result.name] = fingerprint(by_name[result.name])
        else:
            passed.pop(result.name, None)
    records[recipe] = {"failed": [r.name for r in results if not r.ok], "passed": passed}
    try:
        atomic_write_text(state_file("checks", prefix), json.dumps(records))
    except OSError:
        pass  # without the record the next no-op run runs the checks again
