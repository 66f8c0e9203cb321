"""Moving bytes: hashed copies, the one atomic write, reading untrusted files and streams a
block at a time, zstd streams.

Standard library only at import time (warmstart.sh uses it before any dependency is there).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol

from . import home
from .console import Bar, NoBar
from .disks import regular_file, within
from .errors import WarmstartError, redact

CHUNK = 1 << 20


def write_private(path: Path, text: str) -> None:
    """A file of warmstart's own (a job, a failure, a log), in its own folder (so mode 0600),
    written atomically, its credentials hidden: nothing secret is ever at rest."""
    atomic_write_text(path, redact(text))


def sha256_of(source: str | os.PathLike[str] | IO[bytes]) -> str:
    """The sha256 of a file, or of what a stream opened for reading holds (a team store's object)."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as fh:
            return sha256_of(fh)
    digest = hashlib.sha256()
    while chunk := source.read(CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def is_sha256(value: object) -> bool:
    """A sha256 as warmstart writes and reads it everywhere: 64 lower-case hex digits, nothing else."""
    return isinstance(value, str) and _SHA256_HEX.fullmatch(value) is not None


class Unreadable(ValueError):
    """Data from Drive or a team store that is not what it should be: too big, not JSON, nested
    too deeply, or of the wrong shape. Said as one line; never a traceback."""


def untrusted_json(data: bytes | str, limit: int = 1 << 20, shape: type = dict) -> Any:
    """JSON read from Drive, a team store or a snapshot: at most `limit` bytes, of the top-level
    type `shape`; anything else (deep nesting included, which would otherwise end the run in a
    RecursionError) raises Unreadable."""
    if len(data) > limit:
        raise Unreadable(f"larger than {limit} bytes")
    try:
        value = json.loads(data)
    except RecursionError:
        raise Unreadable("nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise Unreadable(f"not JSON ({exc.__class__.__name__})") from None
    if not isinstance(value, shape):
        raise Unreadable(f"a JSON {type(value).__name__}, not a {shape.__name__}")
    return value


def read_head(path: Path, limit: int) -> bytes:
    """A regular file's first `limit` + 1 bytes: one more than its reader takes, so that it can
    tell a file too long. OSError for anything else: IsADirectoryError for a folder, EINVAL for a
    named pipe (whose read would wait for a writer) or a device; opened without waiting, so no
    such thing swapped in after a look can hang the read."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb") as fh:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file; put the file itself in its place", str(path))
        return fh.read(limit + 1)


def read_untrusted_json(path: Path, limit: int = 1 << 20, shape: type = dict) -> Any:
    """untrusted_json of a regular file, read no further than `limit` bytes."""
    if not regular_file(path):
        raise Unreadable(f"{path} is not a regular file")
    return untrusted_json(read_head(path, limit), limit, shape)


def part_name(dest: Path) -> Path:
    """A temporary name beside dest, unique per writer: `.NAME.<random>.part`."""
    return dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")


def parts_of(dest: Path) -> list[Path]:
    """The files and folders beside dest named as part_name names them (no link): what writers of
    dest left there, alive or killed. Where dest's folder cannot be listed, none."""
    named = re.compile(rf"\.{re.escape(dest.name)}\.[0-9a-f]{{32}}\.part")
    try:
        with os.scandir(dest.parent) as entries:
            return [Path(entry.path) for entry in entries
                    if named.fullmatch(entry.name) and not entry.is_symlink()]
    except OSError:
        return []


class AtomicFile:
    """A file written under a unique temporary name beside its destination, flushed to disk,
    then renamed: readers see the destination absent or whole (also on a network file system,
    also with two writers). `commit(dest)` may name the file only once it is written (a snapshot
    archive is named by its own sha256); leaving the block without a commit removes it."""

    def __init__(self, near: Path, mode: str = "wb") -> None:
        # In warmstart's own folder, files are 0600 and folders 0700: they name the user's
        # folders and stores (elsewhere, on Drive or in an environment, the umask decides).
        private = within(near, home.root())
        near.parent.mkdir(parents=True, exist_ok=True, **({"mode": 0o700} if private else {}))
        self.tmp = part_name(near)

        def exclusive(path: str, flags: int) -> int:  # never a file that is there
            return os.open(path, flags | os.O_EXCL, 0o600 if private else 0o666)

        # Opened by its name, so that fh.name (and WriteFailed) says which file.
        self.fh: IO[Any] = open(self.tmp, mode, opener=exclusive)  # noqa: SIM115 (closed by __exit__)

    def write(self, data: bytes | str) -> None:
        """Write `data`: a write past the buffer that fails (a full disk) names the file."""
        with self.naming():
            self.fh.write(data)

    def commit(self, dest: Path) -> Path:
        with self.naming():  # a full disk says so here, at the flush
            self.fh.flush()
            os.fsync(self.fh.fileno())
            self.fh.close()
        os.replace(self.tmp, dest)
        return dest

    def naming(self) -> AbstractContextManager[None]:
        """An OSError of this file's writes in the block is WriteFailed naming it (writing)."""
        return writing(self.tmp)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, failed: type[BaseException] | None, *exc: object) -> None:
        try:
            self.fh.close()
        except OSError:
            if failed is None:
                raise
            # else what it still buffered fails again (a full disk): the error in flight says it
        finally:
            self.tmp.unlink(missing_ok=True)


# What a disk says when it takes no more (full, read-only, failing, refused): the writer's data is
# not at fault, and any other data would meet it too.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM})


@contextmanager
def writing(path: str | os.PathLike[str], disk_only: bool = False) -> Iterator[None]:
    """An OSError of the block's writes to `path` is WriteFailed naming it (a write's names no
    file, a copy's its source), so that the disk that failed is known (see explain: Drive's
    quota, or the local disk). With `disk_only`, only what a disk says (DISK_ERRNOS): in a tree
    an archive laid out, a folder where a file should be, or a name too long, is the archive's."""
    try:
        yield
    except OSError as exc:
        if (disk_only and exc.errno not in DISK_ERRNOS) or isinstance(exc, TimeoutError):
            raise  # a write that waited out its time (a Drive that stopped answering) says so itself
        raise WriteFailed(exc.errno, exc.strerror, str(path)) from exc


@contextmanager
def atomic_write(dest: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """`with atomic_write(dest) as fh:` dest appears, whole, when the block ends without error."""
    with AtomicFile(dest, mode) as part:
        yield part.fh
        part.commit(dest)


def atomic_write_text(dest: Path, text: str) -> None:
    with AtomicFile(dest, "w") as part:
        part.write(text)
        part.commit(dest)


def atomic_write_bytes(dest: Path, data: bytes) -> None:
    with AtomicFile(dest) as part:
        part.write(data)
        part.commit(dest)


def atomic_copy(src: Path, dest: Path) -> None:
    with AtomicFile(dest) as part, src.open("rb") as source:
        with part.naming():
            shutil.copyfileobj(source, part.fh)
        part.commit(dest)


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class Stream(Readable, Protocol):
    """What a store's `open` gives: read once, front to back, then closed."""

    def close(self) -> None: ...
    def __enter__(self) -> Any: ...
    def __exit__(self, *exc: Any) -> Any: ...


class BlockStream:
    """A stream read from blocks that come one after another (a read-ahead's, a store's ranged
    GETs, verified parts): `read(n)` slices the current block where the last read ended, so the
    rest of a block is never copied, and a read of the whole block is the block itself.
    `_next_block()` gives the next one, None at the end."""

    _block: bytes = b""
    _at = 0  # how much of _block was read

    def _next_block(self) -> bytes | None:
        raise NotImplementedError

    def read(self, size: int = -1) -> bytes:
        while self._at >= len(self._block):
            self._block = b""  # let go of it while the next one comes
            block = self._next_block()
            if block is None:
                return b""
            self._block, self._at = block, 0
        end = len(self._block) if size < 0 else min(len(self._block), self._at + size)
        data, self._at = self._block[self._at:end], end
        return data


class WriteFailed(OSError):
    """A write failed (a copy's, an atomic file's), naming the file written: the fault is the
    destination's (a full disk), not the source's."""


def copy_hashed(src: Path | Readable, dest: IO[bytes], bar: Bar = NoBar(),
                limit: int | None = None) -> tuple[str, int]:
    """Copy a file (a path, or a stream opened for reading) into an open file, returning the
    sha256 and size of what was read: one pass. With a `limit` (the size a store listed), no more
    than `limit` + 1 bytes: a file that grew since fails its hash without filling the disk. A
    failed write (flushed before it returns) is WriteFailed, naming `dest`, which it closes (what
    its buffer holds cannot be written either)."""
    if isinstance(src, Path):
        with open(src, "rb") as fin:
            return copy_hashed(fin, dest, bar, limit)
    digest = hashlib.sha256()
    size = 0
    left = None if limit is None else limit + 1
    while left != 0 and (chunk := src.read(CHUNK if left is None else min(CHUNK, left))):
        digest.update(chunk)
        write_to(dest, chunk)
        size += len(chunk)
        left = None if left is None else left - len(chunk)
        bar.update(len(chunk))
    write_to(dest, b"")
    return digest.hexdigest(), size


# A restore writes its files in slices of at most this, as tar does (10 KiB): a larger write
# lets the page cache take folios of 2 MiB, and on a VM whose host takes freed memory back
# (virtio-balloon free page reporting: the benchmark machine, kernel 6.18) backing them cost the
# Colab stand-in's restore 1 to 1.5 s of system CPU; its step took 1.57 to 2.28 s in 4 MiB writes
# against 0.71 to 0.78 s in 128 KiB ones, alternated (bench/README.md). Elsewhere the size made
# no difference that showed.
WRITE_MAX = 128 << 10


def write_all(fd: int, data: memoryview) -> None:
    """Write all of `data` to a file descriptor, WRITE_MAX bytes at a time at most."""
    at = 0
    while at < len(data):
        at += os.write(fd, data[at:at + WRITE_MAX])


def write_to(dest: IO[bytes], chunk: bytes) -> None:
    """Write a chunk, or flush when it is empty, the error said as the destination's."""
    try:
        dest.write(chunk) if chunk else dest.flush()
    except OSError as exc:
        with contextlib.suppress(OSError):
            dest.close()  # else closing it later would try the write again, and fail as an OSError
        name = getattr(dest, "name", None)  # a file opened from a descriptor has its number
        raise WriteFailed(exc.errno, exc.strerror, name if isinstance(name, str) else None) from exc


def zstd_open(file: Path | BinaryIO | Any, mode: str, *, window_log: int | None = None, level: int = 3) -> BinaryIO:
    """A zstd stream over a file (writing at `level`): `zstandard` (multi-threaded) where installed,
    else the standard library's compression.zstd (Python 3.14+). `window_log`: writing, match across a
    window of 2**window_log bytes (long-distance matching: wheels full of similar libraries);
    reading, refuse a frame that asks for more (the decoder's memory is about that window).
    Frames are written with their content's checksum (XXH64), which the decoder checks: a
    damaged byte anywhere is an error, for 0.04 s of the decoder's CPU on 437 MB."""
    writing = "w" in mode
    try:
        import zstandard
    except ImportError:
        try:
            from compression import zstd  # Python 3.14+
        except ImportError:
            raise WarmstartError("zstd archives need the `zstandard` package: pip install zstandard") from None
        if writing:
            options = {zstd.CompressionParameter.compression_level: level, zstd.CompressionParameter.checksum_flag: 1}
            if window_log:
                options |= {zstd.CompressionParameter.window_log: window_log,
                            zstd.CompressionParameter.enable_long_distance_matching: 1}
            stream: BinaryIO = zstd.open(file, mode, options=options)
        else:
            limits = {zstd.DecompressionParameter.window_log_max: window_log} if window_log else None
            stream = zstd.open(file, mode, options=limits)
        return stream
    if writing:
        long = {"window_log": window_log, "enable_ldm": True} if window_log else {}
        params = zstandard.ZstdCompressionParameters.from_level(level, threads=-1, write_checksum=True, **long)
        opened: BinaryIO = zstandard.open(file, mode, cctx=zstandard.ZstdCompressor(compression_params=params))
    else:
        dctx = zstandard.ZstdDecompressor(max_window_size=1 << window_log) if window_log else None
        opened = zstandard.open(file, mode, dctx=dctx)
    return opened
