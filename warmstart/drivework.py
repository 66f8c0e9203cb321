"""Drive writes off the critical path: the cache fill and the snapshot, after the environment is
usable.

Writing hundreds of megabytes to Drive costs more than installing them, and the user needs the
environment, not the cache. So a run collects what Drive should get (the wheels and assets it
downloaded, the snapshot to pack) in a job folder on local disk, `~/.cache/warmstart/drivework/
<prefix hash>/<run>/`, and hands it to a detached worker (`python -m warmstart.drivework FOLDER`) as it
returns. The worker puts each file through the Drive store (atomic: a wiped VM never sees half a
file), packs the snapshot, and removes the folder; a lock on the folder tells that a worker is at
it. What a killed worker left is finished by the next run, or by `bootstrap --wait`, which
also does it all before returning: each by a worker it starts and waits for (finish_watched), since
a write to a Drive that stopped answering never returns, and a process with a thread caught in one
cannot end. The worker bounds its own writes: once it wrote nothing for twice
WARMSTART_DRIVE_TIMEOUT, it lets the job go and ends. `status` shows what is still pending.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.tags import parse_tag
from packaging.utils import NormalizedName, canonicalize_name, parse_wheel_filename
from packaging.version import Version

from . import background, flock
from . import snapshot as snapshots
from . import target as target_python
from .background import NEUTRAL_CWD
from .console import Bars, counted
from .disks import explain, remount
from .download import Downloader, DownloadFailed, IndexUnavailable
from .errors import PreconditionUnmet, WarmstartError, redact
from .home import jobs as jobs_of
from .lock import Pin
from .pipconfig import IndexSettings, anchored
from .settings import LOCK_TIMEOUT, WORKER_TEAM, drive_timeout, lock_timeout
from .store import STALE_SECONDS, CacheStats, DriveStore, Store, went_down
from .tiered import TieredStore
from .transfer import is_sha256, write_private

JOB = "job.json"  # written last: a folder without it is a job still being assembled
FILES = "files"  # files/<kind>/<name>: what goes to Drive, each removed once it is there
FAILED = "failed.txt"  # why the last worker stopped short; the next run tries again
PID = "worker.pid"  # the worker started on the job (see _worker_alive)


def handed_off(prefix: Path) -> list[Path]:
    """A target's jobs that were handed off (a folder without its job file is being assembled)."""
    base = jobs_of(prefix)
    if not base.is_dir():
        return []
    return sorted(f for f in base.iterdir() if not f.name.startswith(".") and (f / JOB).is_file())  # not .NAME.gone


def _remove_job(folder: Path) -> None:
    """A finished job's folder goes, renamed away first (`.NAME.gone`) in one step: a run that
    starts a worker on it meanwhile (finish_watched, once the worker it waited for let the job's
    pid go) then finds no folder, where rmtree, past that name already, would leave the worker's
    new log in it, and the folder with it."""
    gone = folder.with_name(f".{folder.name}.gone")
    try:
        os.rename(folder, gone)
    except OSError:
        gone = folder
    shutil.rmtree(gone, ignore_errors=True)


def _read_job(folder: Path) -> dict[str, Any] | None:
    """A handed-off job's fields; None when its file is gone (the job finished and was removed
    meanwhile) or damaged (nothing can finish it: it is passed over)."""
    try:
        job = json.loads((folder / JOB).read_text())
    except (OSError, ValueError):
        return None
    return job if isinstance(job, dict) else None


def _save_job(folder: Path, job: Mapping[str, Any]) -> None:
    write_private(folder / JOB, json.dumps(job))


class JobBusy(PreconditionUnmet):
    """Another worker held the job's lock past the time a finisher waits (exit 3)."""


@dataclass(frozen=True)
class _Held:
    """The job's lock, held through `fd` (closing it lets the lock go)."""

    fd: int


@contextmanager
def _job_held(folder: Path, *, timeout: float | None = None) -> Iterator[_Held | bool | None]:
    """The job's lock: a flock on its folder itself. A lock file inside would not do: taking it
    just as the worker removed the folder makes the folder again (filelock creates a lock file's
    missing parents), and a lone lock file would stay behind. Yields _Held once held, False when
    another holds it past `timeout` (flock.take's: None waits as long as it takes, 0 not at all),
    None when the job is done (its folder gone, or going)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield None
        return
    try:
        if not flock.take(fd, timeout):
            yield False
        else:
            done = not (folder / JOB).is_file()  # finished by another while this waited
            yield None if done else _Held(fd)
    finally:
        os.close(fd)  # releases it


@dataclass
class DriveWork:
    """The Drive writes one run leaves for after it: assembled by the executor, then handed off."""

    folder: Path
    drive: Path
    snapshot: dict[str, Any] | None = None  # stem, facts, pins [[name, version]], python
    download: list[list[Any]] | None = None  # [name, version, [sha256...]]: wheels to fetch for the cache
    python: str = ""  # the target's interpreter
    tags: list[str] | None = None  # the wheel tags it takes, best first (for `download`: the
    # worker must not need the target, which may be wiped and made again before it is done)
    team_usage: list[str] | None = None  # the team store's usage record, when the run held it back
    from_team: list[list[Any]] | None = None  # [file, [sha256...]]: wheels only the team cache holds
    team_share: dict[str, list[str]] | None = None  # store key -> its sha256s: what the run used, for the
    # team cache to get what it lacks of it from Drive (a team cache set up after Drive was filled)

    def area(self, kind: str) -> Path:
        """Where the executor puts files of a kind that Drive should get (wheels: download here)."""
        path = self.folder / FILES / kind
        path.mkdir(parents=True, exist_ok=True)
        return path

    def add(self, kind: str, local: Path) -> None:
        """Queue a local file (moved into the job) for the store's `kind` folder."""
        dest = self.area(kind) / local.name
        if local != dest:
            shutil.move(local, dest)

    def keys(self) -> list[str]:
        """The store keys (`wheels/x.whl`) of the files queued."""
        return [f"{path.parent.name}/{path.name}" for path in sorted(self.folder.glob(f"{FILES}/*/*"))]

    @property
    def empty(self) -> bool:
        return not (self._for_drive or self.snapshot or self.team_usage or self.team_share)

    @property
    def _for_drive(self) -> bool:
        return _fills_drive(vars(self), self.folder)

    def writes(self) -> str:
        """What the job writes, said as the run's status line begins: "the Drive cache and
        snapshot are", "the team cache's usage record is"."""
        drive = self._for_drive
        team = ("the team cache's copy" if self.team_share else
                "the team cache's usage record" if self.team_usage else None)
        named = [what for what in ("the Drive cache" if drive else None,
                                   ("the snapshot" if not drive else "snapshot") if self.snapshot else None,
                                   team) if what]
        if len(named) == 1:
            return f"{named[0]} is"
        return f"{', '.join(named[:-1])} and {named[-1]} are"

    def discard(self) -> None:
        """Nothing for Drive: the job folder goes."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def drop_drive_writes(self) -> None:
        """Nothing is to be written to Drive (it is mounted read-only): what the job would put
        there goes, what it gives the team cache stays (Drive's files are read for that)."""
        shutil.rmtree(self.folder / FILES, ignore_errors=True)
        self.snapshot = self.download = self.from_team = None

    def write_job(self, store: TieredStore) -> None:
        """The job file, written last: from now on a worker or a later run may finish the job."""
        files = (sum(1 for _ in self.folder.glob(f"{FILES}/*/*")) + len(self.download or ())
                 + len(self.from_team or ()))
        _save_job(self.folder, {
            "drive": str(self.drive), "snapshot": self.snapshot, "download": self.download,
            "from_team": self.from_team, "python": self.python, "tags": self.tags, "files": files,
            "created": time.time(), "team": store.team_spec(), "team_usage": self.team_usage,
            "team_share": self.team_share})

    def keep(self, store: TieredStore, why: str) -> None:
        """Write the job without a worker on it: the next run starts one (Drive stopped answering
        in this one, and a worker would only wait on it)."""
        self.write_job(store)
        write_private(self.folder / FAILED, why)

    def hand_off(self, *, wait: bool, store: TieredStore) -> str:
        """Write the job and start a worker on it, or (wait) do it here; returns what was done."""
        where = "Drive" if self._for_drive or self.snapshot else "the team cache"
        self.write_job(store)
        if wait:
            finish_watched(self.folder, store)
            return f"written to {where}"
        spawn(self.folder, store.team_url())
        return f"being written to {where} in the background"


# The worker imports warmstart as this process does (its sys.path, given as an argument: in the
# environment it would reach the target interpreter the worker runs, too), writing no bytecode
# (from a checkout on Drive, that of warmstart's __init__ would go beside it).
_WORKER = ("import json, sys; sys.path[:0] = json.loads(sys.argv.pop(1)); "
           "from warmstart.drivework import main; sys.exit(main(sys.argv[1:]))")


TEAM_URL = WORKER_TEAM.name  # the team cache's URL, credentials and all, for the worker only


def spawn(folder: Path, team: str | None = None) -> None:
    """Start the worker on a job, detached: its own session outlives this command (and a
    notebook cell's interrupt). `team`: the team cache's URL as the run has it. Under the job's
    lock, so that the worker cannot finish and remove the folder before its pid is written there;
    none when another holds it (a worker at it already) or the job is done."""
    with _job_held(folder, timeout=0) as held:
        if not held:
            return
        worker = _start_worker(folder, team)
        write_private(folder / PID, str(worker.pid))
    with _left_running():
        del worker


def _start_worker(folder: Path, team: str | None, *flags: str, answer: int | None = None) -> subprocess.Popen[bytes]:
    """The worker on the job in `folder`, in a session of its own (it outlives this command, and a
    notebook cell's interrupt), its output appended to the job's log; `answer`: a descriptor it
    is given for what it says back (main's --answer)."""
    env = dict(anchored(), PYTHONDONTWRITEBYTECODE="1", **({TEAM_URL: team} if team else {}))
    given = ["--answer", str(answer)] if answer is not None else []
    fd = os.open(folder / "worker.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with open(fd, "ab") as out:
        return subprocess.Popen([sys.executable, "-c", _WORKER, json.dumps([p for p in sys.path if p]), *flags,
                                 *given, str(folder)], stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True, env=env, cwd=NEUTRAL_CWD,
                                pass_fds=() if answer is None else (answer,))


@contextmanager
def _left_running() -> Iterator[None]:
    """Where the last reference to a worker's Popen goes while it runs on, on purpose: subprocess
    reaps it later, unwarned."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        yield


def finish_watched(folder: Path, store: TieredStore, *, offline: bool = False, timeout: float | None = None) -> None:
    """finish(), by a worker this run starts and waits for (a progress bar counts what it
    writes): a write to a Drive or team folder that stopped answering never returns, and a run
    with a thread caught in one could not end. The worker bounds its own writes (finish's
    `stalled`) and says back its warnings, what it read and wrote, and what stopped it, raised
    here as finish raises it. An interrupted run leaves it writing, as a detached one."""
    flags = [*(["--offline"] if offline else []), *(["--timeout", repr(timeout)] if timeout is not None else []),
             *_team_as_the_run_left_it(store)]
    with tempfile.TemporaryFile() as answer:
        # No pid file, which spawn writes under the job's lock: written here, it would make again
        # the folder of a job another finished meanwhile. The worker's lock says it is at it.
        try:
            worker = _start_worker(folder, store.team_url(), *flags, answer=answer.fileno())
        except FileNotFoundError:
            if folder.exists():
                raise
            return  # finished meanwhile by the worker this run waited for (its log has no folder)
        try:
            said = _answer_of(worker, answer.fileno(), store.bars, _to_drive(folder))
        finally:
            with _left_running():  # one that stalled ends when its mount answers
                del worker
    store.warnings.extend(map(str, said.get("warnings") or ()))
    _add(store.here.stats, said.get("drive") or {})
    if store.team is not None:
        _add(store.team.stats, said.get("team") or {})
        if isinstance(down := said.get("team_down"), list) and len(down) == 2:
            # One warning for the run: a read of the team store that the restore left under way may
            # fail before this (the run said so, the worker too) or after (now quiet).
            went_down(store.team, *map(str, down))
    if error := said.get("error"):
        kind = {"JobBusy": JobBusy, "IndexUnavailable": IndexUnavailable,
                "DownloadFailed": DownloadFailed}.get(str(error.get("kind")))
        raise kind(str(error["said"])) if kind else OSError(str(error["said"]))


def _team_as_the_run_left_it(store: TieredStore) -> list[str]:
    """The worker's --team: a team store that stopped answering in this run (or never opened) is
    not asked again, one that refused a write gets none: each said once already."""
    if store.held is not None:
        return []
    if store.team is None or store.team.down:
        return ["--team", "down"]
    return ["--team", "read-only"] if store.team.refused else []


def _to_drive(folder: Path) -> str:
    """What the bar of a job's writes says: the files it puts on Drive (or the team cache)."""
    files = (_read_job(folder) or {}).get("files")
    return f"to Drive ({counted(files, 'file')})" if isinstance(files, int) and files > 0 else "to Drive"


def _answer_of(worker: subprocess.Popen[bytes], answer: int, bars: Bars, desc: str) -> dict[str, Any]:
    """What the worker said back (main's --answer), once it did: a worker that stalled says so
    before it ends, and its end may wait for its mount. One that ended without saying (killed)
    is said by how it ended. `desc`: what its bar of the bytes the worker writes says."""
    shown = 0
    with bars.bar(None, desc) as bar:
        while True:
            ended = worker.poll() is not None
            if (said := _read_answer(answer)) is not None:
                return said
            if ended:
                code = worker.returncode
                why = (f"the Drive worker was killed (signal {-code})" if code < 0 else
                       f"the Drive worker ended with exit code {code}")
                return {"error": {"kind": "OSError", "said": why}}
            if (now := written(worker.pid)) is not None:
                bar.update(max(0, now - shown))
                shown = max(shown, now)
            time.sleep(0.05)


def _read_answer(answer: int, most: int = 1 << 20) -> dict[str, Any] | None:
    """The worker's answer, once it wrote all of it (a line of JSON)."""
    data = os.pread(answer, most, 0)
    if not data.endswith(b"\n"):
        return None
    try:
        said = json.loads(data)
    except ValueError:
        return None
    return said if isinstance(said, dict) else None


def _add(stats: CacheStats, moved: Mapping[str, Any]) -> None:
    """What the worker read and wrote, counted in this run's report."""
    for name in ("hits", "misses", "bytes_read", "bytes_written"):
        setattr(stats, name, getattr(stats, name) + int(moved.get(name) or 0))


def written(pid: int | str = "self") -> int | None:
    """The bytes a process (all its threads) has written to any file, pipe or socket (`wchar` of
    /proc/PID/io: what it read would count this look too); None where it cannot be read."""
    try:
        counts = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/io").read_text().splitlines())
        return int(counts["wchar"])
    except (OSError, ValueError, KeyError):
        return None


def _worker_alive(folder: Path) -> bool:
    """The job's worker process is still there (started, maybe not yet at work): its pid, and a
    command line naming this job (a pid the system gave to another process since does not)."""
    try:
        pid = int((folder / PID).read_text())
        return str(folder).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False


def _wait_for_worker(folder: Path, say: Any, timeout: float = 600) -> None:
    """An offline run needs what the worker fetches from the index: let it finish first."""
    if not _worker_alive(folder):
        return
    say("waiting for the last run's Drive worker, which fetches the wheels for the cache from the index")
    deadline = time.monotonic() + timeout
    while _worker_alive(folder) and time.monotonic() < deadline:
        time.sleep(0.1)


def start(prefix: Path, drive: Path, python: Path) -> DriveWork:
    """A new job for this run; folders a killed run left while assembling one, or removing one
    (.NAME.gone: _remove_job), are removed."""
    base = jobs_of(prefix)
    for old in base.iterdir() if base.is_dir() else ():
        left = old.name.startswith(".") or not (old / JOB).is_file()
        if left and time.time() - old.stat().st_mtime > STALE_SECONDS:
            shutil.rmtree(old, ignore_errors=True)
    folder = base / f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True, mode=0o700)
    return DriveWork(folder, drive, python=str(python))


@dataclass(frozen=True)
class Pending:
    files_left: int
    files_total: int
    snapshots: frozenset[str]  # the stems of the snapshots to pack
    running: bool
    failed: str | None
    team_usage: bool = False  # the team store's usage record (see DriveWork.team_usage)
    team_share: bool = False  # the team store's copies of what Drive holds (DriveWork.team_share)

    @property
    def snapshot(self) -> bool:
        return bool(self.snapshots)

    def describe(self) -> str:
        parts = []
        if self.files_left:
            written = self.files_total - self.files_left
            parts.append(f"cache filling: {written} of {counted(self.files_total, 'file')} on Drive")
        if self.snapshot:
            parts.append("snapshot pending")
        if self.team_usage:
            parts.append("the team cache's usage record pending")
        if self.team_share:
            parts.append("the team cache's copy of what Drive holds pending")
        state = "being written now" if self.running else "to be finished by the next run, or by one with --wait"
        if self.failed:
            state = f"stopped ({self.failed}); the next run tries again"
        return "; ".join(parts) + f" ({state})"


def pending(prefix: Path, jobs: list[Path] | None = None) -> Pending | None:
    """What a target's earlier runs (or their `jobs`) still have to write to Drive; None when nothing."""
    left = total = 0
    running = usage = share = False
    snapshots: set[str] = set()
    failed = None
    for folder in handed_off(prefix) if jobs is None else jobs:
        if (job := _read_job(folder)) is None:
            continue
        try:
            queued: list[Any] = [p for p in folder.glob(f"{FILES}/*/*") if not p.name.endswith(".part")]
        except OSError:
            continue  # finished and removed meanwhile
        if job.get("download"):  # the wheels are still to come from the index: count them as such
            queued = [p for p in queued if p.parent.name != "wheels"] + job["download"]
        queued += job.get("from_team") or []  # ... or from the team cache
        left += len(queued)
        total += max(int(job.get("files") or 0), len(queued))
        if spec := job.get("snapshot"):
            snapshots.add(str(spec.get("stem", "")) if isinstance(spec, dict) else "")
        usage = usage or bool(job.get("team_usage"))  # alone, a job that an offline run or a killed
        # worker left would linger, never finished, if it did not count
        share = share or bool(job.get("team_share"))
        running = running or _running(folder) or _worker_alive(folder)  # at work, or about to be
        if (folder / FAILED).is_file():
            failed = (folder / FAILED).read_text().strip()
    if not (left or snapshots or usage or share):
        return None
    return Pending(left, total, frozenset(snapshots), running, failed, usage, share)


def queued_wheels(prefix: Path, drive: Path) -> frozenset[tuple[NormalizedName, Version]]:
    """The wheels (name, version) a target's handed-off jobs will put on `drive`: fetched and
    waiting, still to come from the index, or to be copied from the team cache. A run while
    their worker writes (or before the next run restarts a killed one) need not fetch them too."""
    queued = set()
    for folder in handed_off(prefix):
        if (job := _read_job(folder)) is None or job.get("drive") != str(drive):
            continue
        try:
            files = [path.name for path in (folder / FILES / "wheels").glob("*.whl")]  # not a .part
            for name, version, *_hashes in job.get("download") or []:
                queued.add((canonicalize_name(str(name)), Version(str(version))))
            for file in [*files, *(entry[0] for entry in job.get("from_team") or [])]:
                name, version, *_tags = parse_wheel_filename(str(file))
                queued.add((name, version))
        except (OSError, ValueError, TypeError, IndexError):  # packaging's errors are ValueErrors
            continue  # finished and removed meanwhile, or damaged: passed over
    return frozenset(queued)


def _running(folder: Path) -> bool:
    with _job_held(folder, timeout=0) as held:
        return held is False


def settle(prefix: Path, store: TieredStore, say: Any, *, offline: bool = False) -> bool:
    """Before a run changes the target (or with --wait): let a worker still at it finish, or
    finish what a killed one left (a snapshot must be of the environment it describes). True
    when there was something: the Drive cache changed since the run looked."""
    # A job left with the team cache's part alone (its usage record, its copy of Drive's files)
    # touches neither Drive nor a snapshot: its worker goes on (resume), the run does not wait.
    jobs = [folder for folder in handed_off(prefix) if _writes_drive(folder)]
    state = pending(prefix, jobs)
    if state is None or store.here.down:  # down: they wait for a Drive that answers (resume)
        return False
    say(f"Drive writes of the last run: {state.describe()}; finishing them first")
    for folder in jobs:
        if offline:
            _wait_for_worker(folder, say)
        try:
            finish_watched(folder, store, offline=offline, timeout=lock_timeout())
        except (OSError, IndexUnavailable, DownloadFailed) as exc:
            # Drive full or gone, or the index out of reach for the wheels the job fetches for
            # Drive: the job stays for a later run, and this one goes on
            if not (folder / JOB).is_file():
                continue  # finished meanwhile by the worker
            said = explain(exc, store.here.drive) if isinstance(exc, OSError) else str(exc)
            say(f"warning: the Drive writes of the last run stopped again: {said}")
            write_private(folder / FAILED, said)
    return True


def _fills_drive(job: Mapping[str, Any], folder: Path) -> bool:
    """Whether a job (its file's fields, or a DriveWork's) puts files in Drive's cache: wheels to
    fetch or to copy from the team cache, or files queued in its folder."""
    return bool(job.get("download") or job.get("from_team") or any(folder.glob(f"{FILES}/*/*")))


def _writes_drive(folder: Path) -> bool:
    """Whether a handed-off job has Drive still to write: files (_fills_drive) or a snapshot."""
    job = _read_job(folder)
    return job is not None and (_fills_drive(job, folder) or bool(job.get("snapshot")))


def resume(prefix: Path, say: Any, team: str | None = None) -> None:
    """On a run that changes nothing: restart a worker on what a killed one left, and go on
    (`team`: this run's team cache URL, which the worker uses when the job names the same)."""
    state = pending(prefix)
    if state is None or state.running:
        return
    if state.failed:
        say(f"warning: the Drive writes of an earlier run stopped: {state.failed}; trying again")
    for folder in handed_off(prefix):
        spawn(folder, team)  # not on a job a worker holds


def finish(folder: Path, store: TieredStore, *, offline: bool = False, timeout: float | None = None,
           stalled: Callable[[str], object] | None = None) -> None:
    """Put every queued file into the store, pack the snapshot, remove the job. Under the job's
    lock: a second finisher waits (at most `timeout`: then PreconditionUnmet), then finds nothing
    left to do. Offline, the wheels still to come from the index or the team cache stay queued,
    and so does the job. `stalled` (the worker's): see _given_up_when_stalled."""
    with _job_held(folder, timeout=timeout) as held:
        if held is False:  # a worker at it all along: one that waits on a mount that stopped answering never ends
            raise JobBusy(
                f"the Drive writes of the last run did not end in {timeout:g} s, and this run waits for them "
                f"(a snapshot is of the environment it describes): let them finish and run again, or, if Drive "
                f"stopped answering, on Colab {remount(store.here.drive)}; or set {LOCK_TIMEOUT.name} to wait longer")
        if isinstance(held, _Held) and (job := _read_job(folder)) is not None:
            with _given_up_when_stalled(folder, held, stalled, store):
                _finish(folder, job, store, offline)


@contextmanager
def _given_up_when_stalled(folder: Path, held: _Held, stalled: Callable[[str], object] | None,
                           store: TieredStore) -> Iterator[None]:
    """The worker's bound on its own writes: a write to a Drive (or team) folder that stopped
    answering never returns, nor can its thread be stopped. Once the process wrote nothing for
    twice WARMSTART_DRIVE_TIMEOUT (`written`: downloading, copying and packing all write as they
    go; a read of Drive, and a small file's write, are bounded by the timeout itself, which ends
    them first and leaves the worker to say so), a thread of its own says why in failed.txt, lets
    the job's lock go (the next run finishes the job) and calls `stalled(why)`, which ends the
    process; the thread caught in the write ends with it once the mount answers."""
    if stalled is None:
        yield
        return
    patience, done = 2 * drive_timeout(), threading.Event()

    def watch() -> None:
        last, since = written(), time.monotonic()
        while not done.wait(min(1.0, patience / 4)):
            if (now := written()) != last or now is None:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= patience:
                why = f"nothing was written for {patience:g} s: {_stalled_on(store)}"
                with suppress(OSError):
                    write_private(folder / FAILED, why)
                with suppress(OSError):  # nothing may keep this thread from letting the lock go
                    (folder / PID).unlink()  # at it no more: an offline run need not wait for it
                os.close(held.fd)  # the lock goes with it: the thread caught in the write holds the process
                stalled(why)
                return

    threading.Thread(target=watch, name="stalled writes", daemon=True).start()
    try:
        yield
    finally:
        done.set()


def _stalled_on(store: TieredStore) -> str:
    """What stopped answering: the folder that a file this process holds open lies in (Drive's, or
    a team cache's), else any of them."""
    drive, team = store.here.drive, store.team
    said = {os.path.abspath(drive): f"a write to {drive} waits: Drive stopped answering; on Colab, {remount(drive)}"}
    if isinstance(team, DriveStore):
        said[os.path.abspath(team.drive)] = f"a write to the team cache {team.drive} waits: it stopped answering"
    for name in [*_open_files(), *map(str, background.child_writes())]:
        for folder in sorted(said, key=len, reverse=True):  # a team folder may lie inside Drive's
            if Path(name).is_relative_to(folder):
                return said[folder]
    return (f"Drive (or the team cache, or the package index) stopped answering; if Drive did, on Colab, "
            f"{remount(drive)}")


def _open_files() -> list[str]:
    """The files this process holds open, as the kernel names them (/proc/self/fd): a mount that
    stopped answering is not asked, as a stat of them would."""
    names = []
    with suppress(OSError):
        for fd in os.listdir("/proc/self/fd"):
            with suppress(OSError):
                names.append(os.readlink(f"/proc/self/fd/{fd}"))
    return names


def _finish(folder: Path, job: dict[str, Any], store: TieredStore, offline: bool) -> None:
    """finish's work, under the job's lock."""
    (folder / FAILED).unlink(missing_ok=True)
    wanted, copies, used = job.get("download"), job.get("from_team"), job.get("team_usage")
    share = job.get("team_share")
    later = bool(wanted or copies or used or share) and offline  # what needs the network stays queued
    unfetched: WarmstartError | None = None
    if wanted and not offline:
        try:
            _download(folder, job, store)
        except (IndexUnavailable, DownloadFailed) as exc:  # the rest needs no index: Drive gets it now
            unfetched, later = exc, True  # and the wheels stay queued; said once the rest is done
    if copies and not offline:
        _copy_from_team(folder, job, store)
    files = sorted(folder.glob(f"{FILES}/*/*"), key=lambda p: (p.suffix == ".json", p))  # indexes last
    total = sum(f.stat().st_size for f in files)
    with store.bars.bar(total, f"to Drive ({counted(len(files), 'file')})") as bar:
        for path in files:
            if not store.put(path.parent.name, path.name, path, bar):
                raise OSError(store.warnings[-1])
            path.unlink()
    if spec := job.get("snapshot"):
        pins = tuple(Pin(canonicalize_name(n), v, frozenset()) for n, v in spec["pins"])
        try:  # only of the environment the run left: not one wiped, made again or changed since
            target = target_python.probe(spec["python"])
            if all(p.satisfied_by(target.installed.get(p.name)) for p in pins):
                snapshots.pack(store, snapshots.Snapshot(spec["stem"], spec["facts"]), target, pins,
                               {canonicalize_name(n): d for n, d in spec.get("digests", {}).items()},
                               index_took=spec.get("index_seconds"))
        except (snapshots.SnapshotUnusable, PreconditionUnmet) as exc:  # the next VM is slower, no more
            store.warnings.append(f"no snapshot written: {exc}")
        if later:
            job["snapshot"] = None
            _save_job(folder, job)
    if used and not offline and (team := store.ask_team()):
        team.record_use(used)
    if share and not offline and (team := store.ask_team()):
        _share_with_team(folder, share, store.here, team)
    store.clean_stale_parts()  # what killed runs left on Drive: off the user's path, here
    if unfetched is not None:
        raise unfetched  # the job stays: `status` says why, the next run fetches them
    if not later:
        _remove_job(folder)


def _download(folder: Path, job: dict[str, Any], store: TieredStore) -> None:
    """Fetch the wheels the run let uv take straight from the index (the job's `download`), for
    the cache."""
    area = folder / FILES / "wheels"
    area.mkdir(parents=True, exist_ok=True)
    have = {path.name for path in area.iterdir()}
    pins = [Pin(canonicalize_name(n), v, frozenset(h)) for n, v, h in job["download"]]
    supported = [tag for text in job["tags"] for tag in parse_tag(text)]
    downloader = Downloader(IndexSettings.from_environ(), store.bars)
    jobs, left = downloader.wheel_jobs(pins, supported, area)
    downloader.fetch([j for j in jobs if j.dest.name not in have], f"download {counted(len(jobs), 'wheel')} for Drive")
    for pin, why in left.items():  # pip would need the target itself: a --wait run caches these
        store.warnings.append(f"{pin.name}=={pin.version} not cached: {why}")
    job["download"] = None  # fetched: what is left is putting them on Drive
    _save_job(folder, job)


def _copy_from_team(folder: Path, job: dict[str, Any], store: TieredStore) -> None:
    """Copy the wheels only the team cache held into the job, each checked against the lock's
    sha256 (Drive then gets them with the rest): the next VM finds all it needs on Drive and
    need not open the team store. One the team cannot serve is left for a later run to ask."""
    area = folder / FILES / "wheels"
    area.mkdir(parents=True, exist_ok=True)
    if team := store.ask_team():
        for name, hashes in job["from_team"]:
            if not (area / name).exists() and not store.on_drive("wheels", name):
                team.get("wheels", name, area / name, hashes)
    job["from_team"] = None  # copied: what is left is putting them on Drive
    _save_job(folder, job)


def _share_with_team(folder: Path, share: dict[str, list[str]], drive: DriveStore, team: Store) -> None:
    """Give the team cache what the run used and it lacks, from Drive (a team cache set up after
    Drive was filled gets nothing from downloads): each file copied off Drive into the job's
    folder and checked as a run checks it (a wheel against the lock's sha256, an asset against
    the recipe's, a snapshot's archive against its index), then put; an index after its archive.
    A copy that fails its check is set aside on Drive (a warning) and not shared."""
    for kind in sorted({key.partition("/")[0] for key in share}):
        team.names(kind)  # listed first: one that cannot be read leaves what the team lacks unknown
    area = folder / "team"
    area.mkdir(exist_ok=True)
    try:
        for key, sha256s in share.items():
            if team.down or team.refused or team.unlisted:
                return
            kind, _, name = key.partition("/")
            if "/" in name or name.startswith(".") or team.has(kind, name) or not drive.on_drive(kind, name):
                continue
            files: list[tuple[str, list[str] | None]] = [(name, sha256s)]
            if kind == snapshots.KIND:  # an index: its archive first, checked against it, then the index
                try:
                    index = drive.read_json(kind, name)
                    archive, sha256 = Path(str(index["archive"])).name, index["sha256"]
                except (OSError, ValueError, TypeError, KeyError):
                    continue  # not an index warmstart wrote: a run sets it aside when it reads it
                if not is_sha256(sha256) or archive != f"{name.removesuffix('.json')}-{sha256[:16]}.tar.zst":
                    continue  # not as snapshot.pack names an index's archive
                (area / name).write_text(json.dumps(index, indent=1) + "\n")
                files = [*([] if team.has(kind, archive) else [(archive, [sha256])]), (name, None)]
            for file, hashes in files:
                copy = area / file
                if hashes is not None and drive.get(kind, file, copy, hashes) is None:
                    break  # gone from Drive, or damaged there (set aside, a warning): not shared
                if not team.put(kind, file, copy):
                    return  # the team refused (one warning): nothing more for it
                copy.unlink()
    finally:
        shutil.rmtree(area, ignore_errors=True)


def _first_for_the_oom_killer() -> None:
    """Where a VM's memory runs out (a training that outgrows Colab's RAM while the worker packs a
    snapshot, 100 MiB and more), the kernel ends this worker before the user's kernel: the next
    run finishes its job, where nothing brings back the user's lost work. Any process may raise
    its own score."""
    with suppress(OSError):
        Path("/proc/self/oom_score_adj").write_text("1000")


def main(argv: list[str]) -> int:
    """The worker: `python -m warmstart.drivework [--offline] [--timeout S] [--team down|read-only]
    [--answer FD] FOLDER`; detached (spawn), or watched by the run that started it
    (finish_watched), which reads what it says back from the file descriptor --answer names (with
    --timeout it waits for the job's lock that long, as finish does; --team: the team cache as
    that run left it)."""
    parser = argparse.ArgumentParser(prog="warmstart.drivework")
    parser.add_argument("--offline", action="store_true")
    parser.add_argument("--timeout", type=float)
    parser.add_argument("--answer", type=int)
    parser.add_argument("--team", choices=("down", "read-only"))
    parser.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    folder = args.folder
    if args.answer is None:  # after the run: the user's own work (a training's data loading) comes first
        os.nice(10)
    _first_for_the_oom_killer()
    drive, store = None, None

    def answer(error: BaseException | str | None = None) -> None:
        """What the worker found, said back (--answer) or, detached, into its log."""
        warned: list[str] = store.warnings if store else []
        said = error if isinstance(error, str) or error is None else _said(error, drive)
        if args.answer is None:
            for warning in warned:  # the team cache down or refusing: the run went on without it
                print(redact(f"warning: {warning}"), file=sys.stderr)
            return
        team = store.team if store else None
        down = [team.down, team.down_said] if team and team.down_said else None  # said apart: see finish_watched
        os.write(args.answer, json.dumps({
            "warnings": [warning for warning in warned if not down or warning != down[1]], "team_down": down,
            "drive": vars(store.here.stats) if store else {}, "team": vars(team.stats) if team else {},
            "error": {"kind": type(error).__name__ if isinstance(error, BaseException) else "OSError", "said": said}
            if error is not None else None}).encode() + b"\n")

    def stalled(why: str) -> None:
        with suppress(OSError):
            answer(why)
        os._exit(1)  # the thread caught in the write holds the rest of the process until its mount answers

    try:
        job = json.loads((folder / JOB).read_text())
        drive = Path(job["drive"])
        # The job names the team cache without credentials; the run handed its URL over in the
        # worker's environment (never on disk), when it held any.
        team, given = job.get("team") or {}, WORKER_TEAM.get() or ""
        location = given if given and redact(given) == team.get("location") else team.get("location")
        store = TieredStore.at(drive, bars=Bars(enabled=False))
        if location and args.team != "down":
            try:
                store.put_behind(location, read_only=team.get("read_only", False) or args.team == "read-only",
                                 borrow=tuple(map(str, team.get("borrow") or ())))
            except WarmstartError as exc:  # its folder gone or refused, its backend not here: Drive's writes go on
                store.warnings.append(f"{exc}; the team cache's part of this run's writes is left out")
        finish(folder, store, offline=args.offline, timeout=args.timeout, stalled=stalled)
        answer()
    except FileNotFoundError:
        answer()
        return 0  # finished by a run that came first
    except Exception as exc:  # the job stays; `status` says why, the next run tries again
        try:
            answer(exc)
            if not isinstance(exc, JobBusy):  # another worker at it: the job is not this one's to say of
                write_private(folder / FAILED, _said(exc, drive)[:1000])  # a remount cell and all
                with open(folder / "worker.log", "a") as log:
                    log.write(redact(traceback.format_exc()))
        except OSError:
            pass
        return 1
    return 0


def _said(exc: BaseException, drive: Path | None) -> str:
    """What stopped the worker, as a run that finishes the job says it: a Drive's error in its
    words ("Drive is full"), one of warmstart's as it stands."""
    if isinstance(exc, OSError) and drive:
        return explain(exc, drive)
    return str(exc) if isinstance(exc, WarmstartError) else f"{type(exc).__name__}: {exc}"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
