"""Moving bytes: hashed copies, the one atomic write, progress bars, redaction, zstd streams.

Standard library only at import time (warmstart.sh uses it before any dependency is there).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import select
import shlex
import shutil
import stat
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol, TextIO

from . import home
from .errors import WarmstartError, redact

CHUNK = 1 << 20


def write_private(path: Path, text: str) -> None:
    """A file of warmstart's own (a job, a failure, a log), in its own folder (so mode 0600),
    written atomically, its credentials hidden: nothing secret is ever at rest."""
    atomic_write_text(path, redact(text))


class Bar(Protocol):
    def update(self, n: int) -> Any: ...


class _NoBar:
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
            yield _NoBar()
            return
        try:
            from tqdm import tqdm
        except ImportError:
            yield _NoBar()
            return
        # A terminal that does not say its size (a pseudo-terminal such as a Colab `!` cell's may
        # answer 0 by 0) gets 80 by 24, else tqdm draws nothing at all.
        size = shutil.get_terminal_size((80, 24))
        with tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=False,
                  ncols=min(size.columns or 80, 120), nrows=size.lines or 24, mininterval=0.2) as shown:
            yield shown


QUIET = Bars(enabled=False)


def not_writable(drive: Path) -> str | None:
    """Why this user may not write the Drive cache (its folders belong to another user, or are the
    user's with the write bit cleared), or None.
    A read-only file system is not such a reason: a read-only Drive is used as it is, and what
    would be cached there is said not to be."""
    for folder in (drive, drive / ".warmstart", drive / ".warmstart" / "v1"):
        try:
            if not folder.is_dir() or os.access(folder, os.W_OK) or os.statvfs(folder).f_flag & os.ST_RDONLY:
                continue
            info = folder.stat()
        except OSError:
            continue
        owner, quoted = info.st_uid, shlex.quote(str(folder))
        if owner == os.getuid():  # the user's own, without the user's write permission
            from .invocation import in_cell, in_notebook  # (they import this module) only a message needs them

            chmod = in_cell(["chmod", "u+w", str(folder)], in_notebook())
            return (f"the Drive folder {folder} is this user's, but its mode ({stat.S_IMODE(info.st_mode):o}) does "
                    f"not let its owner write there: `{chmod}`, or pass --drive with a folder you may write")
        return (f"the Drive folder {folder} belongs to uid {owner}, and this user (uid {os.getuid()}) may not "
                f"write there: run as uid {owner}, or, where that folder is yours to give (the host's, for a "
                f"container), `sudo chown -R {os.getuid()} {quoted}`")
    return None


def _mounts() -> list[tuple[str, str]]:
    """Each mount's point and file system type, from /proc/self/mountinfo (which looks at no mount
    itself: a stat of a Drive that stopped answering never returns); [] where there is none."""
    try:
        with open("/proc/self/mountinfo") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return []
    mounts = []
    for line in lines:
        fields = line.split()
        try:  # the type follows the optional fields' closing "-"
            kind = fields[fields.index("-", 5) + 1]
        except (ValueError, IndexError):
            continue
        # Field 5 is the mount point, with spaces and the like escaped as octal (\040).
        mounts.append((fields[4].encode().decode("unicode_escape"), kind))
    return mounts


def _mounts_holding(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """The mounts `path` lies on, the outermost first (each mount's point and type)."""
    where = os.path.abspath(path)
    return sorted(((point, kind) for point, kind in _mounts()
                   if where == point or where.startswith(point.rstrip("/") + "/")), key=lambda mount: len(mount[0]))


def on_fuse(path: str | os.PathLike[str]) -> bool:
    """Whether `path` lies on a FUSE file system (Colab's Drive is one)."""
    holding = _mounts_holding(path)
    return bool(holding) and holding[-1][1].startswith("fuse")


def is_mount_point(path: Path) -> bool:
    """A mount point, bind mounts of a folder on the same file system included (which
    os.path.ismount cannot tell: it compares device numbers)."""
    return os.path.ismount(path) or os.path.abspath(path) in {point for point, _type in _mounts()}


def regular_file(path: Path) -> bool:
    """A regular file itself, not a link to one: the only thing warmstart reads off Drive (a named
    pipe would hang a run, a link to a device fill the disk)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except (OSError, ValueError):
        return False


def kind_of(path: Path) -> str:
    """What `path` is, in a word for a message: "link", "folder" or "file"."""
    return "link" if path.is_symlink() else "folder" if path.is_dir() else "file"


def not_a_folder(folder: Path) -> Path | None:
    """The file or link standing where `folder`, or a folder above it, goes (mkdir would meet it:
    "File exists"); None when `folder` is one, or can be made."""
    while not folder.is_dir():  # a link to a folder is one
        if os.path.lexists(folder):
            return folder
        if folder == folder.parent:
            return None
        folder = folder.parent
    return None


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


class AtomicFile:
    """A file written under a unique temporary name beside its destination, flushed to disk,
    then renamed: readers see the destination absent or whole (also on a network file system,
    also with two writers). `commit(dest)` may name the file only once it is written (a snapshot
    archive is named by its own sha256); leaving the block without a commit removes it."""

    def __init__(self, near: Path, mode: str = "wb") -> None:
        # In warmstart's own folder, files are 0600 and folders 0700: they name the user's
        # folders and stores (elsewhere, on Drive or in an environment, the umask decides).
        private = _within(near, home.root())
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
        if disk_only and exc.errno not in DISK_ERRNOS:
            raise
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


def copy_hashed(src: Path | Readable, dest: IO[bytes], bar: Bar = _NoBar(),
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


def no_room(size: int, folder: Path, then: str = "free local disk space, or set TMPDIR to a larger disk") -> str | None:
    """Why `size` bytes are not written into the local `folder`, or None: "N MiB, more than the M
    MiB free in FOLDER; `then`". Asked before a write a store's listing sized (a store may list a
    file of any size under a wheel's name: it would fill the disk before its hash failed)."""
    free = shutil.disk_usage(folder).free
    if size <= free:
        return None
    return f"{_amount(size)}, more than the {_amount(free)} free in {folder}; {then}"


def _amount(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size} bytes"


# A restore writes its files in slices of at most this, as tar does (10 KiB): a larger write
# lets the page cache take folios of 2 MiB, and on a VM whose host takes freed memory back
# (virtio-balloon free page reporting: the benchmark machine, kernel 6.18) backing them cost the
# Colab stand-in's restore 1 to 1.5 s of system CPU; its step took 1.57 to 2.28 s in 4 MiB writes
# against 0.71 to 0.78 s in 128 KiB ones, alternated (bench/README.md). Elsewhere the size made
# no difference that showed.
WRITE_MAX = 128 << 10


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


COLAB_MOUNT = "/content/drive"  # where Colab's notebook mounts Drive unless told otherwise


def remount(path: str | os.PathLike[str] | None) -> str:
    """How to remount the Drive that holds `path`, pasted as it stands into a notebook cell: the
    FUSE mount it lies on (Colab's Drive is one, wherever the user mounted it), else Colab's."""
    fuse = [point for point, kind in _mounts_holding(path or "/") if kind.startswith("fuse")]
    mount = fuse[-1] if fuse else COLAB_MOUNT
    return (f"remount it by running this in a notebook cell: from google.colab import drive; "
            f"drive.mount({mount!r}, force_remount=True)")


DRIVE_ERRORS = {
    errno.ENOSPC: "Drive is full (on Colab: the Google Drive storage quota is used up)",
    errno.EDQUOT: "Drive is over quota (on Colab: the Google Drive storage quota is used up)",
    errno.EIO: "Drive returned an I/O error (on Colab this often means the storage quota is exceeded)",
    errno.ENOTCONN: "Drive was disconnected (Transport endpoint is not connected)",
}


def explain(exc: OSError, where: str | os.PathLike[str] | None = None) -> str:
    """What a failed Drive operation (in the Drive folder `where`, unless the error names its
    file) means, in a line. An error naming a file outside `where` is the local disk's (a job
    file, a staged copy): said as it is, with the file, since Drive's meanings ("Drive is full")
    would send the user to the wrong disk."""
    if exc.errno is None:  # a line of warmstart's own (OSError(message)): said already
        return str(exc)
    named = exc.filename
    if where is not None and isinstance(named, str) and not _within(named, where):
        return f"{named}: {exc.strerror or exc} [{exc.__class__.__name__} {exc.errno}]"
    said = DRIVE_ERRORS.get(exc.errno or 0, exc.strerror or str(exc))
    if exc.errno == errno.ENOTCONN:
        said += f": {remount(exc.filename or where)}"
    return f"{said} [{exc.__class__.__name__} {exc.errno}]"


def _within(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    """`path` lies in `folder`, by their names made absolute (no look at the disk: Drive may hang)."""
    return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(folder))


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str, keep_lines: bool = False) -> str:
    """Text safe to print on a terminal: control characters (an escape sequence in a recipe's
    description, a carriage return from a store, a newline in a wheel's name) are shown escaped,
    as \\x1b, \\r, \\n; `keep_lines` keeps the newlines of a text of several lines."""
    def escape(match: re.Match[str]) -> str:
        char = match.group()
        return char if keep_lines and char == "\n" else char.encode("unicode_escape").decode()

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
