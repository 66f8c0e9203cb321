"""A stream read once, front to back, in large blocks on threads of its own (`ReadAhead`).

A restore reads its archive off Drive, hashes it, decompresses it and unpacks it; each of these
gets a thread and they overlap instead of alternating (warmstart.snapshot reads the archive and
its decompressed tar through one each). The reader also knows the source's pace (a race with
the package index asks it: warmstart.race), waits while a race holds it, gives up on a source
that stopped answering, and spills what a slow source serves ahead to local disk.
"""

from __future__ import annotations

import hashlib
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .console import Bar
from .parts import HELD_POLL
from .store import Patience
from .transfer import BlockStream, Stream, write_all, write_to


class Undecodable(OSError):
    """The decoder the stream passes through refused it (zstandard.ZstdError): the bytes are
    damaged, not unreadable."""


class Cancelled(Exception):
    """The read was stopped on purpose (`ReadAhead.stop`): the restore it serves lost its race,
    another way to install the same files finished first (snapshot.stage raises it then)."""


@dataclass(frozen=True)
class _Spilled:
    """A block read ahead into the spill file, not memory: where it lies there."""

    at: int
    size: int


class ReadAhead(BlockStream):
    """Reads a stream once, front to back in large blocks, on a thread of its own, counting (and,
    with `hashed`, hashing) as it goes: reading Drive, hashing, decompressing and unpacking
    each get a thread and overlap instead of alternating. `read(n)` hands the blocks on in
    order, as a file would; `hexdigest()` is the sha256 of what was read, once it is closed.
    `limit`: more bytes than that is an OSError for the reader.

    With `spill_to` (a folder on local disk), a slow source is not kept waiting for the
    consumer: once DEPTH blocks wait in memory, the next ones (SPILL_LIMIT at most) go to an
    unnamed file there (O_TMPFILE: nothing is left behind, whatever becomes of the run) and are
    read back in their turn. Creating thousands of small files takes longer than a Drive takes
    to serve them, and a Drive left idle meanwhile gives no credit for it (hyperlpr's 2,291
    small files held the read of a 60 MiB/s Drive still for 1.2 s)."""

    BLOCK = 4 << 20
    # Towards the end a block is a quarter of what is left, down to LAST: what comes last is
    # decompressed and unpacked as it comes, not once a whole block is in (4 MiB: 70 ms of a
    # 60 MiB/s Drive). Behind the 60 MiB/s stand-in the unpacking then ended 8 to 14 ms after the
    # last byte, against 50 to 72 ms (on a VM's disk: bench/README.md).
    LAST = 256 << 10
    FIRST = 256 << 10  # the first block is short, so decompressing starts at once: 4 MiB takes
    # 70 ms to come from a Drive at 60 MiB/s
    # Blocks read ahead in memory at most: 16 MiB (of archive; of tar, in the read-ahead behind the
    # decompressing). A slow source spills past them, and a fast one refills a room in a few ms.
    # hyperlpr, 3 alternated pairs against 8: peak RSS from local disk 127 against 160 MiB, in
    # 2.11 to 3.73 s against 1.90 to 3.97 s; from a 60 MiB/s Drive 111 to 127 against 116 to 131
    # MiB (4.68 to 4.89 s against 4.51 to 5.02 s); from the team cache alone 186 to 193 against
    # 218 to 229 MiB.
    DEPTH = 4
    HASH_DEPTH = 2  # blocks read and not yet hashed at most
    # A source slower than this bounds the restore (unpacking from local disk on 2 CPUs went at
    # 80 to 140 MiB/s of archive), so the time it stands still is lost: only such a source spills.
    # A spilled 4 MiB block cost 1 to 12 ms of copying here; from a 60 MiB/s Drive it takes 70 ms.
    SPILL_BELOW = 128 << 20  # bytes a second
    # The most a spill file holds: hyperlpr's read got 72 to 80 MiB ahead. An index states the
    # archive's size, and a hostile one must not have the read fill the disk.
    SPILL_LIMIT = 512 << 20

    def __init__(self, source: Stream, bar: Bar | None = None, copy: IO[bytes] | None = None,
                 limit: int | None = None, what: str = "it is longer than", hashed: bool = True,
                 held: Callable[[], bool] = lambda: False, patience: Patience | None = None,
                 spill_to: Path | None = None) -> None:
        self.size, self.bar, self.copy, self.limit = 0, bar, copy, limit
        self._what, self._held, self._patience = what, held, patience
        self.busy = 0.0  # seconds spent in the source's reads: its own pace, whatever the consumer's
        self._reading: tuple[float, int] | None = None  # the read under way: when it began, how much it asked
        self._first: tuple[float, int] | None = None  # the first read's time and bytes: not the pace
        # What a source read before this reader began (prefetch.Ahead) comes at once: the pace counts
        # from the first read past it, as it counts from the second read otherwise, and begins
        # with the pace the source measured as it read ahead (seconds, bytes): a race then knows
        # it from the start (it waited 0.2 s for this reader's own reads).
        self._ready: int = getattr(source, "at_once", 0)
        self._before: tuple[float, int] = getattr(source, "measured", (0.0, 0))
        self._pace_lock = threading.Lock()  # busy, size, _reading and _first change together
        # Blocks in memory take a room each; spilled ones, the end (None) and errors need none.
        self._blocks: queue.SimpleQueue[bytes | _Spilled | BaseException | None] = queue.SimpleQueue()
        self._rooms = threading.Semaphore(self.DEPTH)
        self._spill_to = spill_to
        self._spill: IO[bytes] | None = None
        self.spilled = 0  # bytes
        self._done = False
        self._stop = threading.Event()
        # The hash is taken on a thread of its own (hashlib lets go of the GIL), so the next read
        # is asked for at once: a Drive that is not asked gives no credit for the pause (hashing
        # in this loop made a 60 MiB/s Drive's read 0.2 s longer).
        self._digest = hashlib.sha256()
        self._to_hash: queue.Queue[bytes | None] | None = queue.Queue(self.HASH_DEPTH) if hashed else None
        # A source a child reads (background.ChildRead) is stopped too: the child is not left
        # waiting on a Drive that stopped answering, holding the file open.
        self._stop_source: Callable[[], None] = getattr(source, "stop", lambda: None)
        self._threads = [threading.Thread(target=self._read_all, args=(source,), daemon=True)]
        if hashed:
            self._threads.append(threading.Thread(target=self._hash_all, daemon=True))
        for thread in self._threads:
            thread.start()

    def _read_all(self, source: Stream) -> None:
        ready = self._ready
        # A child reading into a pipe (ChildRead, prefetch.Ahead) reads on while this thread is away
        # (hashing, spilling, waiting for the GIL): that time counts too, not only the read's own,
        # or what the pipe gathered meanwhile counts as Drive's pace (the 60 MiB/s stand-in looked
        # 7% faster, and the index went unraced). Not a wait for a room: the pipe fills, and the
        # child stops.
        on_its_own = getattr(source, "reads_on_its_own", False)
        ended: float | None = None  # when the last read ended, less the wait for a room since
        try:
            with source:
                size = self.FIRST
                while not self._stop.is_set():
                    if self._held():  # a rival far ahead has the CPUs (Watch.hold); the pace stands
                        time.sleep(HELD_POLL)
                        ended = None
                        continue
                    began = time.monotonic()
                    self._reading = (began, size)
                    block = source.read(size)
                    with self._pace_lock:
                        now = time.monotonic()
                        self.busy += now - (ended if on_its_own and ended is not None else began)
                        ended = now
                        self.size += len(block)
                        self._reading = None
                        if self._first is None or self.size <= ready:
                            self._first = (self.busy, self.size)
                    if not block:
                        break
                    size = self._next_size()
                    if self._to_hash:  # never waits long: the hashing thread takes every block
                        self._to_hash.put(block)
                    if self.limit is not None and self.size > self.limit:
                        raise OSError(f"{self._what} the {self.limit} bytes its index says")
                    if self.bar:
                        self.bar.update(len(block))
                    if self.copy:
                        write_to(self.copy, block)  # WriteFailed: the local disk's fault, not the source's
                    waited = self._hand_on(block)
                    if ended is not None:
                        ended += waited
        except (OSError, Cancelled) as exc:  # handed to the reader, raised there
            self._blocks.put(exc)
            return
        except Exception as exc:  # a decoder's own error (zstandard.ZstdError): the stream is damaged
            self._blocks.put(Undecodable(f"{type(exc).__name__}: {exc}"))
            return
        except BaseException as exc:
            self._blocks.put(exc)
            return
        finally:  # however the reading ends, the hashing ends too
            if self._to_hash:
                self._to_hash.put(None)
        self._blocks.put(None)

    def _hash_all(self) -> None:
        assert self._to_hash is not None
        while (block := self._to_hash.get()) is not None:
            self._digest.update(block)

    def hexdigest(self) -> str:
        """The sha256 of every byte read; call it after `close`."""
        return self._digest.hexdigest()

    def _next_size(self) -> int:
        if self.limit is None:
            return self.BLOCK
        return max(self.LAST, min(self.BLOCK, (self.limit - self.size) // 4))

    def _hand_on(self, block: bytes) -> float:
        """Into memory when a room is free; else, from a slow source, into the spill file; else
        wait for a room (a fast source loses nothing by waiting). The seconds it waited for one."""
        if self._rooms.acquire(blocking=False):
            self._blocks.put(block)
        elif self._spill_to and self._slow() and (at := self._spilled(block)) is not None:
            self._blocks.put(_Spilled(at, len(block)))
        else:
            began = time.monotonic()
            while not self._stop.is_set():
                if self._rooms.acquire(timeout=0.1):
                    self._blocks.put(block)
                    break
            return time.monotonic() - began
        return 0.0

    def _slow(self) -> bool:
        """Whether the rest would take longer to read, at the source's pace so far, than at
        SPILL_BELOW (not known yet: no)."""
        left = self.seconds_left()
        return left is not None and self.limit is not None and left > (self.limit - self.size) / self.SPILL_BELOW

    def _spilled(self, block: bytes) -> int | None:
        """Append a block to the spill file: where it lies, or None when it is full or cannot be
        written (no room on the disk, say): the read waits instead, as without a spill file."""
        if self.spilled + len(block) > self.SPILL_LIMIT:
            return None
        try:
            if self._spill is None:
                assert self._spill_to is not None
                # O_TMPFILE: never named; closed by close(), or with the process
                self._spill = tempfile.TemporaryFile(dir=self._spill_to, buffering=0)  # noqa: SIM115
            write_all(self._spill.fileno(), memoryview(block))
        except OSError:
            self._spill_to = None  # no further tries
            return None
        self.spilled += len(block)
        return self.spilled - len(block)

    def seconds_left(self) -> float | None:
        """The time the rest would take to read at the source's pace so far (and as it measured
        it before, when it read ahead); None before the first block. The pace counts from the
        second read on: the first waits for the source's first byte too (a 256 KiB block in 7 ms
        made a 60 MiB/s Drive look like a 36 MiB/s one).
        The read under way counts as if it ended now, once that is slower than the pace so far:
        a read that hangs slows the pace as it goes, and one that is merely under way (a 4 MiB
        block takes 70 ms at 60 MiB/s) does not make a fast source look slow."""
        with self._pace_lock:
            busy, size, reading, first = self.busy, self.size, self._reading, self._first
        busy_before, got_before = self._before
        if not (self.limit and (first or got_before)):
            return None
        first_busy, first_size = first or (busy, size)
        busy, got = busy - first_busy + busy_before, size - first_size + got_before
        pace = busy / got if got else 0.0  # seconds a byte
        if reading is not None:
            began, asked = reading
            pace = max(pace, (busy + time.monotonic() - began) / (got + asked))
        return (self.limit - max(size, self._ready)) * pace

    def _next_block(self) -> bytes | None:
        while not self._done:
            if self._stop.is_set():  # closed: a race was lost (see Watch); what was read ahead is not handed on
                raise Cancelled
            try:
                item = self._blocks.get(timeout=0.1)
            except queue.Empty:
                self._give_up_if_stalled()
                continue
            if isinstance(item, BaseException):
                raise item
            if item is None:
                self._done = True
            elif isinstance(item, _Spilled):
                return self._read_spilled(item)
            else:
                self._rooms.release()
                return item
        return None

    def _read_spilled(self, block: _Spilled) -> bytes:
        assert self._spill is not None
        data = os.pread(self._spill.fileno(), block.size, block.at)
        if len(data) != block.size:
            raise OSError(f"its spill file lost {block.size - len(data)} bytes")
        return data

    def _give_up_if_stalled(self) -> None:
        """The source's read under way has waited longer than its store allows (`patience`): the
        reading ends here, its thread left in that read (a daemon)."""
        reading = self._reading
        if self._patience and self._patience.spent(reading[0] if reading else None):
            self.stop()
            raise self._patience.give_up()

    def stop(self) -> None:
        """Stop reading: the consumer gave up, or lost a race. A consumer waiting for a block
        gets Cancelled at once (the restore that lost a race ends now, not at its next look)."""
        self._stop.set()
        self._blocks.put(Cancelled())
        self._stop_source()

    def close(self) -> None:
        """Stop reading and wait for the threads; the spill file goes."""
        self.stop()
        for thread in self._threads:
            thread.join()
        if self._spill is not None:
            self._spill.close()
