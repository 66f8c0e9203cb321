"""Nothing lost, nothing trusted blindly: runs killed with SIGKILL at each phase, two runs at
once on one cache, a Drive that is full, damaged files. Real processes throughout; the kill
points are set with WARMSTART_FAULT (warmstart/faults.py), not with sleeps."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import (
    LOCKED,
    MOUNTNS,
    REPO,
    bootstrap,
    cli_command,
    cli_env,
    installed,
    locked_part_of,
    make_venv,
    needs_fuse,
    needs_mountns,
    needs_netns,
    proc_stat,
    run_cli,
    slow_drive,
    wait_until,
)


def cache_is_sound(drive: Path, env) -> None:
    result = run_cli("cache", "--drive", str(drive), "--verify", env=env)
    assert result.code == 0, result.stdout + result.stderr
    assert "damaged" not in result.stdout


def wiped_after_a_first_run(demo: Path, drive: Path, venv: Path, env: dict[str, str]) -> Path:
    """A first run fills the Drive cache and its snapshot; then the VM is wiped: the environment
    `venv` made anew. Its python."""
    assert bootstrap(demo, drive, make_venv(venv), env=env).code == 0
    shutil.rmtree(venv)
    return make_venv(venv)


@pytest.mark.parametrize("phase", ["download", "cache-write", "install"])
def test_a_run_killed_while_installing_is_followed_by_one_that_completes(demo, drive, tmp_path, index, phase):
    env = cli_env(index.url)
    python = make_venv(tmp_path / "venv")

    killed = bootstrap(demo, drive, python, env=env, fault=phase)

    if phase == "cache-write":  # the Drive writes are its worker's (--wait waits for it): the one killed
        assert killed.code == 0, killed.stderr
        assert ("warning: the Drive cache was not filled: the Drive worker was killed (signal 9); the next run "
                "tries again") in killed.stderr
    else:
        assert killed.code == -9, killed.stderr
    status = run_cli("status", "--recipe", str(demo), "--drive", str(drive), "--python", str(python),
                     "--json", env=env)
    if status.code == 0:  # the kill came after the last package landed: then all of it is there
        assert locked_part_of(python) == LOCKED
    else:
        assert status.report["missing"] or status.report["different"] or status.report["action"] != "no-op"
    again = bootstrap(demo, drive, python, env=env)
    assert again.code == 0, again.stderr
    assert locked_part_of(python) == LOCKED
    cache_is_sound(drive, env)


@pytest.mark.parametrize("left_behind", ["no RECORD yet", "RECORD written, a file not"])
def test_half_installed_distribution_is_not_reported_as_installed(demo, drive, tmp_path, index, left_behind):
    """What a kill in the middle of an install leaves: pip writes RECORD last; an installer that
    wrote it first leaves it newer than the files it lists."""
    env = cli_env(index.url)
    python = make_venv(tmp_path / "venv")
    assert bootstrap(demo, drive, python, env=env).code == 0
    site = next((tmp_path / "venv" / "lib").glob("python3*/site-packages"))
    assert run_cli("status", "--recipe", str(demo), "--drive", str(drive), "--python", str(python),
                   env=env).code == 0
    (site / "beta" / "__init__.py").unlink()
    record = site / "beta-2.0.dist-info" / "RECORD"
    if left_behind == "no RECORD yet":
        record.unlink()
    else:
        record.write_text(record.read_text())  # rewritten: a new mtime

    status = run_cli("status", "--recipe", str(demo), "--drive", str(drive), "--python", str(python), env=env)
    assert status.code == 1 and "broken    beta" in status.stdout

    again = bootstrap(demo, drive, python, env=env)
    assert again.code == 0, again.stderr
    assert (site / "beta" / "__init__.py").is_file()
    assert locked_part_of(python) == LOCKED


@needs_netns
@pytest.mark.parametrize("point", ["restore", "place"])  # unpacking; moving the tree into place
def test_a_restore_killed_midway_leaves_nothing_behind(demo, drive, tmp_path, index, point):
    env = cli_env(index.url)
    python = wiped_after_a_first_run(demo, drive, tmp_path / "venv", env)

    killed = bootstrap(demo, drive, python, "--offline", env=env, fault=point, offline_net=True)
    assert killed.code == -9
    half = run_cli("status", "--recipe", str(demo), "--drive", str(drive), "--python", str(python), env=env)
    assert half.code == 1, "the environment does not match: nothing (or a part of the tree) in place"
    restored = bootstrap(demo, drive, python, "--offline", env=env, offline_net=True)

    assert restored.code == 0, restored.stderr
    assert restored.report["snapshot"]["used"] is True
    assert locked_part_of(python) == LOCKED
    assert not list((tmp_path / "venv").glob(".warmstart-restore-*")), "staging must be cleaned up"
    assert run_cli("status", "--recipe", str(demo), "--drive", str(drive), "--python", str(python), env=env).code == 0


@needs_netns
def test_an_interrupt_while_a_restore_places_the_tree_comes_once_all_of_it_is_in_place(demo, drive, tmp_path, index):
    """SIGTERM (a notebook's interrupt) right after the first rename of the restored tree into
    the environment: the run ends as interrupted (130), once the rest is in place too; the
    interrupt used to leave the environment half restored, for the next run to repair."""
    env = cli_env(index.url)
    python = wiped_after_a_first_run(demo, drive, tmp_path / "venv", env)

    interrupted = bootstrap(demo, drive, python, "--offline", env=env, fault="place:term", offline_net=True)

    assert interrupted.code == 130 and interrupted.report["error"] == "interrupted", interrupted.stderr
    assert locked_part_of(python) == LOCKED
    assert not list((tmp_path / "venv").glob(".warmstart-restore-*")), "staging must be cleaned up"
    after = run_cli("status", "--recipe", str(demo), "--drive", str(drive), "--python", str(python), env=env)
    assert after.code == 0, after.stdout


def test_two_bootstraps_sharing_one_cache_both_succeed(demo, drive, tmp_path, index):
    env = cli_env(index.url)
    pythons = [make_venv(tmp_path / f"vm{n}") for n in (1, 2)]
    cmd = [sys.executable, "-m", "invoke", "--search-root", str(REPO), "bootstrap", "--recipe", str(demo),
           "--drive", str(drive)]
    runs = [subprocess.Popen([*cmd, "--python", str(p)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for p in pythons]
    # and a third run into the first VM's environment at the same time: it waits for the lock
    runs.append(subprocess.Popen([*cmd, "--python", str(pythons[0])], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True))

    results = [(run.wait(timeout=300), run.communicate()[1]) for run in runs]

    assert [code for code, _ in results] == [0, 0, 0], results
    assert all(locked_part_of(p) == LOCKED for p in pythons)
    cache_is_sound(drive, env)
    wheels = sorted(p.name for p in (drive / ".warmstart" / "v1" / "wheels").iterdir())
    assert wheels == ["alpha-1.0-py3-none-any.whl", "beta-2.0-py3-none-any.whl", "gpu_build-1.0-py3-none-any.whl"]


def _wait_for_the_begun_probe(pid: int, python: Path, waiting: Callable[[], bool], timeout: float = 60) -> None:
    """Until the begun probe (a child of process `pid` running the target `python`) has exited:
    seen as a zombie (exited, not yet waited for), or seen and gone. The run waits for it at the
    target's lock, and ends it there if it has not answered yet: on a loaded machine its
    interpreter may still be starting when the run gets there, and its zombie is then never seen;
    on CI's busy CPUs it was once ended before it was seen at all, so the wait also ends once the
    run says it is `waiting` at the lock and no probe is left (what the probe saw, if anything, is
    past then either way)."""
    seen: set[str] = set()

    def probes() -> dict[str, str]:
        """The run's children running `python`, with their states."""
        found = {}
        for thread in Path(f"/proc/{pid}/task").iterdir():
            try:
                for child in (thread / "children").read_text().split():
                    # (a zombie's cmdline reads empty: one seen before is known by its pid)
                    if (child in seen or Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[0] == bytes(python)) \
                            and (fields := proc_stat(int(child))):
                        found[child] = fields[0]
            except OSError:  # a thread or child gone meanwhile
                continue
        return found

    def ended() -> bool:
        now = probes()
        if "Z" in now.values() or seen - now.keys():
            return True
        seen.update(now)
        return waiting() and not now

    wait_until(ended, timeout, f"no probe of {python} by {pid} ended in {timeout} s")


def test_a_run_that_waits_too_long_for_another_on_its_target_ends_in_one_line_and_changes_nothing(
        demo, drive, tmp_path, index, monkeypatch):
    """Another run holds the target (its lock held here, as that run's process holds it) past
    WARMSTART_LOCK_TIMEOUT: exit 3 (as for warmstart.sh's tools), one line naming the target, the
    lock and the way out; the target is left as it was."""
    env = cli_env(index.url, WARMSTART_LOCK_TIMEOUT="0.5")
    python = make_venv(tmp_path / "venv")
    monkeypatch.setenv("XDG_CACHE_HOME", env["XDG_CACHE_HOME"])
    from warmstart import flock
    from warmstart.bootstrap import target_lock

    with flock.held(target_lock(str(python))) as taken:
        assert taken
        waited = bootstrap(demo, drive, python, env=env)

    assert waited.code == 3
    assert waited.stderr.splitlines() == [  # the wait said as it begins: a notebook cell showed nothing
        f"warmstart: another warmstart run is installing into {python}: waiting for it (up to 0.5 s, "
        "WARMSTART_LOCK_TIMEOUT)",
        f"warmstart: error: another warmstart run is installing into {python} and held "
        f"{target_lock(str(python))} too long; wait for it, or set WARMSTART_LOCK_TIMEOUT"]
    assert not any(name in installed(python) for name in LOCKED)


def test_a_run_that_waited_for_another_on_its_target_plans_from_what_that_one_left(
        demo, drive, tmp_path, index, monkeypatch):
    """The run asks the target Python what it holds before it takes the target's lock (the probe
    begins with the task, target.begin_probe). One that waited for another run there asks again:
    else it would plan from what was there before the other run installed."""
    env = cli_env(index.url)
    python = make_venv(tmp_path / "venv")
    monkeypatch.setenv("XDG_CACHE_HOME", env["XDG_CACHE_HOME"])
    from warmstart import flock
    from warmstart.bootstrap import target_lock

    with flock.held(target_lock(str(python))) as taken:
        assert taken
        run = subprocess.Popen(cli_command("bootstrap", "--recipe", str(demo), "--drive", str(drive),
                                           "--python", str(python), "--json"),
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        said: list[str] = []

        def read_stderr() -> None:
            for line in run.stderr:  # a line each, as the run says it
                said.append(line)

        reader = threading.Thread(target=read_stderr, daemon=True)
        reader.start()
        # it answered (as a rule): the target held nothing then
        _wait_for_the_begun_probe(run.pid, python, lambda: any("waiting for it" in line for line in said))
        subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                        "--index-url", index.url, *(f"{n}=={v}" for n, v in LOCKED.items())], env=env, check=True)
    out = run.stdout.read()
    run.wait(timeout=300)
    reader.join(timeout=60)
    err = "".join(said)

    assert run.returncode == 0, err
    assert f"another warmstart run is installing into {python}: waiting for it (up to 600 s" in err
    report = json.loads(out)
    install = next(step for step in report["steps"] if step["name"] == "install")
    assert (install["status"], install["detail"]) == ("skipped", "nothing to install")
    assert report["installed"] == LOCKED


@needs_mountns
def test_a_full_drive_still_installs_and_says_why_nothing_was_cached(demo, tmp_path, index):
    """Drive is a 4 KiB tmpfs (mounted in a private mount namespace): the first cache write fills it."""
    mount = tmp_path / "small-drive"
    mount.mkdir()
    python = make_venv(tmp_path / "venv")
    invoke = [sys.executable, "-m", "invoke", "--search-root", str(REPO), "bootstrap", "--recipe", str(demo),
              "--drive", str(mount), "--python", str(python)]
    script = f'mount -t tmpfs -o size=4k tmpfs "{mount}" && exec "$@"'
    done = subprocess.run([*MOUNTNS, "--", "sh", "-c", script, "sh", *invoke], env=cli_env(index.url),
                          capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, done.stderr
    assert "Drive is full (on Colab: the Google Drive storage quota is used up)" in done.stderr
    assert "Traceback" not in done.stderr
    assert locked_part_of(python) == LOCKED


@needs_mountns
def test_on_a_full_drive_a_run_leaves_the_wheels_an_earlier_runs_job_holds_to_it(demo, tmp_path, index):
    """Drive full (a 4 KiB tmpfs in a private mount namespace), writes left to the background:
    the first run's job keeps its wheels for a later run to put on Drive. A second run into the
    environment made anew queued the same wheels again (344 MiB more on local disk for
    hyperlpr, with each run that installed); now it leaves them to the first run's job, and only
    its own snapshot is queued. The worker says why it stopped in Drive's words."""
    drive = tmp_path / "drive"
    drive.mkdir()
    venv = tmp_path / "venv"
    env = cli_env(index.url, XDG_CACHE_HOME=str(tmp_path / "home" / ".cache"))
    env.pop("WARMSTART_WAIT")
    run = shlex.join(cli_command("bootstrap", "--recipe", str(demo), "--drive", str(drive), "--python",
                                 str(venv / "bin" / "python"), "--packages-only"))
    make = shlex.join([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    script = (f'mount -t tmpfs -o size=4k tmpfs "{drive}" || exit 9; '
              f'{make} && {run} > {tmp_path / "first.txt"} 2>&1 && rm -rf "{venv}" && {make} && '
              f'{run} > {tmp_path / "second.txt"} 2>&1')
    done = subprocess.run([*MOUNTNS, "--", "sh", "-c", script], env=env, capture_output=True, text=True, timeout=300)

    first, second = (tmp_path / "first.txt").read_text(), (tmp_path / "second.txt").read_text()
    assert done.returncode == 0, first + second
    # in the order they were made (a folder's name begins with its second, then a random part)
    jobs = sorted((tmp_path / "home" / ".cache" / "warmstart" / "drivework").glob("*/*"),
                  key=lambda job: json.loads((job / "job.json").read_text())["created"])
    queued = [[path.name for path in (job / "files" / "wheels").glob("*.whl")]
              + [name for name, *_ in json.loads((job / "job.json").read_text())["download"] or []] for job in jobs]
    assert len(jobs) == 2 and len(queued[0]) == 3 and queued[1] == [], queued
    assert json.loads((jobs[1] / "job.json").read_text())["snapshot"], "the second run's snapshot is queued"
    full = "Drive is full (on Colab: the Google Drive storage quota is used up)"
    assert f"the Drive writes of the last run stopped again: wheel alpha-1.0-py3-none-any.whl not cached on Drive: " \
           f"{full}" in second, second
    # the second run's worker, packing its snapshot: in those words too (it said "OSError: [Errno 28] ...")
    wait_until((jobs[1] / "failed.txt").is_file, 60, "the second run's worker did not stop")
    assert full in (jobs[1] / "failed.txt").read_text(), (jobs[1] / "failed.txt").read_text()
    assert locked_part_of(venv / "bin" / "python") == LOCKED


@needs_mountns
def test_a_drive_mounted_read_only_installs_and_leaves_no_drive_writes_to_fail(demo, tmp_path, index):
    """Drive on a file system mounted read-only (a read-only share, a container's `:ro` volume; here
    a read-only bind mount in a private mount namespace), writes left to the background: each
    run that installed left a job (the wheels, the snapshot to pack) whose worker failed on
    Drive, tried again by every later run, one more job on local disk each time. Now the run
    installs, says once why the cache is not filled, and leaves no job; the next run has nothing
    to do, and `status` says why nothing is written to Drive."""
    drive = tmp_path / "drive"
    (drive / "Demo").mkdir(parents=True)  # the recipe's workdir, there already (it cannot be made now)
    python = make_venv(tmp_path / "venv")
    env = cli_env(index.url, XDG_CACHE_HOME=str(tmp_path / "home" / ".cache"))
    env.pop("WARMSTART_WAIT")
    flags = ["--recipe", str(demo), "--drive", str(drive), "--python", str(python)]
    outputs = [tmp_path / f"{name}.txt" for name in ("first", "second", "status")]
    commands = [cli_command("bootstrap", *flags), cli_command("bootstrap", *flags), cli_command("status", *flags)]
    script = f'mount --bind "{drive}" "{drive}" && mount -o remount,bind,ro "{drive}" || exit 9; ' + "; ".join(
        f"{shlex.join(command)} > {out} 2>&1; echo $? >> {tmp_path / 'codes'}"
        for command, out in zip(commands, outputs, strict=True))
    done = subprocess.run([*MOUNTNS, "--", "sh", "-c", script], env=env, capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, done.stderr
    first, second, status = (out.read_text() for out in outputs)
    assert (tmp_path / "codes").read_text().split() == ["0", "0", "0"], first + second + status
    said = (f"warning: the Drive cache was not filled: {drive} is on a file system mounted read-only (on Colab, "
            "remount it by running this in a notebook cell: from google.colab import drive; "
            "drive.mount('/content/drive', force_remount=True))")
    assert said in first and "being written" not in first
    assert locked_part_of(python) == LOCKED
    assert not list((tmp_path / "home" / ".cache" / "warmstart" / "drivework").glob("*/*")), "no job left"
    assert "nothing to do" in second and "not filled" not in second
    assert f"drive     {drive} is on a file system mounted read-only" in status
    assert f"snapshot  none for a wiped VM in {drive}, and none is packed while it is mounted read-only" in status
    assert "bootstrap would: no-op" in status
    assert [p.name for p in drive.rglob("*")] == ["Demo"]


@needs_fuse
@pytest.mark.parametrize("failure", ["EIO", "ENOTCONN"])
def test_a_failing_drive_still_installs_and_says_what_it_means(demo, tmp_path, index, failure):
    """Drive behind bench/slowfs.py with every write failing (EIO: over quota; ENOTCONN: the
    FUSE mount dropped): the packages still install, the cache write is a warning."""
    backing = tmp_path / "backing"
    backing.mkdir()
    with slow_drive(backing, tmp_path / "drive", 0, 1000, fail_writes=failure) as mount:
        python = make_venv(tmp_path / "venv")

        result = bootstrap(demo, mount, python, env=cli_env(index.url))

        assert result.code == 0, result.stderr
        meaning = {"EIO": "Drive returned an I/O error (on Colab this often means the storage quota",
                   "ENOTCONN": "Drive was disconnected (Transport endpoint is not connected): remount it by "
                               "running this in a notebook cell: from google.colab import drive; "
                               f"drive.mount({str(mount)!r}, force_remount=True)"}[failure]
        assert meaning in result.stderr and "Traceback" not in result.stderr
        assert any(meaning in w for w in result.report["warnings"])
        assert locked_part_of(python) == LOCKED
