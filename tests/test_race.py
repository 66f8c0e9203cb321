"""Online, a snapshot that reads slowly races the package index (warmstart.race): uv installs the
same pins into a second staging folder, checked against the lock's digests, and whichever tree
is verified first is placed. Real parts: the snapshot of a wheel of about seven parts on Drive
behind a real FUSE layer that caps its throughput (bench/slowfs.py), a real index on
127.0.0.1, real uv. The index lane starts only when the read has more time left than the index
would take (headstart.index_seconds: for one small wheel, headstart.RACE_AFTER), so each Drive here is
slow enough for that, or fast; a read the index races waits while uv runs.
The race's parts are tested on their own at the end: the hold, and the check of uv's tree."""

from __future__ import annotations

import errno
import hashlib
import http.server
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import (
    REPO,
    bootstrap,
    build_wheel,
    cli_command,
    cli_env,
    dead_url,
    installed,
    make_venv,
    needs_fuse,
    run_cli_on_hung_mount,
    serve_folder,
    slow_drive,
    wait_until,
    write_simple_index,
)
from packaging.version import Version
from test_multisource import LOCKED, archive_in, bulky, tree  # noqa: F401  (bulky: a fixture)
from test_team import VM

from warmstart import home, installer, manifest, parts, target
from warmstart.disks import explain, on_fuse, remount
from warmstart.errors import WarmstartError
from warmstart.headstart import HOLD_FOR, RACE_AFTER, index_seconds, recorded_seconds
from warmstart.parts import PART_SIZE
from warmstart.race import _to_target_layout, index_time, verify_installed
from warmstart.readahead import Cancelled, ReadAhead
from warmstart.snapshot import KIND, Watch
from warmstart.store import DriveStore
from warmstart.uv import find_uv


@pytest.fixture
def filled(bulky, tmp_path):  # noqa: F811
    """A first VM filled Drive (wheels and snapshot) from the index and was wiped: the files it
    had. The next VM has the same prefix (a snapshot is made for one)."""
    recipe, url = bulky
    first = VM(tmp_path / "vm", url, {}, "")
    done = first.bootstrap(recipe)
    assert done.code == 0, done.stderr
    assert archive_in(first.drive).stat().st_size > 3 * PART_SIZE
    had = tree(first.python)
    shutil.rmtree(first.root / "venv")
    shutil.rmtree(first.root / "cache")
    return had


def wiped_vm(tmp_path: Path, index_url: str) -> VM:
    return VM(tmp_path / "vm", index_url, {}, "")


def restore_through(vm: VM, recipe: Path, tmp_path: Path, mib_per_s: float, *flags: str,
                    hang_after: int | None = None):
    """Bootstrap the wiped VM with its Drive folder read through the slow FUSE layer. Unless the
    Drive hangs, warmstart has run on the VM before (its own folder was kept): the read begins with
    the restore, not before the plan (warmstart.early, tests/test_early.py), so the race sees the
    pace set here from the archive's first byte on (in CI, on a busy machine, a Drive a little
    slower than the index had read so much before the plan that the index was not raced)."""
    size = archive_in(vm.drive).stat().st_size
    slow_enough = size / 2**20 / mib_per_s > index_seconds(size, 1) + 1
    assert hang_after is not None or slow_enough, "slow enough for the index to be asked"
    if hang_after is None:
        home.run_locks(vm.env).mkdir(parents=True, exist_ok=True)
    with slow_drive(vm.drive, tmp_path / "slow", 5, mib_per_s, hang_after=hang_after) as mount:
        # not VM.bootstrap: it reads every file on Drive after, through this slow layer, for
        # credentials this VM has none of (a minute at 2 MiB/s)
        return bootstrap(recipe, mount, vm.python, *flags, env=vm.env)


def ended_within(seconds: float, args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """`invoke ARGS`'s exit code and stderr, for a run that is to end by itself within `seconds`
    (without the bound under test: never); past them it is killed, with its session."""
    run = subprocess.Popen(cli_command(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    try:
        _out, err = run.communicate(timeout=seconds)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    return run.returncode, err


def holders(mount: Path) -> list[str]:
    """The processes with a file below `mount` open, from /proc (which asks the mount nothing)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}").startswith(f"{mount}/") for fd in fds):
                found.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue  # it ended meanwhile
    return found


def leftovers(vm: VM) -> list[str]:
    return [p.name for p in (vm.python.parent.parent).glob(".warmstart-restore-*")]


@needs_fuse
def test_the_index_wins_over_a_slow_drive_and_installs_the_same_files(bulky, filled, tmp_path):  # noqa: F811
    """The index is far away (a second an answer: uv takes 2 s or more), the Drive slower still."""
    recipe, _url = bulky
    url, server = serve_folder(recipe.parents[2] / "index", delay=1.0)  # the bulky project's own index
    try:
        vm = wiped_vm(tmp_path, f"{url}/simple")
        archive = archive_in(vm.drive)
        result = restore_through(vm, recipe, tmp_path, mib_per_s=2)  # about 14 s of reading
    finally:
        server.shutdown()

    assert result.code == 0, result.stderr
    snapshot = result.report["snapshot"]
    assert snapshot["used"] is False and snapshot["reason"] == "the package index was faster", snapshot
    assert snapshot["race"]["winner"] == "index" and "index_failed" not in snapshot["race"]
    # the read waited for uv once its pace was known, after the block it had begun (the first
    # is 256 KiB, then 4 MiB ones)
    assert snapshot["race"]["snapshot_held"] is True
    assert result.report["cache"]["bytes_read"] <= (256 << 10) + 2 * (4 << 20) < archive.stat().st_size / 2
    assert result.report["installed"] == LOCKED and result.report["warnings"] == []
    assert tree(vm.python) == filled, "the files of the install the snapshot was made of, byte for byte"
    assert leftovers(vm) == [], "the snapshot's staging folder, stopped midway, is gone"
    assert archive.exists() and not list(archive.parent.glob("*.damaged-*")), "a snapshot that lost is not damaged"


@needs_fuse
def test_a_read_a_little_slower_than_the_index_waits_for_uv(bulky, filled, tmp_path):  # noqa: F811
    """A Drive whose read takes a second or so more than the index's time: raced, and held while
    uv runs. Reading and unpacking beside uv share its 2 CPUs: on the Colab stand-in behind a 60
    MiB/s Drive (2.7 s of reading, the index's 2.2 s), a read going on won every race, slower
    than uv alone; before, only a read with twice the index's time left waited."""
    recipe, url = bulky
    vm = wiped_vm(tmp_path, url)
    size = archive_in(vm.drive).stat().st_size
    index = index_seconds(size, 1)
    # Seconds at that pace: raced, and just under HOLD_FOR times the index's, so still held. The
    # race asks while the read has RACE_MARGIN more left than the index's time, which a read of
    # index + 1.1 s (7 blocks of 4 MiB) left after its third block: on a busy CI machine the
    # race once looked later than that and never asked. Now it has a block more.
    reading = HOLD_FOR * index - 0.05
    assert reading > index + 1

    result = restore_through(vm, recipe, tmp_path, mib_per_s=size / 2**20 / reading)

    assert result.code == 0, result.stderr
    snapshot = result.report["snapshot"]
    assert snapshot["race"]["snapshot_held"] is True, snapshot
    assert snapshot["used"] is False and snapshot["race"]["winner"] == "index", snapshot
    # the read stopped when uv began: at most the block under way after the race asked
    raced_at = snapshot["race"]["index_started_s"]
    assert result.report["cache"]["bytes_read"] <= size * (raced_at / reading) + (8 << 20) < size, snapshot
    assert tree(vm.python) == filled
    assert leftovers(vm) == []


@needs_fuse
def test_when_the_index_beats_the_team_caches_snapshot_drive_still_gets_the_wheels(bulky, filled, tmp_path):  # noqa: F811
    """The team cache (a shared folder, behind the slow FUSE layer) holds the wheel and the
    snapshot, Drive nothing. The index, far away, races the team's slow read and wins: uv
    fetched the wheel for the environment only, so the Drive work fetches it for Drive, and the
    next VM has it without the team cache. (Before, Drive got the snapshot and no wheel.)"""
    recipe, _url = bulky
    url, server = serve_folder(recipe.parents[2] / "index", delay=1.0)
    try:
        vm = wiped_vm(tmp_path, f"{url}/simple")
        team = tmp_path / "team"
        team.mkdir()
        shutil.move(vm.drive / ".warmstart", team / ".warmstart")
        wheels = sorted(p.name for p in (team / ".warmstart" / "v1" / "wheels").iterdir())
        with slow_drive(team, tmp_path / "slow-team", 5, 2) as mount:  # about 14 s of reading
            vm.env["WARMSTART_CACHE"] = str(mount)
            result = vm.bootstrap(recipe)
    finally:
        server.shutdown()

    assert result.code == 0, result.stderr
    snapshot = result.report["snapshot"]
    assert snapshot["used"] is False and snapshot["race"]["winner"] == "index", snapshot
    assert tree(vm.python) == filled
    assert vm.on_drive("wheels") == wheels == ["bulky-1.0-py3-none-any.whl"]


@needs_fuse
def test_a_drive_that_hangs_midway_loses_to_the_index(bulky, filled, tmp_path):  # noqa: F811
    """Drive stops answering 4 MiB into the archive: the read that hangs counts as slow as it
    goes, the index is asked, and its tree is placed without waiting for Drive."""
    recipe, url = bulky
    vm = wiped_vm(tmp_path, url)

    result = restore_through(vm, recipe, tmp_path, 100, hang_after=4 << 20)

    assert result.code == 0, result.stderr
    snapshot = result.report["snapshot"]
    assert snapshot["used"] is False and snapshot["race"]["winner"] == "index", snapshot
    assert result.report["installed"] == LOCKED
    assert tree(vm.python) == filled
    assert leftovers(vm) == []


@pytest.mark.skipif(find_uv() is None, reason="needs uv")
def test_a_racing_uv_asks_a_failing_index_once(tmp_path, monkeypatch):
    """The restore's read waits while uv races it, so uv tries each request once: its own
    retries took 9.7 s to give up on an index that refused every connection. An index on
    127.0.0.1 that answers every request with 503 is asked once."""
    asked = []

    class Failing(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_response(503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_port}/simple")
        monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "uv-cache"))
        requirements = tmp_path / "install.txt"
        requirements.write_text(f"bulky==1.0 --hash=sha256:{'0' * 64}\n")
        with pytest.raises(WarmstartError, match="install the locked packages from the index"):
            installer.install_from_index(make_venv(tmp_path / "venv"), requirements, tmp_path / "prefix")
    finally:
        server.shutdown()
    assert asked == ["/simple/bulky/"]


@needs_fuse
def test_an_unreachable_index_leaves_the_race_to_the_snapshot(bulky, filled, tmp_path):  # noqa: F811
    recipe, _url = bulky
    vm = wiped_vm(tmp_path, dead_url())

    result = restore_through(vm, recipe, tmp_path, mib_per_s=6)

    assert result.code == 0, result.stderr
    snapshot = result.report["snapshot"]
    # uv was asked, and failed at its first refused connection (a racing uv does not retry: its
    # retries took 9.7 s to give up, and the read waited meanwhile)
    assert snapshot["used"] is True and snapshot["race"]["winner"] == "snapshot", snapshot
    failed = snapshot["race"].get("index_failed")
    assert failed and "install the locked packages from the index" in failed, snapshot["race"]
    assert result.report["warnings"] == [], "a lane that lost is no warning"
    assert tree(vm.python) == filled
    assert leftovers(vm) == []


@needs_fuse
def test_an_index_serving_other_files_loses_to_the_snapshot(bulky, filled, tmp_path):  # noqa: F811
    """The index, far away (a second an answer), serves a bulky 1.0 that is not the locked one: uv
    refuses it by the lock's hash. The read, held meanwhile, goes on."""
    recipe, _url = bulky
    (tmp_path / "other" / "files").mkdir(parents=True)
    build_wheel(tmp_path / "other" / "files", "bulky", "1.0", extra={"bulky/blob0.bin": b"not the locked blob"})
    write_simple_index(tmp_path / "other")
    url, server = serve_folder(tmp_path / "other", delay=1.0)
    try:
        vm = wiped_vm(tmp_path, f"{url}/simple")
        result = restore_through(vm, recipe, tmp_path, mib_per_s=3)
    finally:
        server.shutdown()

    assert result.code == 0, result.stderr
    snapshot = result.report["snapshot"]
    assert snapshot["used"] is True and snapshot["race"]["winner"] == "snapshot", snapshot
    assert snapshot["race"]["snapshot_held"] is True
    assert "sha256 the lock does not list" in snapshot["race"]["index_failed"]
    assert tree(vm.python) == filled
    assert leftovers(vm) == []


@needs_fuse
def test_offline_the_index_is_never_asked(bulky, filled, tmp_path):  # noqa: F811
    recipe, url = bulky
    vm = wiped_vm(tmp_path, url)

    result = restore_through(vm, recipe, tmp_path, 6, "--offline")

    assert result.code == 0, result.stderr
    assert result.report["snapshot"]["used"] is True and "race" not in result.report["snapshot"]
    assert tree(vm.python) == filled


@needs_fuse
def test_a_drive_that_keeps_up_is_not_raced(bulky, filled, tmp_path):  # noqa: F811
    """Local disk: the restore is bound by the CPUs, and a second install would only slow it."""
    recipe, url = bulky
    vm = wiped_vm(tmp_path, url)

    result = vm.bootstrap(recipe)

    assert result.code == 0, result.stderr
    assert result.report["snapshot"]["used"] is True and "race" not in result.report["snapshot"]
    assert tree(vm.python) == filled


@needs_fuse
def test_an_offline_restore_from_a_drive_that_stopped_answering_ends_when_interrupted(bulky, filled, tmp_path):  # noqa: F811
    """Offline nothing races a Drive that stops answering 4 MiB into the archive, so the restore
    waits on it, and the notebook's interrupt (SIGINT, or SIGTERM) is the way out. That ends the
    run at once, exit code 130, staging folder removed. Before, the way out waited for the
    decompressing thread, which waited for the hung read: the run never ended."""
    recipe, url = bulky
    vm = wiped_vm(tmp_path, url)
    with slow_drive(vm.drive, tmp_path / "slow", 5, 100, hang_after=4 << 20) as mount:
        run = subprocess.Popen(cli_command("bootstrap", "--recipe", str(recipe), "--drive", str(mount),
                                           "--python", str(vm.python), "--json", "--offline"),
                               env=vm.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
        try:
            wait_until(lambda: leftovers(vm) or run.poll() is not None, 120, "the restore did not begin",
                       every=0.05)
            time.sleep(2)  # 100 MiB/s: the archive's first 4 MiB come in 0.04 s, then nothing
            assert run.poll() is None, f"the restore was to hang on Drive: {run.communicate()}"
            run.send_signal(signal.SIGTERM)
            _out, err = run.communicate(timeout=30)
        finally:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
                run.wait()

    assert run.returncode == 130, err
    assert "interrupted" in err
    assert leftovers(vm) == [], "the staging folder is removed on the way out"


@needs_fuse
def test_an_offline_restore_from_a_drive_that_stopped_answering_ends_on_its_own(bulky, filled, tmp_path):  # noqa: F811
    """A read from Drive waits at most WARMSTART_DRIVE_TIMEOUT (here 2 s) for its data. Drive
    stops answering 4 MiB into the archive: the snapshot cannot be read, Drive counts as down for
    the rest of the run (the wheel on it is not read, which would wait as long again), and the
    offline run ends by itself: exit 3, one line naming the Drive, the wait and the way out. The
    snapshot is not set aside (its copy is whole: it is Drive that stopped), the staging folder
    is removed."""
    recipe, url = bulky
    vm = wiped_vm(tmp_path, url)
    archive = archive_in(vm.drive)
    with slow_drive(vm.drive, tmp_path / "slow", 5, 100, hang_after=4 << 20) as mount:
        code, err = ended_within(120, ["bootstrap", "--recipe", str(recipe), "--drive", str(mount), "--python",
                                       str(vm.python), "--json", "--offline"], vm.env | {"WARMSTART_DRIVE_TIMEOUT": "2"})
        # and no process is left holding the archive open (the child that read it ends with the
        # read), so a remount can take the old mount away
        wait_until(lambda: not holders(mount), 5,
                   lambda: f"left with a file on the Drive that stopped answering: {holders(mount)}", every=0.05)

    assert code == 3, err
    said = f"{mount} stopped answering (a read waited 2 s for its data)"
    assert f"snapshot {archive.name} cannot be read ({said})" in err
    assert err.strip().splitlines()[-1] == (
        f"warmstart: error: --offline, but {said}: on Colab, remount it by running this in a notebook cell: "
        f"from google.colab import drive; drive.mount({str(mount)!r}, force_remount=True) and run again "
        "(without --offline the package index serves what Drive cannot)")
    assert "Traceback" not in err
    assert leftovers(vm) == [], "the staging folder is removed"
    assert archive.exists() and not list(archive.parent.glob("*.damaged-*")), "Drive stopped; its copy is whole"
    assert installed(vm.python) == {}, "nothing was installed"


@needs_fuse
@pytest.mark.parametrize("at_mount", [False, True], ids=["below-the-mount", "the-mount-itself"])
def test_a_drive_that_answers_no_look_ends_the_run_before_anything(bulky, filled, tmp_path, at_mount):  # noqa: F811
    """A Drive that stopped answering before the run: no stat below its mount point returns
    (bench/slowfs.py --hang-metadata), and a process waiting on one cannot be killed until the
    mount answers. The run's first look at Drive (settings.drive_root: a child's stat) waits
    WARMSTART_DRIVE_TIMEOUT (here 2 s), then the run ends by itself, the child left waiting:
    exit 3, one line naming the folder, the wait and the way out, before anything is installed.
    With Drive at the mount point itself, the kernel answers for the folder without the mount
    (as from its cache): the look at the cache folders below it is what waits."""
    recipe, url = bulky
    vm = wiped_vm(tmp_path, url)
    answer = tmp_path / "answer"  # the layer answers once this exists: then the left child ends
    backing = vm.drive if at_mount else vm.drive.parent
    with slow_drive(backing, tmp_path / "slow", 0, 1000, hang_metadata=True, until=answer) as mount:
        drive = mount if at_mount else mount / vm.drive.name
        run = run_cli_on_hung_mount("bootstrap", "--recipe", str(recipe), "--drive", str(drive), "--python",
                                    str(vm.python), "--json", env=vm.env | {"WARMSTART_DRIVE_TIMEOUT": "2"},
                                    answer=answer)  # without the bound: never
        out, err = run.stdout, run.stderr

    assert run.code == 3, err
    assert err.strip().splitlines() == [
        f"warmstart: error: Drive does not answer: a look at {drive} waited 2 s; on Colab, remount it by running "
        f"this in a notebook cell: from google.colab import drive; drive.mount({str(mount)!r}, force_remount=True) "
        "(or set WARMSTART_DRIVE_TIMEOUT to wait longer)"]
    report = json.loads(out)
    assert (report["ok"], report["exit_code"], report["steps"]) == (False, 3, []), "it ended before any step"
    assert installed(vm.python) == {}, "nothing was installed"


@needs_fuse
@pytest.mark.parametrize("packages_only", [False, True], ids=["whole", "packages-only"])
def test_a_drive_that_stops_answering_during_the_run_is_not_looked_at_again(bulky, filled, tmp_path,  # noqa: F811
                                                                            packages_only):
    """Drive answers the run's first look, then stops at its first listing (bench/slowfs.py
    --hang-from-listing: from then on no stat below the mount point and no listing answers, and a
    process waiting on one cannot be killed). The listing waits WARMSTART_DRIVE_TIMEOUT (2 s)
    and Drive is down for the run; nothing after looks at it again (the workdir, the assets'
    places, the Drive writes, a worker), so the run ends by itself. The workdir on
    Drive is what assets and checks need: exit 3 with the way out, before anything is installed.
    With --packages-only the index serves the packages (the run is online), and the Drive writes
    (--wait: in this process) are kept for the next run, each said once as a warning. The listing
    that waits is a child's (find), left there: a thread of the run's own would keep it from
    ending until the mount answers."""
    recipe, url = bulky
    vm = wiped_vm(tmp_path, url)
    # warmstart has run on this VM before: no read ahead (warmstart.early), whose listing would be
    # the layer's first on a busy machine (CI's, once), leaving the run's own next look, the drive
    # step's stat after the first look answered, to wait for ever
    home.run_locks(vm.env).mkdir(parents=True, exist_ok=True)
    answer = tmp_path / "answer"  # the layer answers once this exists: then what waited ends
    with slow_drive(vm.drive, tmp_path / "slow", 0, 1000, hang_from_listing=True, until=answer) as mount:
        run = run_cli_on_hung_mount("bootstrap", "--recipe", str(recipe), "--drive", str(mount), "--python",
                                    str(vm.python), "--json", "--wait", *(["--packages-only"] if packages_only else []),
                                    env=vm.env | {"WARMSTART_DRIVE_TIMEOUT": "2"},
                                    answer=answer)  # unguarded, it waits on Drive at the workdir
        out, err = run.stdout, run.stderr

    down = f"{mount} stopped answering (a look at its files waited 2 s)"
    way_out = f"from google.colab import drive; drive.mount({str(mount)!r}, force_remount=True)"
    report = json.loads(out)
    assert "Traceback" not in err
    if not packages_only:
        assert run.code == 3, err
        assert err.strip().splitlines()[-1] == (
            f"warmstart: error: the workdir {mount / 'Demo'} lies on Drive, and {down}: on Colab, remount it by "
            f"running this in a notebook cell: {way_out} and run again (with --packages-only the packages "
            "install without it)")
        assert installed(vm.python) == {}, "nothing was installed"
        return
    assert run.code == 0, err
    assert installed(vm.python) == {"bulky": "1.0"}, "the index served the packages"
    steps = {step["name"]: step["status"] for step in report["steps"]}
    assert (steps["cache"], steps["workdir"], steps["drive"]) == ("warning", "warning", "warning")
    assert report["warnings"] == [
        f"no workdir {mount / 'Demo'}: {down}",
        f"{down}; this run reads nothing more from it (on Colab, remount it by running this in a notebook cell: "
        f"{way_out})",
        f"the Drive cache was not filled: {down}; the next run writes it"]
    kept = list((vm.root / "cache" / "warmstart" / "drivework").glob("*/*/failed.txt"))
    assert [path.read_text().strip() for path in kept] == [down], "the job waits for the next run"


@needs_fuse
def test_the_remount_line_names_the_fuse_mount_that_holds_drive(tmp_path):
    """The way out printed when Drive fails is a notebook cell's line, pasted as it stands: it
    remounts the FUSE mount that holds the Drive folder (Colab mounts Drive wherever the user
    asked, a name with a space included), read from /proc/self/mountinfo, never from the mount
    (which may not answer); a folder on no FUSE mount (a tmpfs here, in a mount namespace of its
    own) gets Colab's usual place."""
    def line(mount: str) -> str:
        return ("remount it by running this in a notebook cell: from google.colab import drive; "
                f"drive.mount({mount!r}, force_remount=True)")

    (tmp_path / "backing" / "MyDrive").mkdir(parents=True)
    with slow_drive(tmp_path / "backing", tmp_path / "my drive", 0, 1000) as mount:
        assert remount(mount / "MyDrive" / "warmstart") == line(str(mount))
        assert remount(mount) == line(str(mount))
        assert explain(OSError(errno.ENOTCONN, "Transport endpoint is not connected"), mount / "MyDrive") == (
            f"Drive was disconnected (Transport endpoint is not connected): {line(str(mount))} [OSError 107]")
    assert remount(tmp_path / "my drive" / "MyDrive") == line("/content/drive"), "unmounted: Colab's place"
    elsewhere = tmp_path / "tmpfs"
    elsewhere.mkdir()
    said = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         'mount -t tmpfs none "$1" && exec "$2" -c "$3" "$1"', "-", str(elsewhere), sys.executable,
         "import sys; from warmstart.disks import remount; print(remount(sys.argv[1]))"],
        capture_output=True, text=True, check=True, cwd=REPO)
    assert said.stdout.strip() == line("/content/drive"), said.stderr


@needs_fuse
def test_a_fuse_drive_mounted_at_a_name_beyond_ascii_is_known_for_one(tmp_path):
    """/proc/self/mountinfo escapes a space as octal (\\040) and leaves other bytes as they are;
    read as if every byte were an escape, a mount point named beyond ASCII (José: the é UTF-8's
    two bytes) came out as another name (JosÃ©), so a Drive mounted there was on no FUSE mount:
    looked at by this process, not a child (a stat of a Drive that stopped answering never
    returns), and its remount line named Colab's place, not the mount."""
    (tmp_path / "backing" / "MyDrive").mkdir(parents=True)
    with slow_drive(tmp_path / "backing", tmp_path / "Drive de José", 0, 1000) as mount:
        assert on_fuse(mount / "MyDrive")
        assert remount(mount / "MyDrive") == ("remount it by running this in a notebook cell: from google.colab import "
                                              f"drive; drive.mount({str(mount)!r}, force_remount=True)")


@needs_fuse
def test_a_look_at_drive_that_waits_too_long_ends_drives_part_in_the_run(tmp_path):
    """Drive stops answering after the run's first look: a listing, a stat or a small file read
    (a snapshot index) waits the store's timeout at most, once; then Drive is down for the run
    (one warning), it lists nothing and holds nothing, and nothing more waits for it."""
    backing = tmp_path / "backing"
    wheels = DriveStore(backing / "drive").root / "wheels"
    wheels.mkdir(parents=True)
    (wheels / "alpha-1.0-py3-none-any.whl").write_bytes(b"a wheel")
    answer = tmp_path / "answer"  # the layer answers once this exists: then the waiting threads end
    with slow_drive(backing, tmp_path / "slow", 0, 1000, hang_metadata=True, until=answer) as mount:
        store = DriveStore(mount / "drive", timeout=1)
        looks: dict[str, object] = {}

        def look() -> None:
            looks["listed"] = store.names("wheels")
            looks["down"] = store.down
            began = time.monotonic()
            looks["held"] = store.on_drive("wheels", "alpha-1.0-py3-none-any.whl")
            with pytest.raises(OSError, match="stopped answering"):
                store.read_json(KIND, "demo.json")
            looks["then"] = time.monotonic() - began

        looking = threading.Thread(target=look, daemon=True)
        looking.start()
        looking.join(30)  # without the bound: never
        answer.touch()  # the threads left waiting (and, unbounded, this one) end
        assert not looking.is_alive(), "a look at Drive waited for ever"

    said = f"{mount / 'drive'} stopped answering (a look at its files waited 1 s)"
    assert looks["listed"] == [], "a listing that does not come lists nothing"
    assert looks["down"] == said
    assert looks["held"] is False
    assert looks["then"] < 1, "once down, nothing waits for Drive again (the timeout is 1 s)"
    assert store.warnings == [f"{said}; this run reads nothing more from it (on Colab, remount it by running this "
                              f"in a notebook cell: from google.colab import drive; drive.mount({str(mount)!r}, "
                              "force_remount=True))"]

# -- the race's parts -----------------------------------------------------------------------


def _read_all(reader: ReadAhead | parts.PartReader) -> bytes:
    return b"".join(iter(lambda: reader.read(1 << 20), b""))


def test_a_held_read_reads_nothing_until_resumed_then_everything(tmp_path):
    data = os.urandom(12 << 20)
    (tmp_path / "archive").write_bytes(data)
    watch = Watch()
    watch.hold(60)
    reading = ReadAhead(open(tmp_path / "archive", "rb"), limit=len(data), held=watch.held)  # noqa: SIM115  (it closes it)
    try:
        time.sleep(0.3)
        assert reading.size == 0, "a held read waits before its first block"
        watch.resume()
        assert _read_all(reading) == data
    finally:
        reading.close()


@needs_fuse
def test_parts_from_a_drive_that_stops_answering_fail_once_a_read_waited_its_timeout(tmp_path, monkeypatch):
    """Drive, behind the real FUSE layer, answers the archive's first part and then nothing: the
    reader gives up on it once its read has waited WARMSTART_DRIVE_TIMEOUT (1 s here), with
    nothing else to ask, says so, and Drive is down for the run (one warning)."""
    monkeypatch.setenv("WARMSTART_DRIVE_TIMEOUT", "1")
    data = os.urandom(3 * PART_SIZE)
    folder = tmp_path / "drive" / ".warmstart" / "v1" / KIND
    folder.mkdir(parents=True)
    (folder / "a.tar.zst").write_bytes(data)
    index = {"size": len(data), "part_size": PART_SIZE,
             "parts": [hashlib.sha256(data[at:at + PART_SIZE]).hexdigest() for at in range(0, len(data), PART_SIZE)]}
    gate = tmp_path / "answer"  # then the read left waiting ends, and the FUSE layer can unmount
    with slow_drive(tmp_path / "drive", tmp_path / "slow", 5, 100, hang_after=PART_SIZE, until=gate) as mount:
        store = DriveStore(mount)
        reader = parts.PartReader([parts.Source("Drive", store)], KIND, "a.tar.zst", index)
        try:
            with pytest.raises(OSError) as failed:
                _read_all(reader)
        finally:
            reader.close()
            gate.touch()

    said = f"{mount} stopped answering (a read waited 1 s for its data)"
    assert str(failed.value) == f"no source could serve part 2 (Drive: {said})"
    assert store.down == said and len(store.warnings) == 1 and store.warnings[0].startswith(said)


def test_a_stopped_read_hands_on_nothing_more_and_wakes_a_reader_that_waits(tmp_path):
    data = os.urandom(12 << 20)
    (tmp_path / "archive").write_bytes(data)
    reading = ReadAhead(open(tmp_path / "archive", "rb"), limit=len(data))  # noqa: SIM115  (it closes it)
    try:
        assert reading.read(1 << 20) == data[:ReadAhead.FIRST]
        # more read ahead, waiting to be handed on
        wait_until(lambda: reading.size > ReadAhead.FIRST, 10, "nothing was read ahead")
        reading.stop()  # a race was lost: what was read ahead is not unpacked any more
        with pytest.raises(Cancelled):
            reading.read(1 << 20)
    finally:
        reading.close()
    # A source that sends nothing (a Drive that stopped answering): the reader waits in read()
    # until the stop wakes it.
    silent, writer = os.pipe()
    waiting = ReadAhead(os.fdopen(silent, "rb", buffering=0), limit=1 << 20)
    raised: list[BaseException] = []
    reader = threading.Thread(target=lambda: raised.extend(_raised(waiting.read)))
    reader.start()
    waiting.stop()
    reader.join(timeout=10)
    os.close(writer)  # the source ends: its thread ends too
    assert not reader.is_alive() and [type(e) for e in raised] == [Cancelled]


def _raised(call) -> list[BaseException]:
    try:
        call()
    except BaseException as exc:  # what the reader thread got, for the test to see
        return [exc]
    return []


def stored_in_parts(tmp_path: Path, part: int = 1 << 20) -> tuple[bytes, dict, list[DriveStore]]:
    """Five parts of random bytes, their index, and two stores ("drive", "team") holding them."""
    data = os.urandom(5 * part)
    (tmp_path / "archive").write_bytes(data)
    index = {"size": len(data), "part_size": part,
             "parts": [hashlib.sha256(data[i:i + part]).hexdigest() for i in range(0, len(data), part)]}
    stores = [DriveStore(tmp_path / label) for label in ("drive", "team")]
    for store in stores:
        assert store.put(KIND, "archive", tmp_path / "archive")
    return data, index, stores


def test_held_parts_wait_with_every_source_then_come_whole(tmp_path):
    data, index, stores = stored_in_parts(tmp_path)
    sources = [parts.Source(label, store) for label, store in zip(("drive", "team"), stores, strict=True)]
    watch = Watch()
    watch.hold(60)
    reading = parts.PartReader(sources, KIND, "archive", index, held=watch.held)
    try:
        time.sleep(0.3)
        assert [source.served for source in sources] == [0, 0], "no part is fetched while held"
        watch.resume()
        assert _read_all(reading) == data
        assert sum(source.served for source in sources) == len(data)
    finally:
        reading.close()


class _SlowDrive(DriveStore):
    """A Drive folder each part of which takes `seconds` to read (this test is about when the
    reader asks for help, not FUSE)."""

    def __init__(self, drive: Path, seconds: float) -> None:
        super().__init__(drive)
        self.seconds = seconds

    @contextmanager
    def ranges(self, kind: str, name: str) -> Iterator[Callable[[int, int], bytes]]:
        with super().ranges(kind, name) as read_at:
            def slow_read_at(start: int, length: int) -> bytes:
                time.sleep(self.seconds)
                return read_at(start, length)
            yield slow_read_at


def test_a_source_held_back_is_asked_only_once_the_others_fail_or_leave_the_reader_waiting(tmp_path):
    data, index, (drive, team) = stored_in_parts(tmp_path)
    asked: list[parts.Source] = []

    def later(serves: bool = True) -> parts.Source | None:
        asked.append(parts.Source("team", team))
        return asked[-1] if serves else None

    def read(later, store: DriveStore = drive) -> tuple[bytes | Exception, parts.Source, float]:
        source = parts.Source("drive", store)
        reading = parts.PartReader([source], KIND, "archive", index, later=later)
        try:
            return _read_all(reading), source, reading.waited
        except OSError as exc:
            return exc, source, reading.waited
        finally:
            reading.close()

    # Drive on local disk keeps the reader fed: the team store is never opened (unless this
    # machine, loaded, left the reader waiting JOIN_AFTER in all: then it may be).
    got, source, waited = read(later)
    assert got == data and source.served == len(data)
    assert asked == [] or waited > parts.JOIN_AFTER, f"asked after waiting {waited:.3f} s"

    # A Drive that leaves the reader waiting (half a second a part): the team store is opened
    # and serves parts beside it.
    asked.clear()
    got, source, waited = read(later, _SlowDrive(drive.drive, 0.5))
    assert got == data and waited > parts.JOIN_AFTER
    assert len(asked) == 1 and asked[0].served and source.served + asked[0].served == len(data)

    # Drive's copy damaged: its first part fails, the team store is opened and serves every part.
    asked.clear()
    drive.path(KIND, "archive").write_bytes(damage(data))
    got, source, _ = read(later)
    assert got == data and source.damaged and [s.served for s in asked] == [len(data)]

    # ... and when the team store cannot serve either, the read fails, naming Drive's trouble.
    got, _, _ = read(lambda: later(serves=False))
    assert isinstance(got, OSError) and "no source could serve part 1 (drive: part 1 differs" in str(got)


def test_while_the_source_held_back_joins_the_read_has_no_estimate_to_race_the_index_on(tmp_path):
    """Drive falls behind (0.3 s a part) and the team store, held back, is being opened: the read's
    time left is unknown until that source's first part (a race would otherwise start uv on
    Drive's pace alone, and hold the read, while the team store that serves it faster waits);
    then it is known again."""
    data, index, (drive, team) = stored_in_parts(tmp_path)
    opening, opened = threading.Event(), threading.Event()

    def later() -> parts.Source:
        opening.set()
        opened.wait(10)
        return parts.Source("team", team)

    source = parts.Source("drive", _SlowDrive(drive.drive, 0.3))
    reading = parts.PartReader([source], KIND, "archive", index, later=later)
    got: list[bytes] = []
    consumer = threading.Thread(target=lambda: got.append(_read_all(reading)))
    consumer.start()
    try:
        assert opening.wait(10), "the reader fell behind: the team store is asked"
        wait_until(lambda: source.pace, 10, "Drive served a part meanwhile: its pace alone would give an estimate")
        assert reading.seconds_left() is None
        opened.set()
        consumer.join(10)
        assert got == [data] and reading.sources[-1].served, "the team store joined and served parts"
        assert reading.seconds_left() is not None
    finally:
        opened.set()
        reading.close()


def damage(data: bytes) -> bytes:
    return bytes([data[0] ^ 0xFF]) + data[1:]


def test_a_hold_ends_at_its_time_or_with_the_restore():
    """A rival that stalls cannot strand the read: the hold runs out. A cancelled restore reads on
    to its end quickly (it stops at its next read)."""
    watch = Watch()
    watch.hold(0.2)
    assert watch.held()
    time.sleep(0.3)
    assert not watch.held()
    watch.hold(60)
    watch.cancel()
    assert not watch.held()


@pytest.fixture
def uv_tree(tmp_path):
    """What the index lane gets: real uv installing a real wheel (with a console script, and a
    data script uv rewrites) under a staging --prefix of a virtualenv; the lock's digest of it."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    script = b"#!python\nprint('tidy')\n"
    wheel = build_wheel(wheels, "tidy", "1.0", script=True,
                        extra={"tidy/blob.bin": os.urandom(1 << 16), "tidy-1.0.data/scripts/tidy-run": script})
    python = make_venv(tmp_path / "venv")
    staging = tmp_path / "venv" / ".warmstart-restore-test"
    subprocess.run([str(find_uv()), "pip", "install", "--quiet", "--python", str(python), "--prefix", str(staging),
                    "--no-deps", "--no-index", str(wheel)], check=True, env={**os.environ, "UV_CACHE_DIR": str(tmp_path / "uv")})
    return staging, target.probe(python), {"tidy": manifest.wheel_digest(wheel)}


def _record(staging: Path) -> Path:
    return next(staging.glob("lib/python*/site-packages/tidy-1.0.dist-info/RECORD"))


def test_uvs_tree_is_checked_against_the_lock_by_what_its_record_states(uv_tree):
    staging, python, digests = uv_tree
    verify_installed(staging, python, digests, ())
    assert (staging / "bin" / "tidy").read_text().startswith(f"#!{python.executable}\n"), "written anew"
    assert "tidy/blob.bin,sha256=" in _record(staging).read_text()


@pytest.mark.parametrize("change, why", [
    ("restate", "the files of tidy are not those of the wheel the lock names"),
    ("remove", "it lacks"),
    ("link", "is not a regular file"),
])
def test_uvs_tree_that_differs_from_the_lock_is_refused(uv_tree, change, why):
    """uv checked the wheel's sha256, so its RECORD is the wheel's; a tree whose RECORD states
    other hashes, or that lacks a file or has a link where a file should be, is not the lock's."""
    staging, python, digests = uv_tree
    blob = next(staging.glob("lib/python*/site-packages/tidy/blob.bin"))
    if change == "restate":
        record = _record(staging)
        lines = [line if not line.startswith("tidy/blob.bin,") else
                 "tidy/blob.bin,sha256=" + "A" * 43 + "," + line.rsplit(",", 1)[1]
                 for line in record.read_text().splitlines()]
        record.write_text("\n".join(lines) + "\n")
    elif change == "remove":
        blob.unlink()
    else:
        blob.rename(blob.with_name("elsewhere"))
        blob.symlink_to("elsewhere")
    with pytest.raises(manifest.Untrusted, match=why):
        verify_installed(staging, python, digests, ())


class _Paced(io.RawIOBase):
    """A file read at a fixed pace (a stand-in for a Drive: this test is about the estimate, not
    FUSE), or, with `hang_after`, one whose reads past that many bytes never answer."""

    def __init__(self, size: int, mib_per_s: float, hang_after: int | None = None, first_byte: float = 0.0) -> None:
        self.left, self.rate, self.hang_after, self.given = size, mib_per_s * 2**20, hang_after, 0
        self.first_byte = first_byte  # seconds the first read waits before its bytes (a Drive's latency)
        self.hung = threading.Event()
        self.after_first = 0.0  # seconds spent in the reads after the first

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        if self.hang_after is not None and self.given >= self.hang_after:
            self.hung.wait()  # until the test ends
            return 0
        n = min(len(buffer), self.left)
        began = time.monotonic()
        time.sleep(n / self.rate + (self.first_byte if not self.given else 0.0))
        if self.given:
            self.after_first += time.monotonic() - began
        buffer[:n] = bytes(n)
        self.left, self.given = self.left - n, self.given + n
        return n


def _estimates(reading: ReadAhead, seconds: float) -> list[float]:
    seen, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        if (left := reading.seconds_left()) is not None:
            seen.append(left)
        time.sleep(0.005)
    return seen


def test_a_block_under_way_does_not_make_a_source_look_slower_than_it_reads():
    """A 4 MiB block takes 70 ms at 60 MiB/s; counting that time before its bytes came made a
    Drive that reads 220 MiB in 3.7 s look like one taking 40 s, 0.1 s in, and the index was
    raced. Here the first block (256 KiB) takes 31 ms and the next 0.5 s: while it is under way
    the estimate stays near what the source's reads show (busy / size, measured after, so that
    a loaded machine's slower sleeps count too), where counting only the time made it 17 times that."""
    size = 64 << 20
    reading = ReadAhead(io.BufferedReader(_Paced(size, 8)), limit=size)
    try:
        seen = _estimates(reading, 0.7)
        whole = size * reading.busy / reading.size  # the whole file at the pace its reads showed
    finally:
        reading.close()
    assert seen and max(seen) < 2 * whole, f"{max(seen):.1f} s, the reads' pace says {whole:.1f} s"


def test_the_wait_for_the_first_byte_does_not_count_as_the_pace():
    """The first read waits for the source's first byte too: a 256 KiB block in 7 ms made a
    60 MiB/s Drive look like a 36 MiB/s one 0.07 s in, and the index was raced (and the read held)
    though the read took 2.7 s and uv 2.1 at best. Here the first byte takes 0.1 s, 16 times
    the block's own reading: the estimates once the second read is under way stay near the pace
    the later reads show."""
    size = 64 << 20
    source = _Paced(size, 40, first_byte=0.1)
    reading = ReadAhead(io.BufferedReader(source), limit=size)
    try:
        seen = []
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            if reading.size >= ReadAhead.FIRST and (left := reading.seconds_left()) is not None:
                seen.append(left)
            time.sleep(0.005)
        later = size * source.after_first / (source.given - ReadAhead.FIRST)  # the later reads' pace
    finally:
        reading.close()
    first_only = size * 0.1 / ReadAhead.FIRST  # what the first read alone says: 26 s
    assert seen and max(seen) < 2 * later < first_only / 4, f"{max(seen):.1f} s; the later reads say {later:.1f} s"


def test_a_read_that_hangs_looks_slower_the_longer_it_hangs():
    size = 64 << 20
    source = _Paced(size, 200, hang_after=256 << 10)  # the first block only
    reading = ReadAhead(io.BufferedReader(source), limit=size)
    try:
        seen = _estimates(reading, 1.0)
    finally:
        source.hung.set()
        reading.close()
    assert seen == sorted(seen), "it only grows"
    # a second without a byte: at best, the hanging block ends now
    assert seen[-1] > (size - (256 << 10)) * 0.9 / ((256 << 10) + ReadAhead.BLOCK)


def _debian_like(prefix: Path, purelib: Path) -> target.TargetPython:
    return target.TargetPython(prefix / "bin" / "python3", Version("3.12.3"), "cpython", prefix, {}, purelib=str(purelib))


def test_uvs_tree_moves_to_where_a_debian_python_installs(tmp_path):
    """Colab's Python is Debian's: prefix /usr, and pip installs into /usr/local/lib/python3.X/
    dist-packages and /usr/local/bin; uv's --prefix lays the tree out as a virtualenv."""
    prefix = tmp_path / "usr"
    folder = prefix / ".warmstart-restore-test"
    (folder / "lib" / "python3.12" / "site-packages" / "tidy").mkdir(parents=True)
    (folder / "lib" / "python3.12" / "site-packages" / "tidy" / "__init__.py").write_text("")
    (folder / "bin").mkdir()
    (folder / "bin" / "tidy").write_text("#!/usr/bin/python3\n")

    _to_target_layout(folder, _debian_like(prefix, prefix / "local" / "lib" / "python3.12" / "dist-packages"))

    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == [
        "local/bin/tidy", "local/lib/python3.12/dist-packages/tidy/__init__.py"]
    assert sorted(p.name for p in prefix.iterdir()) == [folder.name], "the layout's own folder is gone"


def test_a_target_installing_outside_its_prefix_is_refused(tmp_path):
    folder = tmp_path / "usr" / ".warmstart-restore-test"
    (folder / "lib").mkdir(parents=True)
    with pytest.raises(manifest.Untrusted, match="installs outside its prefix"):
        _to_target_layout(folder, _debian_like(tmp_path / "usr", tmp_path / "opt" / "site-packages"))


@pytest.mark.parametrize("recorded, took", [
    (2.5, 2.5), (3, 3.0),
    (None, None), (True, None), ("2.5", None), (0, None), (-1, None), (float("nan"), None), (1e9, None),
])
def test_the_index_time_a_snapshot_records_is_used_only_when_it_is_one_an_install_could_take(recorded, took):
    """A snapshot index is read from Drive or a team store: its `index_seconds` is a number of
    seconds, or not used."""
    assert recorded_seconds({} if recorded is None else {"index_seconds": recorded}) == took


def test_the_race_goes_by_the_index_time_the_snapshot_records_else_by_the_estimate():
    watch = Watch()
    watch.watch(221 << 20, index_took=None)
    assert index_time(watch, 28) == index_seconds(221 << 20, 28)  # nothing recorded: the estimate
    watch.watch(221 << 20, index_took=3.2)
    assert index_time(watch, 28) == 3.2  # what uv took on the VM the snapshot was made of
    watch.watch(221 << 20, index_took=0.4)
    assert index_time(watch, 28) == RACE_AFTER  # never less than uv takes for anything


@needs_fuse
def test_prune_on_a_drive_that_stops_answering_at_the_usage_records_removes_nothing(tmp_path):
    """A read of a usage record waits at most WARMSTART_DRIVE_TIMEOUT (1 s here), as every read
    of Drive does. Without every record a file another run used would look idle, so
    `invoke cache --prune` then says so (exit 3, one line naming the Drive and the wait) and
    removes nothing."""
    store = DriveStore(tmp_path / "drive")
    store.record_use(["wheels/alpha-1.0-py3-none-any.whl"])  # used just now, by another checkout
    wheel = store.root / "wheels" / "alpha-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    wheel.write_bytes(b"wheel")
    os.utime(wheel, (0, 0))  # old by its own time: only its usage record keeps it

    with slow_drive(tmp_path / "drive", tmp_path / "slow", 0, 100, hang_after=0) as mount:
        code, err = ended_within(60, ["cache", "--drive", str(mount), "--prune"],
                                 cli_env() | {"WARMSTART_DRIVE_TIMEOUT": "1"})
        way_out = remount(mount)  # while it is mounted: the FUSE mount it names

    assert code == 3, err
    assert err.strip().splitlines()[-1] == (
        f"warmstart: error: the usage records in {mount} cannot all be read, so nothing is pruned: {mount} stopped "
        f"answering (a read waited 1 s for its data); run the command again when it answers (on Colab, {way_out})")
    assert wheel.read_bytes() == b"wheel"
