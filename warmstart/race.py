"""Online, a slow snapshot races the package index.

A snapshot on a slow Drive can take longer to read than uv takes to fetch and install the same
wheels from the index (Colab's index mirror is fast). So while a restore reads, the race watches
the time its read has left at the pace of its sources so far; once that is more than the index
would take for the whole (what uv took on the VM the snapshot was made on, as its index records;
else `index_seconds`: a time per wheel and the archive's bytes at a pace) by RACE_MARGIN,
uv installs the same pins from the index into a second staging folder of the prefix, and the
read waits meanwhile (at most HOLD_FOR times the index's time), leaving uv the CPUs. uv checks each
wheel against the lock's sha256, and its tree is checked against the lock's digest of the
wheels' files by the hashes their RECORDs state (manifest.Tree.check, `installed`). Whichever
tree is verified first is placed; the other is stopped and removed. When the sources keep up
(local disk, a Drive that reads faster than the index installs), a second install would only
slow the restore: the index is not asked.

A lane that fails (the index unreachable, a file the lock does not list, a damaged snapshot)
leaves the race to the other; when both fail, the wheels take over, as without a race.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from packaging.utils import NormalizedName

from . import installer, manifest
from .errors import WarmstartError
from .headstart import HOLD_FOR, Received, index_takes, staging_folder, worth_racing
from .patches import Patch
from .snapshot import Watch, verify_staged
from .target import TargetPython

# A source gets this long to its first block (connecting; a team store's own retries, which end
# in the warning that it is down) before its silence counts as the time its read has left.
FIRST_BLOCK_WAIT = 3.0
POLL = 0.05


def index_time(watch: Watch, wheels: int) -> float:
    """How long the index should take for the restore `watch` sees: what its snapshot's index
    records, else index_seconds."""
    return index_takes(watch.index_took, watch.size or 0, wheels)


class IndexLane:
    """uv installing `requirements` from the index into a staging folder, started once the restore it
    races (`watch`) has more reading left than the index would take; holds that restore's read
    while it runs, and `cancel()`s the restore when its own tree is verified first. uv that
    warmstart.sh began (`begun`, warmstart.headstart) on just these pins is the lane, at once."""

    def __init__(self, watch: Watch, target: TargetPython, digests: dict[NormalizedName, str | None],
                 patches: tuple[Patch, ...], requirements: Path, unset: Iterable[str],
                 begun: Received | None = None) -> None:
        self.watch, self.target, self.digests, self.patches = watch, target, digests, patches
        self.requirements, self.unset = requirements, tuple(unset)
        self.begun = begun if begun is not None and begun.installs(requirements, target.prefix) else None
        if begun is not None and self.begun is None:
            begun.stop()  # other pins: this lane's uv would install them
        self.folder = self.begun.folder if self.begun else staging_folder(target.prefix)
        # seconds into the restore when uv began (and its read was held); below 0 when warmstart.sh began it
        self.started: float | None = None
        self.expected = 0.0  # the seconds the index was expected to take, when uv began
        self.failed: str | None = None
        self.won = False
        self._stop = threading.Event()
        self._child: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _index_takes(self) -> float:
        return index_time(self.watch, len(self.digests))

    def _read_left(self) -> float:
        """The time the restore's read has left; before its first block, none until FIRST_BLOCK_WAIT,
        then the time since it began (nothing read after that long: a hung or very slow source)."""
        left = self.watch.seconds_left()
        if left is not None:
            return left
        waited = time.monotonic() - self.watch.began
        return waited if waited > FIRST_BLOCK_WAIT else 0.0

    def _due(self) -> bool:
        """Wait until the restore looks slow (True) or the race is off (False). Looked at as soon
        as the read is known (its pace may be too: prefetch.Ahead measured it), then every POLL."""
        while not self._stop.is_set():
            if worth_racing(self._read_left(), self._index_takes()):
                return True
            (self._stop if self.watch.watching.is_set() else self.watch.watching).wait(POLL)
        return False

    def _run(self) -> None:
        if self.begun:
            self.started = -self.begun.running_for()
        elif self._due():
            self.started = time.monotonic() - self.watch.began
        else:
            return
        self.expected = self._index_takes()
        self.watch.hold(HOLD_FOR * self.expected)
        try:
            if self.begun:
                if not self.begun.wait(self._stop):
                    return
            else:
                installer.install_from_index(self.target.executable, self.requirements, self.folder, self.unset,
                                             running=self._keep)
            if self._stop.is_set():
                return
            verify_installed(self.folder, self.target, self.digests, self.patches)
        except (WarmstartError, manifest.Untrusted, OSError) as exc:
            self.watch.resume()
            if not self._stop.is_set():
                self.failed = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return
        with self._lock:
            if not self._stop.is_set():  # else the restore finished first
                self.won = True
                self.watch.cancel()

    def _keep(self, child: subprocess.Popen) -> None:
        with self._lock:
            self._child = child
            if self._stop.is_set():
                child.kill()

    def finish(self) -> None:
        """The race is over: stop uv if it still runs; unless the index won (its tree is in
        `folder`), the folder is removed (warmstart.sh's uv, once it has ended, by warmstart.sh too)."""
        with self._lock:
            self._stop.set()
            if self._child is not None and self._child.poll() is None:
                self._child.kill()
        if self.begun and not self.won:
            self.begun.stop()
        self._thread.join()  # uv is stopped; a check under way ends soon
        if not self.won:
            shutil.rmtree(self.folder, ignore_errors=True)

    def wait(self) -> bool:
        """The restore failed: wait for the index, if it is racing. True when it won."""
        if self.started is None:
            self._stop.set()
        self._thread.join()
        return self.won


def verify_installed(folder: Path, target: TargetPython, digests: dict[NormalizedName, str | None],
                     patches: tuple[Patch, ...]) -> None:
    """uv's tree, moved to the target's layout and checked against the lock's digests by what its
    RECORDs state (uv checked the wheels themselves); console scripts and RECORDs written anew,
    as for a snapshot's."""
    (folder / ".lock").unlink(missing_ok=True)  # uv's own lock file of the prefix
    _to_target_layout(folder, target)
    verify_staged(folder, target, digests, patches, installed=True)


def _to_target_layout(folder: Path, target: TargetPython) -> None:
    """uv lays `--prefix` out as a virtual environment (lib/pythonX.Y/site-packages, bin); the
    target may install elsewhere below its prefix (Debian's local/lib/pythonX.Y/dist-packages)."""
    if not target.purelib or not Path(target.purelib).is_relative_to(target.prefix):
        raise manifest.Untrusted(f"{target.executable} installs outside its prefix {target.prefix}")
    wanted = Path(target.purelib).relative_to(target.prefix)
    laid = Path("lib") / f"python{target.version.major}.{target.version.minor}" / "site-packages"
    if wanted == laid or not (folder / laid).is_dir():
        return
    base = Path(os.path.normpath(wanted / "../../.."))
    moved = folder.with_name(f"{folder.name}-layout")  # beside it: cleared as a staging folder is
    os.rename(folder, moved)
    (folder / base).mkdir(parents=True)
    for entry in os.scandir(moved):
        os.rename(entry.path, folder / base / entry.name)
    os.rmdir(moved)
    os.rename(folder / base / laid, folder / wanted)
