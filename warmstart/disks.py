"""The disks a run writes to, Drive's mount and the VM's own: what lies where (mounts, FUSE,
the kind of a path), whether there is room and permission to write, and what their errors mean,
said so that the user knows which disk and what to do.

Standard library only at import time (warmstart.sh uses it before any dependency is there).
"""

from __future__ import annotations

import errno
import os
import re
import shlex
import shutil
import stat
from pathlib import Path


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
            # only a message needs them (they import this module, through settings)
            from .invocation import in_cell, in_notebook

            chmod = in_cell(["chmod", "u+w", str(folder)], in_notebook())
            return (f"the Drive folder {folder} is this user's, but its mode ({stat.S_IMODE(info.st_mode):o}) does "
                    f"not let its owner write there: `{chmod}`, or pass --drive with a folder you may write")
        return (f"the Drive folder {folder} belongs to uid {owner}, and this user (uid {os.getuid()}) may not "
                f"write there: run as uid {owner}, or, where that folder is yours to give (the host's, for a "
                f"container), `sudo chown -R {os.getuid()} {quoted}`")
    return None


_OCTAL = re.compile(rb"\\([0-7]{3})")


def _mounts() -> list[tuple[str, str]]:
    """Each mount's point and file system type, from /proc/self/mountinfo (which looks at no mount
    itself: a stat of a Drive that stopped answering never returns); [] where there is none."""
    try:
        with open("/proc/self/mountinfo", "rb") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return []
    mounts = []
    for line in lines:
        fields = line.split()
        try:  # the type follows the optional fields' closing "-"
            kind = os.fsdecode(fields[fields.index(b"-", 5) + 1])
        except (ValueError, IndexError):
            continue
        # Field 5 is the mount point as the file system's bytes, a space and the like escaped as
        # octal (\040): unescaped there, then named as os.listdir names it.
        mounts.append((os.fsdecode(_OCTAL.sub(lambda m: bytes([int(m[1], 8) & 0xFF]), fields[4])), kind))
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


# Google Drive's own client, as Colab mounts it (FUSE type fuse.drive, which
# google.colab.drive.flush_and_unmount looks for), keeps what is written on the VM's disk and
# uploads it in the background: a large file can reach Drive many minutes after its write
# (colabtools#659, #2607), and what is not up when the VM goes is lost. flush_and_unmount pushes
# it all and returns once it is up; it runs in the notebook's kernel.
FLUSH_CELL = "from google.colab import drive; drive.flush_and_unmount()"


def uploads_later(path: str | os.PathLike[str]) -> bool:
    """Whether what is written at `path` reaches Drive only later: it lies on Google Drive's own
    client (FLUSH_CELL)."""
    holding = _mounts_holding(path)
    return bool(holding) and holding[-1][1] == "fuse.drive"


# When a Drive whose writes upload later (uploads_later) holds what was written
UPLOADED_WHEN = (f"once Google Drive has uploaded it from this VM's disk, which it does in the background: "
                 f"`{FLUSH_CELL}` in a cell waits for that (and unmounts Drive)")


def is_mount_point(path: Path) -> bool:
    """A mount point, bind mounts of a folder on the same file system included (which
    os.path.ismount cannot tell: it compares device numbers)."""
    return os.path.ismount(path) or os.path.abspath(path) in {point for point, _type in _mounts()}


def real(path: str | os.PathLike[str]) -> Path:
    """`path` absolute, with its links resolved as far as they lead (Path.resolve, which raised
    RuntimeError at a loop of links before Python 3.13: a bug's exit 70); at a loop it stops, and
    what then looks at the path finds nothing there, and says so."""
    return Path(os.path.realpath(path))


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


COLAB_MOUNT = "/content/drive"  # where Colab's notebook mounts Drive unless told otherwise


def remount(path: str | os.PathLike[str] | None) -> str:
    """How to remount the Drive that holds `path`, pasted as it stands into a notebook cell: the
    FUSE mount it lies on (Colab's Drive is one, wherever the user mounted it), else Colab's."""
    fuse = [point for point, kind in _mounts_holding(path or "/") if kind.startswith("fuse")]
    mount = fuse[-1] if fuse else COLAB_MOUNT
    return (f"remount it by running this in a notebook cell: from google.colab import drive; "
            f"drive.mount({mount!r}, force_remount=True)")


def stopped_answering(what: str, path: Path, down: str) -> str:
    """What the run says of `what` (the workdir, an asset) at `path` on a Drive that stopped
    answering (`down`: the store's why), with the way out."""
    return f"{what} {path} lies on Drive, and {down}: on Colab, {remount(path)} and run again"


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
    if where is not None and isinstance(named, str) and not within(named, where):
        return f"{named}: {exc.strerror or exc} [{exc.__class__.__name__} {exc.errno}]"
    said = DRIVE_ERRORS.get(exc.errno or 0, exc.strerror or str(exc))
    if exc.errno == errno.ENOTCONN:
        said += f": {remount(exc.filename or where)}"
    return f"{said} [{exc.__class__.__name__} {exc.errno}]"


def within(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    """`path` lies in `folder`, by their names made absolute (no look at the disk: Drive may hang)."""
    return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(folder))
