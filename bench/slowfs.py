"""A FUSE passthrough that behaves like Google Drive seen from a Colab VM, for the benchmark.

    python bench/slowfs.py BACKING MOUNTPOINT OPEN_DELAY_MS MIB_PER_S [FAIL_WRITES_WITH]
                           [--hang-after BYTES | --hang-metadata | --hang-from-listing |
                            --hang-writes-in FOLDER | --hang-from FILE] [--until FILE]

Every open waits OPEN_DELAY_MS (Drive is slow per file), all reads and writes share a
throughput cap of MIB_PER_S, and symlinks are refused as Drive refuses them. With an errno
name as FAIL_WRITES_WITH (EIO, ENOSPC, ENOTCONN), every write fails with it, as a Drive over
quota or disconnected does; with --hang-after, a read past that offset of any file never
answers (until unmounted, or with --until until FILE exists: a path or a glob pattern), as a
Drive that stopped mid-file (or that a test holds back until something else has happened);
with --hang-metadata no stat below the mount point and no listing answers, as a Drive that
stopped before the run; with --hang-from-listing the same from the first listing on, as a
Drive that stopped during a run, after its first look; with --hang-writes-in no write to a file
below FOLDER (a path below the mount point) answers, as a Drive that stopped in the middle of
putting files there; with --hang-from nothing below the mount point answers once FILE exists
(a path or a glob pattern, outside the mount), as a Drive that stopped in the middle of a run
(while it installed). The tests use them all. Needs
/dev/fuse, libfuse2 (Debian: apt install libfuse2) and `pip install fusepy`; runs until
unmounted.
"""

from __future__ import annotations

import argparse
import errno
import glob
import os
import threading
import time

from fuse import FUSE, FuseOSError, Operations


class Throttle:
    """One shared budget of bytes per second for every read and write."""

    def __init__(self, bytes_per_second: float) -> None:
        self.rate, self.lock, self.free_at = bytes_per_second, threading.Lock(), time.monotonic()

    def spend(self, size: int) -> None:
        with self.lock:
            now = time.monotonic()
            self.free_at = max(self.free_at, now) + size / self.rate
            wait = self.free_at - now
        time.sleep(wait)


class SlowDrive(Operations):
    def __init__(self, backing: str, open_delay: float, throttle: Throttle, fail_writes: int = 0,
                 hang_after: int | None = None, until: str | None = None, hang_metadata: bool = False,
                 hang_from_listing: bool = False, hang_writes_in: str | None = None,
                 hang_from: str | None = None) -> None:
        self.backing, self.open_delay, self.throttle = backing, open_delay, throttle
        self.fail_writes, self.hang_after, self.until = fail_writes, hang_after, until
        self.hang_metadata, self.hang_from_listing = hang_metadata, hang_from_listing
        self.hang_writes_in = hang_writes_in and "/" + hang_writes_in.strip("/") + "/"
        self.hang_from, self.stopped = hang_from, False
        self.mountpoint = ""

    def __call__(self, op, path, *args):
        if self.hang_from and path != "/" and (self.stopped or glob.glob(self.hang_from)):
            self.stopped = True
            self._hang()
        return super().__call__(op, path, *args)

    def _path(self, path: str) -> str:
        return os.path.join(self.backing, path.lstrip("/"))

    def _hang(self) -> None:
        """Never answer (until unmounted: then fail, or with --until until FILE exists)."""
        while not (self.until and glob.glob(self.until)):
            if not self._mounted():
                raise FuseOSError(errno.EIO)
            time.sleep(0.05)

    def _mounted(self) -> bool:
        """From the mount table: a look at the mount point would ask this layer, whose every
        thread may be the one hanging."""
        with open("/proc/self/mountinfo") as table:
            return any(line.split()[4] == self.mountpoint for line in table)

    def getattr(self, path, fh=None):
        if self.hang_metadata and path != "/":
            self._hang()
        st = os.lstat(self._path(path))
        return {key: getattr(st, key) for key in ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime",
                                                  "st_nlink", "st_size", "st_uid")}

    def readdir(self, path, fh):
        self.hang_metadata = self.hang_metadata or self.hang_from_listing
        if self.hang_metadata:
            self._hang()
        return [".", "..", *os.listdir(self._path(path))]

    def open(self, path, flags):
        time.sleep(self.open_delay)
        return os.open(self._path(path), flags)

    def create(self, path, mode, fi=None):
        time.sleep(self.open_delay)
        return os.open(self._path(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)

    def read(self, path, size, offset, fh):
        if self.hang_after is not None and offset + size > self.hang_after:
            self._hang()
        data = os.pread(fh, size, offset)
        self.throttle.spend(len(data))
        return data

    def write(self, path, data, offset, fh):
        if self.fail_writes:
            raise FuseOSError(self.fail_writes)
        if self.hang_writes_in and path.startswith(self.hang_writes_in):
            self._hang()
        self.throttle.spend(len(data))
        return os.pwrite(fh, data, offset)

    def truncate(self, path, length, fh=None):
        os.truncate(self._path(path), length)

    def flush(self, path, fh):
        return 0

    def fsync(self, path, datasync, fh):
        os.fsync(fh)

    def release(self, path, fh):
        os.close(fh)

    def rename(self, old, new):
        os.replace(self._path(old), self._path(new))

    def unlink(self, path):
        os.unlink(self._path(path))

    def mkdir(self, path, mode):
        os.mkdir(self._path(path), mode)

    def rmdir(self, path):
        os.rmdir(self._path(path))

    def chmod(self, path, mode):
        os.chmod(self._path(path), mode)

    def utimens(self, path, times=None):
        os.utime(self._path(path), times)

    def statfs(self, path):
        st = os.statvfs(self._path(path))
        return {key: getattr(st, key) for key in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail",
                                                  "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax")}

    def symlink(self, target, source):
        raise FuseOSError(errno.EOPNOTSUPP)  # as Drive: "Operation not supported"

    def link(self, target, source):
        raise FuseOSError(errno.EOPNOTSUPP)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("backing")
    parser.add_argument("mountpoint")
    parser.add_argument("delay_ms", type=float)
    parser.add_argument("mib_per_s", type=float)
    parser.add_argument("fail_writes_with", nargs="?", choices=sorted(errno.errorcode.values()))
    parser.add_argument("--hang-after", type=int, metavar="BYTES")
    parser.add_argument("--hang-metadata", action="store_true",
                        help="no stat (but of the mount point) or listing ever answers")
    parser.add_argument("--hang-from-listing", action="store_true",
                        help="the same as --hang-metadata from the first listing on")
    parser.add_argument("--hang-writes-in", metavar="FOLDER",
                        help="no write to a file below FOLDER (a path below the mount point) ever answers")
    parser.add_argument("--hang-from", metavar="FILE",
                        help="nothing below the mount point answers once FILE exists (a path or a glob pattern)")
    parser.add_argument("--until", metavar="FILE",
                        help="with a hang: answer once FILE exists (a path or a glob pattern)")
    parser.add_argument("--subtype", metavar="NAME",
                        help="mount as file system type fuse.NAME (Colab's Drive client is fuse.drive)")
    args = parser.parse_args()
    drive = SlowDrive(os.path.abspath(args.backing), args.delay_ms / 1000, Throttle(args.mib_per_s * 2**20),
                      getattr(errno, args.fail_writes_with) if args.fail_writes_with else 0, args.hang_after,
                      args.until and os.path.abspath(args.until), args.hang_metadata, args.hang_from_listing,
                      args.hang_writes_in, args.hang_from and os.path.abspath(args.hang_from))
    drive.mountpoint = os.path.abspath(args.mountpoint)
    typed = {"subtype": args.subtype} if args.subtype else {}
    FUSE(drive, args.mountpoint, foreground=True, nothreads=False, **typed)


if __name__ == "__main__":
    main()
