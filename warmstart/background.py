"""Work on a daemon thread of its own: a run that ends, fails or is interrupted before it needs
the work's answer does not wait for it at exit (a hung socket, a driver that does not answer),
only for an import it is in the middle of (`imports_ended`). A look at a FUSE mount, a long read
of one and a write of the run's own to one, is a child's instead (`child_within`, `ChildRead`,
`child_write`). Standard library only."""

from __future__ import annotations

import atexit
import errno
import fcntl
import io
import os
import select
import signal
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import IO, TypeVar

T = TypeVar("T")
# The working folder of the Python processes warmstart starts that run none of the user's code
# (the target's probe, pip, the Drive worker): not the user's, whose modules `python -c` and `-m`
# import before the standard library's (a project's json.py or enum.py), which may be gone, and
# which a worker that outlives the run would keep busy (on Drive, at an unmount).
NEUTRAL_CWD = "/"
_ERRNOS = {os.strerror(number): number for number in errno.errorcode}  # a child's error text back to its errno


def kill_session(child: subprocess.Popen, sig: signal.Signals = signal.SIGKILL) -> None:
    """`child` and whatever it started: its session's process group (start_new_session). Killed
    alone, a wrapper left what it started running (a check's helper server, the interpreter a
    target's launcher script runs). `sig`: SIGTERM for a child that outlives it on purpose."""
    try:
        os.killpg(child.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # all of it gone already


# At exit, how long the process waits at most for other threads' imports to end (an import
# from a Drive that stopped answering never does).
IMPORTS_WAIT = 2.0


def imports_ended(most: float = IMPORTS_WAIT) -> None:
    """Wait until no other thread is importing a module, `most` seconds at most; run at exit. A
    daemon thread left importing as the interpreter finalizes can crash it: a bootstrap that
    failed at its python step while the GPU probe's thread imported pynvml died of SIGSEGV
    (CPython 3.11: the import lock freed under that thread), about one run in 30 under load. The
    team cache's backend (s3fs, gcsfs: a second of imports) is opened on such a thread too."""
    deadline = time.monotonic() + most
    me = threading.get_ident()
    while any(_importing(frame) for ident, frame in sys._current_frames().items() if ident != me):
        if time.monotonic() > deadline:
            return
        time.sleep(0.002)


def _importing(frame: FrameType | None) -> bool:
    """Whether the stack ending in `frame` runs the import system (frozen, or from source with
    `-X frozen_modules=off`)."""
    while frame is not None:
        if "importlib._bootstrap" in (name := frame.f_code.co_filename) or "importlib/_bootstrap" in name:
            return True
        frame = frame.f_back
    return False


atexit.register(imports_ended)


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


# The most a look prints that is read (child_within): a listing of the Drive cache's folders is
# about 160 bytes a file, so some 50,000 files; a real cache holds hundreds.
OUTPUT_MOST = 8 << 20


class TooMuchOutput(Exception):
    """A child printed more than `child_within` reads."""


def child_within(seconds: float, argv: list[str], most: int = OUTPUT_MOST) -> bytes:
    """The output of the command `argv`; TimeoutError once `seconds` pass before it ends,
    TooMuchOutput once it printed more than `most` bytes (the child killed then), OSError when it
    cannot start. For a look at a FUSE mount that may have stopped answering, or holds more than
    anyone put there: a thread of this process left waiting on one keeps the process from ending,
    even killed, until the mount answers; a child left waiting holds none of this process's files."""
    deadline = time.monotonic() + seconds
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert child.stdout is not None
    out = bytearray()
    try:
        with child.stdout as pipe:
            while True:
                if not select.select([pipe], [], [], max(0.0, deadline - time.monotonic()))[0]:
                    raise TimeoutError(f"no answer in {seconds:g} s")
                if not (chunk := os.read(pipe.fileno(), 1 << 16)):
                    break
                out += chunk
                if len(out) > most:
                    raise TooMuchOutput(f"{argv[0]} printed more than {most >> 20} MiB")
        child.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"no answer in {seconds:g} s") from None
    finally:
        if child.poll() is None:
            child.kill()  # a child waiting on a FUSE mount ends when the mount answers
    return bytes(out)


# What child_write runs: the data as a temporary file (its folder made), checked for its length
# (an input closed early is no file of ours), flushed to disk, then renamed (as
# transfer.AtomicFile writes); the temporary file removed if any of it fails, or is ended (SIGTERM
# to its session, which the shell outlives to remove it once what it waits for ends, saying so on
# a stderr nobody reads any more). Not removed before: an unlink beside a write under way waits
# for it, and a FUSE layer that orders its requests by path (libfuse's high-level API) holds
# every later one, on any path, behind that unlink.
_WRITE = ('trap : TERM; trap "" PIPE; mkdir -p -- "${1%/*}" && cat > "$1" && [ "$(stat -c %s -- "$1")" = "$3" ] '
          '&& sync -- "$1" && mv -f -- "$1" "$2" || { status=$?; rm -f -- "$1"; exit $status; }')
_FED = 1 << 20  # bytes of a local file read at a time into child_write's pipe


def child_write(seconds: float, tmp: Path, dest: Path, data: bytes | Path) -> None:
    """`data` (bytes, or a local file's) as the file `dest`, written by a child under the name
    `tmp`, then renamed: for a FUSE mount that may have stopped answering, where a write never
    returns (see child_within). TimeoutError once the child takes nothing more for `seconds`, or
    has it all and does not end within them (the child left waiting): a large file's write is
    bounded by its progress, not its length. OSError when it fails (as strerror says it)."""
    size = data.stat().st_size if isinstance(data, Path) else len(data)
    child = subprocess.Popen(["sh", "-c", _WRITE, "sh", str(tmp), str(dest), str(size)], stdin=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "LC_ALL": "C"},
                             start_new_session=True)
    assert child.stdin is not None and child.stderr is not None
    try:
        with _written_now(tmp):
            with child.stdin as pipe:
                try:
                    _feed(pipe.fileno(), data, seconds)
                except BrokenPipeError:
                    pass  # it ended early: its status says why
                except BaseException:  # a timeout, a local read that failed, an interrupt
                    kill_session(child, signal.SIGTERM)  # before its input closes, the end of what it gets
                    raise
            child.wait(seconds)
    except BaseException as exc:
        child.stderr.close()  # not read: its cat, left waiting on the mount, holds it open
        if not isinstance(exc, subprocess.TimeoutExpired):
            raise
        kill_session(child, signal.SIGTERM)
        raise TimeoutError(f"no answer in {seconds:g} s") from None
    with child.stderr:  # its last words, a line or two: no pipe of it fills
        err = child.stderr.read(4096)
    if child.returncode:
        raise _failed(err, f"the writing child ended with {child.returncode}", dest)


_CHILD_WRITES: set[Path] = set()  # the files child_write's children write now


@contextmanager
def _written_now(tmp: Path) -> Iterator[None]:
    _CHILD_WRITES.add(tmp)
    try:
        yield
    finally:
        _CHILD_WRITES.discard(tmp)


def child_writes() -> tuple[Path, ...]:
    """The files this process's children write now (child_write): where a write that stopped
    waits, when one of them does."""
    return tuple(_CHILD_WRITES)


def _feed(pipe: int, data: bytes | Path, seconds: float) -> None:
    """Write `data` into `pipe`, waiting `seconds` at most each time it takes nothing."""
    os.set_blocking(pipe, False)
    with open(data, "rb") if isinstance(data, Path) else io.BytesIO(data) as source:
        while chunk := source.read(_FED):
            left = memoryview(chunk)
            while left:
                if not select.select([], [pipe], [], seconds)[1]:
                    raise TimeoutError(f"no answer in {seconds:g} s")
                left = left[os.write(pipe, left):]


def _failed(stderr: bytes, otherwise: str, named: Path | None = None) -> OSError:
    """A coreutils child's error (cat, mv: it names the file, then says the error as strerror
    says it) as the OSError it stands for; `otherwise` when it said nothing."""
    said = stderr.decode(errors="replace").strip().splitlines()
    why = said[-1].rpartition(": ")[2] if said else otherwise
    return OSError(_ERRNOS.get(why, errno.EIO), why, *([str(named)] if named else []))


class ChildRead:
    """A file this process opened, read front to back by a child (`cat`, the file as its stdin),
    or one the child opens itself (given as a Path), through a pipe; `read(n)` gives n bytes but
    at the end, and a child that failed is an OSError there. The child's next read goes out to
    the mount while this process's threads hold the GIL (a Drive not asked gives no credit for
    the pause), and a read (or an open) that hangs in a mount that stopped answering holds the
    child, not a thread of this process (see child_within). `stop()` ends the child; closing it
    ends the child and closes the file."""

    PIPE = 1 << 20  # the pipe's buffer: what the child reads ahead (the most Linux grants by default)
    reads_on_its_own = True  # the child reads while nobody reads the pipe (see readahead.ReadAhead)

    def __init__(self, file: IO[bytes] | Path) -> None:
        """OSError when no child can be started (no cat, a pipe refused): read `file` itself then."""
        self._file = None if isinstance(file, Path) else file
        # Its own session: a Ctrl-C meant for the run (the terminal's, the notebook's) is not an
        # error of the read; the run ends the child itself (stop). LC_ALL: errors as strerror's.
        argv, stdin = (["cat", "--", str(file)], subprocess.DEVNULL) if isinstance(file, Path) else (["cat"], file)
        self._child = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       pipesize=self.PIPE, env={**os.environ, "LC_ALL": "C"},
                                       start_new_session=True)
        assert self._child.stdout is not None
        self._out = self._child.stdout

    def read(self, size: int = -1, /) -> bytes:
        data = self._out.read(size)  # buffered: until `size` bytes or the end
        if not data and self._child.wait() != 0:
            assert self._child.stderr is not None
            raise _failed(self._child.stderr.read(4096), f"the reading child ended with {self._child.returncode}")
        return data

    def waiting(self) -> int:
        """Bytes the child has put in the pipe that no read has taken yet (the reader's own
        buffer aside: at most 8 KiB, what a read of more leaves in it)."""
        count = bytearray(4)
        try:
            fcntl.ioctl(self._out.fileno(), termios.FIONREAD, count)
        except (OSError, ValueError):  # closed: nothing waits
            return 0
        return int.from_bytes(count, sys.byteorder)

    def stop(self) -> None:
        """End the child (from any thread): a read under way returns what came."""
        self._child.kill()

    def close(self) -> None:
        self.stop()
        self._child.wait()
        for pipe in (self._child.stdout, self._child.stderr):
            if pipe is not None:
                pipe.close()
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> ChildRead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
