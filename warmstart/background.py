"""Work on a daemon thread of its own: a run that ends, fails or is interrupted before it needs
the work's answer does not wait for it at exit (a hung socket, a driver that does not answer).
A look at a FUSE mount is a child's instead (`child_within`). Standard library only."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from concurrent import futures
from typing import TypeVar

T = TypeVar("T")


def started(work: Callable[[], T]) -> futures.Future[T]:
    """`work` begun now; the future gives its result, or raises its exception."""
    future: futures.Future[T] = futures.Future()

    def run() -> None:
        try:
            future.set_result(work())
        except BaseException as exc:  # handed on to whoever asks for the result
            future.set_exception(exc)
    threading.Thread(target=run, daemon=True).start()
    return future


def within(seconds: float, call: Callable[[], T]) -> T:
    """call(), or TimeoutError once `seconds` pass without its answer; the call goes on, and
    nothing waits for it."""
    future = started(call)
    if not futures.wait([future], timeout=seconds).done:
        raise TimeoutError(f"no answer in {seconds:g} s")
    return future.result()


def child_within(seconds: float, argv: list[str]) -> bytes:
    """The output of the command `argv`, or TimeoutError once `seconds` pass before it ends
    (OSError when it cannot start). For a look at a FUSE mount that may have stopped answering:
    a thread of this process left waiting on one keeps the process from ending, even killed,
    until the mount answers; a child left waiting holds none of this process's files."""
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        return child.communicate(timeout=seconds)[0]
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"no answer in {seconds:g} s") from None
