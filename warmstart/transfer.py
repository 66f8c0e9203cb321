"""Moving bytes: off Drive while hashing, onto Drive atomically, and down from the web.

Every copy is a single pass with a progress bar (bytes and rate, on stderr) that is silent
when the run reports JSON or stderr is not a terminal.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from . import faults
from .errors import BadInput, WarmstartError

CHUNK = 1 << 20
SHOW_PROGRESS = True  # turned off for --json runs


@contextmanager
def progress(total: int | None, desc: str) -> Iterator[Any]:
    try:
        from tqdm import tqdm  # imported on first use: a no-op run never draws a bar
    except ImportError:  # warmstart.sh, before warmstart's own tools are in place
        yield _NoBar()
        return
    with tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=False,
              disable=None if SHOW_PROGRESS else True, dynamic_ncols=True) as bar:
        yield bar


class _NoBar:
    def update(self, n: int) -> None:
        pass


def regular_file(path: Path) -> bool:
    """A regular file itself, not a link to one: the only thing warmstart reads off Drive (a named
    pipe would hang a run, a link to a device fill the disk)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except (OSError, ValueError):
        return False


def copy_hashed(src: Path, dest: Path) -> tuple[str, int]:
    """Copy src to dest, returning the sha256 and size of what was read: one pass over Drive."""
    digest = hashlib.sha256()
    size = 0
    with open(src, "rb") as fin, open(dest, "wb") as fout, \
            progress(os.fstat(fin.fileno()).st_size, f"from Drive {src.name[:30]}") as bar:
        while chunk := fin.read(CHUNK):
            digest.update(chunk)
            fout.write(chunk)
            size += len(chunk)
            bar.update(len(chunk))
    return digest.hexdigest(), size


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


STALE_SECONDS = 3600  # a temporary file this old belongs to a killed run, not a slow one

DRIVE_ERRORS = {
    errno.ENOSPC: "Drive is full (on Colab: the Google Drive storage quota is used up)",
    errno.EDQUOT: "Drive is over quota (on Colab: the Google Drive storage quota is used up)",
    errno.EIO: "Drive returned an I/O error (on Colab this often means the storage quota is exceeded)",
    errno.ENOTCONN: "Drive was disconnected (Transport endpoint is not connected): remount it "
                    "with drive.mount('/content/drive', force_remount=True)",
}


def explain(exc: OSError) -> str:
    """What a failed Drive operation means, in a line."""
    return f"{DRIVE_ERRORS.get(exc.errno, exc.strerror or str(exc))} [{exc.__class__.__name__} {exc.errno}]"


def set_aside(path: Path) -> Path:
    """Rename a damaged file out of the way (kept for inspection, never deleted, never used)."""
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}")
    os.replace(path, aside)
    return aside


def remove_stale_parts(folder: Path, now: float | None = None) -> list[Path]:
    """Delete temporary files (`.NAME.*.part`) that killed runs left behind in folder."""
    now = time.time() if now is None else now
    removed = []
    for entry in os.scandir(folder) if folder.is_dir() else ():
        if entry.name.startswith(".") and entry.name.endswith(".part"):
            try:
                if now - entry.stat().st_mtime > STALE_SECONDS:
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
            except FileNotFoundError:
                pass  # another run cleaned it first
    return removed


def atomic_copy(src: Path, dest: Path) -> int:
    """Place a copy of src at dest: written under a temporary name in the same folder, flushed
    to disk, then renamed, so dest is either absent or whole (also on a network file system)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout, \
                progress(os.fstat(fin.fileno()).st_size, f"to Drive {dest.name[:30]}") as bar:
            while chunk := fin.read(CHUNK):
                fout.write(chunk)
                bar.update(len(chunk))
            fout.flush()
            os.fsync(fout.fileno())
        faults.point("cache-write")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest.stat().st_size


def atomic_write_text(dest: Path, text: str) -> None:
    """Write text to dest the same way: a unique temporary name beside it, flushed, renamed."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")
    try:
        with open(tmp, "x") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


# The userinfo ends at the last "@" before the host: a password may hold "@" itself.
_CREDENTIALS = re.compile(r"(?<=://)[^/\s?#]+@")
_LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


def redact(text: str) -> str:
    """Hide user:password@ in URLs before anything is printed or reported."""
    return _CREDENTIALS.sub("***@", text)


def require_https(url: str, what: str) -> None:
    """Plain http only to this machine, or when the user asks for it (WARMSTART_ALLOW_HTTP=1)."""
    if not url.startswith("http://") or os.environ.get("WARMSTART_ALLOW_HTTP") == "1":
        return
    host = urlsplit(url).hostname or ""
    if host in _LOOPBACK or f"[{host}]" in _LOOPBACK:
        return
    raise BadInput(f"{what} {redact(url)} is plain http, which anyone on the way can change; "
                   "use https, or set WARMSTART_ALLOW_HTTP=1 if you mean it")


def zstd_open(file: Path | BinaryIO, mode: str) -> BinaryIO:
    """A zstd stream over a file: `zstandard` (multi-threaded) where installed, else the
    standard library's compression.zstd (Python 3.14+)."""
    try:
        import zstandard
    except ImportError:
        try:
            from compression import zstd
        except ImportError:
            raise WarmstartError("zstd archives need the `zstandard` package: pip install zstandard") from None
        return zstd.open(file, mode, level=3 if "w" in mode else None)
    cctx = zstandard.ZstdCompressor(level=3, threads=-1) if "w" in mode else None
    return zstandard.open(file, mode, cctx=cctx)


class DownloadFailed(WarmstartError):
    pass


def download(url: str, part: Path, *, attempts: int = 4, backoff: float = 0.5,
             timeout: tuple[float, float] = (10, 60)) -> Path:
    """Fetch url into `part`, resuming what an earlier attempt (or killed run) left there.

    Retries connection errors and 5xx answers with exponential back-off; the caller verifies
    the checksum before the file is used anywhere."""
    import requests  # imported on first use: most runs download nothing

    require_https(url, "asset URL")
    part.parent.mkdir(parents=True, exist_ok=True)
    last_error = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with requests.get(url, headers=headers, stream=True, timeout=timeout) as response:
                if response.status_code == 416:  # nothing left to fetch: the part is complete
                    return part
                if response.status_code >= 500:
                    last_error = f"HTTP {response.status_code}"
                    continue
                response.raise_for_status()
                resumed = response.status_code == 206
                total = int(response.headers.get("Content-Length", 0)) + (have if resumed else 0)
                with open(part, "ab" if resumed else "wb") as fh, \
                        progress(total or None, f"download {url.rsplit('/', 1)[-1][:30]}") as bar:
                    bar.update(have if resumed else 0)
                    # Small reads: what arrived before a dropped connection is kept for resuming.
                    for chunk in response.iter_content(64 * 1024):
                        fh.write(chunk)
                        bar.update(len(chunk))
                if total and part.stat().st_size < total:
                    last_error = f"connection closed after {part.stat().st_size} of {total} bytes"
                    continue
                return part
        except requests.HTTPError as exc:
            raise DownloadFailed(f"cannot download {url}: {exc}") from None
        except (requests.ConnectionError, requests.Timeout,
                requests.exceptions.ChunkedEncodingError) as exc:
            last_error = type(exc).__name__
        except requests.RequestException as exc:  # a redirect loop, an address it cannot read
            raise DownloadFailed(f"cannot download {url}: {type(exc).__name__}; check the URL") from None
    raise DownloadFailed(f"cannot download {url} after {attempts} attempts ({last_error})")
