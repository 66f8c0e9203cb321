"""One process at a time: flock(2), which the kernel releases when its holder ends, so a killed
run leaves nothing held and nothing to clean up.

Five things are held this way: a target environment (one run installs into it at a time), the
tools' folder (one warmstart.sh restores it at a time), a Drive job (one process finishes it), the
ledger of the asset files warmstart placed (one run writes it at a time, warmstart.assets) and the
folder an asset is written in (shared by its writers, `writing_in`).
Standard library only: warmstart.sh takes the tools' lock before any dependency is there.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

POLL = 0.05  # seconds between two tries of a lock held, when the wait is bounded


def take(fd: int, timeout: float | None = None, waiting: Callable[[], object] | None = None) -> bool:
    """Take the exclusive lock of an open file or folder: at once if it is free, else (after
    calling `waiting`, once) within `timeout` seconds, 0 not waiting at all, None as long as it
    takes. False when it was not taken."""
    if _taken_now(fd):
        return True
    if timeout is not None and timeout <= 0:
        return False
    if waiting is not None:
        waiting()
    if timeout is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(POLL)
        if _taken_now(fd):
            return True
    return False


def _taken_now(fd: int) -> bool:
    """Take the lock if it is free; False, not waiting, when another holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextmanager
def held(path: Path, timeout: float | None = None, waiting: Callable[[], object] | None = None) -> Iterator[bool]:
    """Hold the lock file at `path` (made, only its user's, if missing; it stays for the next
    holder) for the block; yields whether it was taken (see `take`)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        yield take(fd, timeout, waiting)
    finally:
        os.close(fd)  # releases it


@contextmanager
def writing_in(folder: Path, alone: Callable[[], object]) -> Iterator[None]:
    """Held by a writer of a temporary file in `folder`, until it is renamed into place: the
    folder's own lock, shared (the kernel's: nothing is written there). First, where no other
    writer holds it, it is taken exclusive a moment and `alone()` is called: every temporary file
    there is then a killed writer's. Where the folder cannot be opened, or its file system takes
    no lock (some network ones), nothing is held and `alone` is not called."""
    try:
        fd: int | None = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:  # the write itself says what is wrong with the folder, if anything
        fd = None
    try:
        if fd is not None:
            if _locked(fd, fcntl.LOCK_EX | fcntl.LOCK_NB):
                alone()
            _locked(fd, fcntl.LOCK_SH)  # a writer waits only for a sweep, not for another writer
        yield
    finally:
        if fd is not None:
            os.close(fd)


def _locked(fd: int, operation: int) -> bool:
    try:
        fcntl.flock(fd, operation)
    except OSError:  # held by another (BlockingIOError), or no lock on this file system
        return False
    return True
