"""What a run shows: its lines (any text from recipes, stores and wheels printed with its
credentials hidden and control characters escaped), its progress bars, and its quiet end when
the reader of its output left (`| head`).

Standard library only at import time (warmstart.sh uses it before any dependency is there; tqdm,
which draws the bars, is imported on first use).
"""

from __future__ import annotations

import os
import re
import select
import shutil
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

from .errors import OUTPUT_CLOSED, redact


class Bar(Protocol):
    def update(self, n: int) -> Any: ...


class NoBar:
    """A bar that draws nothing: no terminal, a run that reports JSON, or no tqdm yet."""

    def update(self, n: int) -> None:
        pass


@dataclass(frozen=True)
class Bars:
    """How a run shows progress: tqdm bars on stderr when it is a terminal, none for runs that
    report JSON (or before warmstart's own tools, which bring tqdm, are in place)."""

    enabled: bool = True

    @contextmanager
    def bar(self, total: int | None, desc: str) -> Iterator[Bar]:
        # Only a terminal is drawn on, so only then is tqdm imported (on first use: a no-op run
        # never draws a bar): a bar it disables still costs its import and a multiprocessing
        # lock, 12 ms of the start of a run that reports JSON.
        if not (self.enabled and sys.stderr.isatty()):
            yield NoBar()
            return
        try:
            from tqdm import tqdm
        except ImportError:
            yield NoBar()
            return
        # A terminal that does not say its size (a pseudo-terminal such as a Colab `!` cell's may
        # answer 0 by 0) gets 80 by 24, else tqdm draws nothing at all.
        size = shutil.get_terminal_size((80, 24))
        with tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=False,
                  ncols=min(size.columns or 80, 120), nrows=size.lines or 24, mininterval=0.2) as shown:
            yield shown


QUIET = Bars(enabled=False)


def std_streams() -> list[TextIO]:
    """stdout and stderr, those this process has (one closed as it started is None)."""
    return [stream for stream in (sys.stdout, sys.stderr) if stream is not None]


def output_closed(exc: BaseException) -> bool:
    """`exc` is a write to stdout or stderr whose reader left: `| head` had all it wanted. (A
    pipe's writing end says POLLERR once no process can read it.)"""
    if not isinstance(exc, BrokenPipeError):
        return False
    try:
        streams = select.poll()
        for stream in std_streams():
            streams.register(stream.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _fd, events in streams.poll(0))
    except (OSError, ValueError):  # no such stream (closed, or none at all)
        return False


def silence(stream: TextIO) -> None:
    """What is written to `stream` from now on goes nowhere: its reader left (`| head` had what it
    wanted), and neither a later line nor the exit's flush may fail for it."""
    nowhere = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(nowhere, stream.fileno())
    except (OSError, ValueError):  # no file descriptor (a test's capture): nothing to stop
        pass
    finally:
        os.close(nowhere)


def flushed(code: int, last: str | None = None) -> int:
    """`code` once `last` (when given) is printed and stdout written out; OUTPUT_CLOSED where its
    reader left first (the interpreter's own flush at exit would say that as an ignored
    BrokenPipeError, and exit 120)."""
    try:
        if last is not None:
            print(last)
        if sys.stdout is not None:  # None: it was closed (`>&-`), and nothing was printed
            sys.stdout.flush()
    except BrokenPipeError:
        silence(sys.stdout)
        return OUTPUT_CLOSED
    return code


# Control characters, and the lone surrogates no UTF-8 stream can write: os.fsdecode's stand-ins
# for a path's bytes that are not UTF-8 (\udcff for b"\xff"), which a stdout in a UTF-8 locale
# (Colab's en_US.UTF-8) refuses with UnicodeEncodeError.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def printable(text: str, keep_lines: bool = False) -> str:
    """Text safe to print on a terminal: control characters (an escape sequence in a recipe's
    description, a carriage return from a store, a newline in a wheel's name) are shown escaped,
    as \\x1b, \\r, \\n, and so is a byte of a path that is not UTF-8 (\\xff); `keep_lines`
    keeps the newlines of a text of several lines."""
    def escape(match: re.Match[str]) -> str:
        char = match.group()
        if keep_lines and char == "\n":
            return char
        if "\udc80" <= char <= "\udcff":  # the byte os.fsdecode kept
            return f"\\x{ord(char) - 0xdc00:02x}"
        return char.encode("unicode_escape").decode()

    return _CONTROL.sub(escape, text)


def counted(number: int, noun: str) -> str:
    """'1 file', '12 files': a count in a report line (nouns that take an s)."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def abridged(names: Sequence[str], limit: int | None = None) -> str:
    """'a, b, c and 9 more': the first `limit` of `names` in a report line ('' for none)."""
    shown = names[:limit]
    more = len(names) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")


def shown(text: str, keep_lines: bool = False) -> str:
    """What warmstart prints of any text: credentials hidden, control characters escaped."""
    return printable(redact(text), keep_lines)


def write_line(text: str, stream: TextIO | None, flush: bool = False) -> None:
    """`text` and its newline in one write: print writes them apart, so lines said from several
    threads at once (the lock's wheel scans) ran into each other."""
    if stream is None:  # closed before the run began (`>&-`): print writes nothing there either
        return
    stream.write(f"{text}\n")
    if flush:
        stream.flush()
