"""Unpack a snapshot's tar stream into a staging folder, hashing each file from the bytes written.

warmstart writes its snapshot archives itself (`snapshot.pack`: POSIX pax, files only), so this
reads what it writes and refuses the rest: ustar headers, pax records for long names and
times, regular files and folders. A link is refused (no wheel installs one, and one could send
a later file anywhere), and so are devices, sparse files and GNU extensions, a name that is
absolute or climbs out with `..`, and a name given twice.

Files are created anew (O_EXCL: never over another, never through a link, since none is ever
made), belong to whoever restores, and are 0o755 or 0o644 whatever the archive says: no owner
or special bit comes from Drive. Each file's sha256 is taken from the very bytes written, on a
thread of its own (hashlib lets go of the GIL), so `manifest.Tree.check` need not read the
tree again. Nothing here trusts a file: the check does, against the lock.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import queue
import re
import threading
from pathlib import Path

from .manifest import Signature, Untrusted, signature
from .transfer import DISK_ERRNOS, WriteFailed, write_all

BLOCK = 512
_ZERO = bytes(BLOCK)
_OCTAL = re.compile(rb" *([0-7]+)[ \0]*")
_PAX_RECORD = re.compile(rb"([1-9][0-9]*) ")
# pax keys that change no file's name or bytes (Python's tarfile writes some of them)
_PAX_IGNORED = frozenset({b"mtime", b"atime", b"ctime", b"uid", b"gid", b"uname", b"gname", b"comment",
                          b"hdrcharset"})
_PAX_LIMIT = 64 << 10  # warmstart's pax headers hold a name and a time
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_KINDS = {b"1": "a hard link", b"2": "a link", b"3": "a device", b"4": "a device", b"6": "a pipe"}


class Damaged(Exception):
    """The stream is not a tar archive warmstart wrote; the message says where it differs."""


# One piece of a file for the hashing thread: (name, bytes, first piece, last piece).
_Piece = tuple[str, memoryview | bytes, bool, bool]


class Unpacker:
    """`feed` the tar stream in order; `close` returns each file's (sha256, signature) by its
    path relative to `root`. Raises Damaged, Untrusted (a link), WriteFailed (the disk's fault,
    naming the file) or OSError (a name no disk holds, say)."""

    def __init__(self, root: Path, depth: int = 8) -> None:
        self.root = root
        self._folders: set[str] = {""}
        self._names: set[str] = set()
        self._header = bytearray()  # a header still arriving
        self._pax = bytearray()
        self._path: bytes | None = None  # the next member's name, from its pax header
        self._in_pax = False
        self._file: tuple[str, int] | None = None  # (name, fd) being written
        self._left = self._padding = 0  # bytes of the member's data, and of padding, to come
        self._ended = False
        self._signatures: dict[str, Signature] = {}
        self._hashes: dict[str, str] = {}
        self._pieces: queue.Queue[list[_Piece] | None] = queue.Queue(depth)  # a list per chunk fed
        self._thread = threading.Thread(target=self._hash_all, daemon=True)
        self._thread.start()

    def feed(self, chunk: bytes) -> None:
        pieces: list[_Piece] = []
        try:
            self._take(memoryview(chunk), pieces)
        except OSError as exc:
            if exc.errno not in DISK_ERRNOS:
                raise  # a name no disk holds, say: the archive's fault (the wheels would meet the disk's)
            named = exc.filename or (str(self.root / self._file[0]) if self._file else str(self.root))
            raise WriteFailed(exc.errno, exc.strerror, named) from exc  # the staging folder's disk
        finally:
            self._pieces.put(pieces)

    def close(self) -> dict[str, tuple[str, Signature]]:
        """The stream ended: the files' hashes, once the last is taken."""
        inside = f" inside {self._file[0]}" if self._file else ""
        self._stop()
        if not self._ended:
            raise Damaged(f"it is cut short{inside}")
        return {name: (self._hashes[name], sig) for name, sig in self._signatures.items()}

    def abort(self) -> None:
        """Give up (the caller removes the folder): close the file being written."""
        self._stop()

    def _stop(self) -> None:
        if self._file:
            os.close(self._file[1])
            self._file = None
        if self._thread.is_alive():
            self._pieces.put(None)
            self._thread.join()

    def _hash_all(self) -> None:
        digest = hashlib.sha256()
        while (pieces := self._pieces.get()) is not None:
            for name, data, first, last in pieces:
                if first:
                    digest = hashlib.sha256()
                digest.update(data)
                if last:
                    self._hashes[name] = digest.hexdigest()

    def _take(self, data: memoryview, pieces: list[_Piece]) -> None:
        at = 0
        while at < len(data):
            if self._ended:
                return  # what follows the end (tarfile pads it to a whole record) is not unpacked
            if self._left:
                piece = data[at:at + self._left]
                self._left -= len(piece)
                at += len(piece)
                self._data(piece, pieces)
            elif self._padding:
                skipped = min(self._padding, len(data) - at)
                self._padding -= skipped
                at += skipped
            else:
                used = min(BLOCK - len(self._header), len(data) - at)
                self._header += data[at:at + used]
                at += used
                if len(self._header) == BLOCK:
                    header, self._header = bytes(self._header), bytearray()
                    self._start(header, pieces)

    def _data(self, piece: memoryview, pieces: list[_Piece]) -> None:
        if self._in_pax:
            self._pax += piece
            if not self._left:
                self._path, self._pax, self._in_pax = _pax_path(bytes(self._pax)), bytearray(), False
            return
        assert self._file is not None
        name, fd = self._file
        write_all(fd, piece)
        pieces.append((name, piece, False, not self._left))
        if not self._left:
            self._done()

    def _done(self) -> None:
        assert self._file is not None
        name, fd = self._file
        self._signatures[name] = signature(os.fstat(fd))
        self._file = None
        os.close(fd)

    def _start(self, header: bytes, pieces: list[_Piece]) -> None:
        if header == _ZERO:
            self._ended = True
            return
        if header[257:265] != b"ustar\x0000":
            raise Damaged("a member is not in the POSIX format warmstart writes")
        if _octal(header[148:156], "checksum") != sum(header[:148]) + 256 + sum(header[156:]):
            raise Damaged("a member's header is damaged (its checksum differs)")
        kind, size = header[156:157], _octal(header[124:136], "size")
        self._left, self._padding = size, -size % BLOCK
        if kind == b"x":
            if size > _PAX_LIMIT:
                raise Damaged(f"a pax header of {size} bytes is longer than warmstart writes")
            self._in_pax = bool(size)
            if not size:
                self._path = None
            return
        path, self._path = self._path, None
        prefix, base = header[345:500].split(b"\0", 1)[0], header[0:100].split(b"\0", 1)[0]
        name = _relative(path if path is not None else prefix + b"/" + base if prefix else base)
        if kind in _KINDS:
            raise Untrusted(f"it holds {_KINDS[kind]}, {name}, which no locked wheel installs")
        if kind == b"5" and not size:
            self._folder(name)
            return
        if kind != b"0":
            raise Damaged(f"it holds {name} as a member of type {kind!r}, which warmstart never writes")
        if name in self._names:
            raise Damaged(f"it holds {name} twice")
        self._names.add(name)
        self._folder(posixpath.dirname(name))
        mode = 0o755 if _octal(header[100:108], "mode") & 0o111 else 0o644
        try:
            fd = os.open(self.root / name, _CREATE, mode)
        except (FileExistsError, IsADirectoryError, NotADirectoryError):
            raise Damaged(f"it holds {name} both as a file and as a folder") from None
        self._file = (name, fd)
        pieces.append((name, b"", True, not size))
        if not size:
            self._done()

    def _folder(self, name: str) -> None:
        if name in self._folders:
            return
        self._folder(posixpath.dirname(name))
        if name in self._names:
            raise Damaged(f"it holds {name} both as a file and as a folder")
        os.mkdir(self.root / name, 0o755)  # each one (os.makedirs gives the parents the umask's mode)
        self._folders.add(name)


def _octal(field: bytes, what: str) -> int:
    match = _OCTAL.fullmatch(field)
    if not match:
        raise Damaged(f"a member's {what} is no number warmstart writes")
    return int(match.group(1), 8)


def _relative(raw: bytes) -> str:
    """A member's name as a path below the folder; refuse one that would leave it."""
    name = os.fsdecode(raw)
    normal = posixpath.normpath(name)
    if not name or name.startswith("/") or normal == "." or ".." in normal.split("/"):
        raise Damaged(f"it names {name!r}, which lies outside the environment")
    return normal


def _pax_path(data: bytes) -> bytes | None:
    """The name a pax header gives the next member (None: its own); a key warmstart never
    writes that could change a file's name or bytes (size, links, sparse maps) is Damaged."""
    path, at = None, 0
    while at < len(data):
        match = _PAX_RECORD.match(data, at)
        end = at + int(match.group(1)) if match else 0
        if not match or end > len(data) or data[end - 1:end] != b"\n":
            raise Damaged("a pax header is damaged")
        key, equals, value = data[match.end():end - 1].partition(b"=")
        if key == b"path" and equals:
            path = value
        elif key not in _PAX_IGNORED:
            raise Damaged(f"a pax header sets {key.decode(errors='replace')!r}, which warmstart never writes")
        at = end
    return path
