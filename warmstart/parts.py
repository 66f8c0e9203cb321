"""One archive read from every store that holds it at once, part by part.

A snapshot index lists the sha256 of each PART_SIZE part of its archive. When Drive and the team
cache both hold the archive, each gets a thread that fetches the next part nobody has taken and
hands it on once its hash matches; the reader takes the parts in order. The fastest source
takes the nearest part; a slower one helps only while the reader has lately had to wait (else
it would cost reads and hashing for nothing), and then takes the part furthest ahead, which
gives it the most time. So a restore reads at the pace of its fastest source, or of them all
together when that alone cannot keep it fed.

A source that fails to serve a part (an error, a short read, a read that hangs past its store's
timeout, a hash that differs) is asked no more, and the part goes to another. When the part
the reader waits for has been with another source for twice as long as an idle one took for
its last part, the idle one fetches it too, and whichever answers first serves it: a slow or
hung source holds the restore up only so long.

A source that costs time to open (the team store: importing its backend takes 0.6 s of CPU) can
be held back (`later`): it is opened and joins only once the others leave the reader waiting
(JOIN_AFTER in all) or one fails. A Drive that keeps the restore fed never waits for it.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from .console import Bar
from .store import Store
from .transfer import BlockStream, is_sha256

# The parts a snapshot is written in (a restore takes the size its index states). Every part is
# in memory whole while it is read, checked and waits its turn, and a team store's GET holds
# it twice as it comes: hyperlpr's restore from a 60 MiB/s Drive and the team cache at once
# (SeaweedFS) peaked at 163 to 171 MiB in 4 MiB parts, against 186 to 206 MiB in 8 MiB ones,
# in 4.66 to 5.11 s against 3.83 to 4.95 s (4 alternated rounds).
PART_SIZE = 4 << 20
# Parts held ahead of the reader at most, those being fetched and checked included. With 6 parts
# of 8 MiB, hyperlpr's restore from Drive and the team cache at once peaked at 226 to 242 MiB
# against 210 to 222 MiB with 3 (3 alternated runs each), in no less time: two sources keep 3
# parts going.
WINDOW = 3
HUNGRY = 1.0  # seconds after the reader last waited that slower sources keep helping
LIMITS = (1 << 20, 64 << 20)  # the part sizes a restore accepts from an index
HELD_POLL = 0.05  # seconds between a held reader's looks at whether it may read on
JOIN_AFTER = 0.1  # seconds the reader waits for parts, in all, before a source held back is asked
CHECKING = 2  # parts a source has read and its checker not yet hashed: it reads while that hashes
STALL_POLL = 0.1  # seconds between a waiting reader's looks at whether a source's read hangs


@dataclass(eq=False)
class Source:
    """One store that holds the archive, as the restore used it."""

    label: str  # "Drive", "the team cache": what the report calls it
    store: Store
    served: int = 0  # bytes of parts it served that were used
    pace: float = 0.0  # seconds its last part took
    since: float | None = None  # when the read of the part it fetches now began
    failed: str | None = None  # why it was asked no more
    damaged: bool = False  # it served a part whose hash differs: its copy is damaged


class PartHasher:
    """A write-only file wrapper that counts what passes through and hashes it, whole and in
    parts of `part_size` bytes (what an index lists)."""

    def __init__(self, fh: IO[bytes], part_size: int = PART_SIZE) -> None:
        self.fh, self.part_size = fh, part_size
        self.digest, self.size = hashlib.sha256(), 0
        self.parts: list[str] = []
        self._part, self._in_part = hashlib.sha256(), 0

    def write(self, data: Any) -> int:
        self.digest.update(data)
        self.size += len(data)
        view = memoryview(data)
        while view:
            take = min(len(view), self.part_size - self._in_part)
            self._part.update(view[:take])
            self._in_part, view = self._in_part + take, view[take:]
            if self._in_part == self.part_size:
                self._end_part()
        return self.fh.write(data)

    def _end_part(self) -> None:
        self.parts.append(self._part.hexdigest())
        self._part, self._in_part = hashlib.sha256(), 0

    def flush(self) -> None:
        self.fh.flush()

    def finish(self) -> list[str]:
        """The hashes of the parts, the last (shorter) one included."""
        if self._in_part:
            self._end_part()
        return self.parts


def valid(index: dict[str, Any]) -> bool:
    """An index's part list is one warmstart wrote: a sane part size, a hash per part."""
    size, part_size, parts = index.get("size"), index.get("part_size"), index.get("parts")
    return (isinstance(size, int) and isinstance(part_size, int) and LIMITS[0] <= part_size <= LIMITS[1]
            and isinstance(parts, list) and len(parts) == -(-size // part_size)
            and all(map(is_sha256, parts)))


class PartReader(BlockStream):
    """Reads the archive `name` from every source at once; `read(n)` hands its bytes on in order,
    as a file would, each part verified. Raises OSError once no source can serve a part.
    `later`: opens a source held back (None when it cannot serve), asked once the reader waits."""

    def __init__(self, sources: list[Source], kind: str, name: str, index: dict[str, Any],
                 bar: Bar | None = None, held: Callable[[], bool] = lambda: False,
                 later: Callable[[], Source | None] | None = None) -> None:
        self.sources, self.kind, self.name, self.bar, self._held = sources, kind, name, bar, held
        self.part_size, self.hashes, total = int(index["part_size"]), list(index["parts"]), int(index["size"])
        self.lengths = [min(self.part_size, total - i * self.part_size) for i in range(len(self.hashes))]
        self.total = total
        self.size = 0  # bytes handed on
        self._cond = threading.Condition()
        self._got: dict[int, bytes] = {}
        self._fetching: dict[int, set[Source]] = {}
        self._since: dict[int, float] = {}  # when the first source began on a part
        self._waiting = False  # the reader waits for part _next
        self._wait_began: float | None = None  # since when, while it does
        self._starved_at = 0.0  # when the reader last had to wait
        self._next = 0  # the part read() hands on next
        self._stop = False
        self.waited = 0.0  # seconds the reader waited for parts, in all
        self._later = later
        # The source held back once the reader fell behind: True while it is being opened, then
        # the Source (joining until its first part is in, see seconds_left); None before, or when
        # it could not be opened.
        self._joining: Source | bool | None = None
        self._threads: list[threading.Thread] = []
        for source in sources:
            self._begin(source)
        if later:  # not waited for on close: it may be opening its store, which ends on its own
            threading.Thread(target=self._join_later, daemon=True).start()

    def _spawn(self, run: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=run, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _begin(self, source: Source) -> None:
        """A source's two threads: one reads parts, the other checks their hashes meanwhile."""
        checking: queue.Queue[tuple[int, bytes] | None] = queue.Queue(CHECKING)
        self._spawn(self._fetch_with, source, checking)
        self._spawn(self._check, source, checking)

    # -- the sources' threads ---------------------------------------------------------------

    def _take(self, source: Source) -> int | None:
        """The part `source` fetches next, once there is one; None when nothing is left to it.
        The fastest source takes the nearest free part. A slower one takes the furthest, and
        only while the reader has lately waited: when the fastest alone keeps it fed, a slower
        source would only cost reads and hashing. A part the reader waits for, held by one
        other source for twice as long as `source` took for its last part, is raced."""
        with self._cond:
            while not self._stop and not source.failed:
                if self._held():  # a rival far ahead has the CPUs (snapshot.Watch.hold)
                    self._cond.wait(HELD_POLL)
                    continue
                now = time.monotonic()
                ahead = range(self._next, min(self._next + WINDOW, len(self.hashes)))
                missing = [i for i in ahead if i not in self._got]
                if not missing and ahead.stop == len(self.hashes):
                    return None  # every part is here or handed on
                free = [i for i in missing if not self._fetching.get(i)]
                faster = any(s.pace and s.pace < source.pace for s in self.sources if s is not source and not s.failed)
                if free and not faster:
                    return self._start(source, free[0])
                if free and now - self._starved_at < HUNGRY:
                    return self._start(source, free[-1])
                on_it = self._fetching.get(self._next, set()) if self._waiting else set()
                due = self._since.get(self._next, now) + 2 * source.pace - now
                if len(on_it) == 1 and source not in on_it and source.pace:
                    if due <= 0:
                        return self._start(source, self._next)
                    self._cond.wait(due)
                else:
                    self._cond.wait()
            return None

    def _start(self, source: Source, i: int) -> int:
        self._fetching.setdefault(i, set()).add(source)
        self._since.setdefault(i, time.monotonic())
        return i

    def _fetch_with(self, source: Source, checking: queue.Queue[tuple[int, bytes] | None]) -> None:
        try:
            with source.store.ranges(self.kind, self.name) as read_at:
                while (i := self._take(source)) is not None:
                    source.since = began = time.monotonic()
                    data = read_at(i * self.part_size, self.lengths[i])
                    source.since, source.pace = None, time.monotonic() - began
                    checking.put((i, data))
        except Exception as exc:  # OSError, a timeout, a backend's own: this source is done
            self._fail(source, f"{exc}" if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}")
        finally:
            checking.put(None)

    def _check(self, source: Source, checking: queue.Queue[tuple[int, bytes] | None]) -> None:
        """Hand on each part `source` read once its hash matches; else it is asked no more."""
        while (item := checking.get()) is not None:
            i, data = item
            if source.failed:
                continue  # its reader stops at its next part
            if len(data) != self.lengths[i] or hashlib.sha256(data).hexdigest() != self.hashes[i]:
                source.damaged = True  # its copy is shorter, or other, than the index says
                self._fail(source, f"part {i + 1} differs from its index")
            else:
                self._deliver(source, i, data)

    def _fail(self, source: Source, why: str) -> None:
        with self._cond:
            source.failed = source.failed or why
            for fetchers in self._fetching.values():
                fetchers.discard(source)
            self._cond.notify_all()

    def _join_later(self) -> None:
        """Open the source held back once the reader has waited JOIN_AFTER in all (not while a
        rival holds the read) or a source failed, and let it fetch parts too."""
        with self._cond:
            while not self._stop and (self._held() or not self._wants_help()):
                self._cond.wait(HELD_POLL)
            self._joining = not self._stop
        source = None if self._stop else self._later_source()
        with self._cond:
            self._later, self._joining = None, source
            if source and not self._stop:
                self.sources.append(source)
                self._begin(source)
            self._cond.notify_all()

    def _later_source(self) -> Source | None:
        assert self._later is not None
        try:
            return self._later()
        except Exception:  # ask_team says a backend that cannot be opened; anything else must
            return None  # not end this thread with the reader left waiting for it: it serves nothing

    def _wants_help(self) -> bool:
        waiting = time.monotonic() - self._wait_began if self._wait_began is not None else 0.0
        return self.waited + waiting > JOIN_AFTER or any(s.failed for s in self.sources)

    def _give_up_on_stalled(self) -> None:
        """A source whose read has waited longer than its store allows (Store.patience) is asked
        no more, and its store is down for the run; its thread is left in that read (a daemon)."""
        for source in self.sources:
            patience = source.store.patience()
            if patience and not source.failed and patience.spent(source.since):
                self._fail(source, str(patience.give_up()))

    def _deliver(self, source: Source, i: int, data: bytes) -> None:
        with self._cond:
            self._fetching[i].discard(source)
            if i >= self._next and i not in self._got:  # else another source won the race
                self._got[i] = data
                source.served += len(data)
                if self.bar:
                    self.bar.update(len(data))
            self._cond.notify_all()

    # -- the reader -------------------------------------------------------------------------

    def _next_block(self) -> bytes | None:
        with self._cond:
            try:
                while self._next < len(self.hashes) and self._next not in self._got:
                    if self._stop:
                        raise OSError("stopped")
                    if all(s.failed for s in self.sources) and self._later is None:
                        raise OSError(f"no source could serve part {self._next + 1} ("
                                      + "; ".join(f"{s.label}: {s.failed}" for s in self.sources) + ")")
                    self._waiting, self._starved_at = True, time.monotonic()
                    if self._wait_began is None:
                        self._wait_began = self._starved_at
                    self._cond.notify_all()  # the slower sources may help now
                    self._cond.wait(STALL_POLL)
                    self._give_up_on_stalled()
            finally:
                self._waiting = False
                if self._wait_began is not None:
                    self.waited += time.monotonic() - self._wait_began
                    self._wait_began = None
            if self._next == len(self.hashes):
                return None
            data = self._got.pop(self._next)
            self._next += 1
            self._cond.notify_all()
            return data

    def read(self, size: int = -1) -> bytes:
        data = super().read(size)
        self.size += len(data)
        return data

    def seconds_left(self) -> float | None:
        """The time the parts not yet handed on would take at the sources' paces; None before any,
        and while the source held back is joining (opened, its first part not yet in): the read
        fell behind, and what it has left depends on that source's pace. Else a race (see
        warmstart.race) would start uv, and hold the read meanwhile, on Drive's pace alone, while a
        team store that serves it all faster waits to be opened."""
        joining = self._joining
        if joining is True or (isinstance(joining, Source) and not joining.pace and not joining.failed):
            return None
        rate = sum(self.part_size / s.pace for s in self.sources if s.pace and not s.failed)
        return (self.total - self.size) / rate if rate else None

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()

    def close(self) -> None:
        """Stop fetching. A source hung in a read is not waited for (its store's timeout ends it)."""
        self.stop()
        until = time.monotonic() + 1
        for thread in list(self._threads):  # a source held back joins only before the stop
            thread.join(timeout=max(0.0, until - time.monotonic()))
