"""The errors warmstart reports to users, each tied to its exit code, and the one guard that turns
whatever ended a run into a line and an exit code, for every entry point (the invoke tasks and the
console script, `%warmstart` and `warmstart.colab`, warmstart.sh).

Exit codes: 0 done; 2 bad input (recipe, lock, flags); 3 a precondition this machine does not
meet (a read-only, full or failing disk or Drive included); 1 anything else that went wrong;
70 a bug in warmstart (its traceback goes to a log file that the one line names; a user never
sees a traceback); 130 interrupted. Standard library only (warmstart.sh uses it).
"""

from __future__ import annotations

import os
import platform
import re
import signal
import sys
import threading
import traceback
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from . import __version__, home

INTERNAL_ERROR = 70  # EX_SOFTWARE (sysexits.h)
INTERRUPTED = 130
OUTPUT_CLOSED = 141  # 128 + SIGPIPE, as a shell says of a command whose reader left (`| head`)


class WarmstartError(Exception):
    """Anything else that went wrong (exit 1). `detail`: what a tool the run started said about
    it, a line each (said_by), printed above the run's one error line."""

    exit_code = 1

    def __init__(self, message: str = "", *, detail: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.detail = tuple(detail)


class BadInput(WarmstartError):
    """A recipe, lock, profile or flag is wrong (exit 2)."""

    exit_code = 2


class PreconditionUnmet(WarmstartError):
    """The machine does not meet what the recipe needs (exit 3): GPU, Drive, Python, cache."""

    exit_code = 3


# The userinfo ends at the last "@" before the host: a password may hold "@" itself.
_CREDENTIALS = re.compile(r"(?<=://)[^/\s?#]+@")


def redact(text: str) -> str:
    """Hide user:password@ in URLs before anything is printed, reported or logged."""
    return _CREDENTIALS.sub("***@", text)


def said_by(tool: str, text: str, most: int = 15) -> tuple[str, ...]:
    """What `tool` printed, as an error's detail: its last `most` lines that say anything, each
    named with the tool. Of a traceback (pip-compile prints pip's own for a distribution the index
    lacks) only the last line, the exception, which says what went wrong."""
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    traced = next((n for n, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")), None)
    if traced is not None:
        lines = lines[:traced] + lines[-1:]
    return tuple(f"{tool}: {line}" for line in lines[-most:])


# What ends a process that did not ask to end: the OOM killer, a crash, a timeout's kill.
_UNASKED = {signal.SIGKILL, signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGFPE, signal.SIGILL,
            signal.SIGTERM}


def signal_of(returncode: int, shell: bool = False) -> int | None:
    """The signal that ended a child, if one did. A shell says that a command it ran was killed by
    signal N as its own exit 128 + N (where bash runs its line's last command in its own place,
    the shell itself is what was killed)."""
    if returncode < 0:
        return -returncode
    return returncode - 128 if shell and returncode - 128 in _UNASKED else None


def ended(returncode: int, shell: bool = False) -> str:
    """How a child process ended, in words: "exit 2", or the signal that killed it. SIGKILL that
    nobody here sent is most often the kernel's OOM killer: on Colab, a VM whose RAM ran out."""
    number = signal_of(returncode, shell)
    if number is None:
        return f"exit {returncode}"
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    said = f"killed by {name}" + (", most often for want of memory" if number == signal.SIGKILL else "")
    return said if returncode < 0 else f"exit {returncode}: a command it ran was {said}"


@dataclass(frozen=True)
class Failure:
    message: str  # one line, credentials hidden
    exit_code: int
    detail: tuple[str, ...] = ()  # what a tool said, credentials hidden: printed above the message


@contextmanager
def interrupts() -> Iterator[None]:
    """Within: SIGTERM (a notebook's interrupt, `kill`) raises KeyboardInterrupt, as Ctrl-C does,
    so that a run ends as an interrupted one (children killed, temporary folders removed on the
    way out, exit 130) rather than by the signal. Only the main thread can set it; elsewhere it is
    left as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Within: an interrupt (Ctrl-C, SIGTERM) is held, and delivered once the work is done, as
    it would have been: for work that must be done whole, and takes moments (renames). A second
    one is not held (whoever asks twice wants out, whole or not: a disk that stopped answering).
    Only the main thread can hold them; elsewhere they are left as they are. (Python runs its
    handlers in the main thread whichever thread a signal reached: the handlers are swapped, not
    the signal mask.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    previous: dict[int, Any] = {}

    def hold(signum: int, _frame: object) -> None:
        if previous.get(signum) == signal.SIG_IGN:
            return  # ignored where it was held from: ignored still
        if came:
            raise KeyboardInterrupt
        came.append(signum)

    for held in (signal.SIGINT, signal.SIGTERM):
        previous[held] = signal.signal(held, hold)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if came:  # to the handler it was held from
        signal.raise_signal(came[0])


def failure(exc: BaseException) -> Failure:
    """What a run that raised `exc` says and exits with. A bug's traceback goes to a log file."""
    if isinstance(exc, WarmstartError):
        return Failure(redact(str(exc)), exc.exit_code, tuple(map(redact, exc.detail)))
    if isinstance(exc, KeyboardInterrupt):
        return Failure("interrupted", INTERRUPTED)
    if isinstance(exc, OSError):  # the machine: a read-only or full disk, a folder gone
        where = f"{exc.filename}: " if exc.filename else ""
        return Failure(redact(f"{where}{exc.strerror or exc} [errno {exc.errno}]; check that the folder is there, "
                              "writable and not full (TMPDIR, HOME, the Drive folder: on Colab mounted and under "
                              "its quota), then run again"), PreconditionUnmet.exit_code)
    return Failure(redact(f"internal error: {exc!r}; {_log_bug(exc)}"), INTERNAL_ERROR)


def _log_bug(exc: BaseException) -> str:
    """Write the traceback, with versions, to a new file of the log folder (0600); name it."""
    log = home.log_file("bug")
    text = (f"warmstart {__version__}, Python {sys.version.split()[0]} on {platform.platform()}\n"
            f"command: {' '.join(sys.argv)}\n\n{''.join(traceback.format_exception(exc))}")
    try:
        log.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        part = log.with_name(log.name + ".part")
        # backslashreplace: a path that is not UTF-8 in the command or the traceback is written too
        with open(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8",
                  errors="backslashreplace") as out:
            out.write(redact(text))
        os.replace(part, log)
    except OSError as problem:
        return f"this is a bug in warmstart (its log could not be written: {problem.strerror})"
    return f"this is a bug in warmstart: please report it with {log}"
