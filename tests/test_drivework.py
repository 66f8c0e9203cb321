"""Drive writes in the background: the command returns once the environment is usable, a
detached worker fills the Drive cache and packs the snapshot, and a wiped VM then restores from
Drive alone. A worker killed midway is finished by the next run. Real processes throughout; the
tests here drop the WARMSTART_WAIT=1 that the others run with."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import certifi
import pytest
from conftest import (
    INVOKE,
    LOCKED,
    REPO,
    bootstrap,
    cli_env,
    dead_url,
    installed,
    locked_part_of,
    make_venv,
    needs_fuse,
    needs_netns,
    proc_stat,
    run_cli,
    run_cli_on_hung_mount,
    serve_folder,
    slow_drive,
    wait_until,
)

from warmstart import drivework
from warmstart.disks import remount
from warmstart.errors import PreconditionUnmet


def background_env(index_url: str, home: Path, **extra: str) -> dict[str, str]:
    env = cli_env(index_url, XDG_CACHE_HOME=str(home / ".cache"), **extra)
    env.pop("WARMSTART_WAIT")
    return env


def jobs(home: Path) -> list[Path]:
    """The job folders of every target: drivework/<prefix hash>/<run>."""
    return sorted((home / ".cache" / "warmstart" / "drivework").glob("*/*"))


def a_job(tmp_path: Path, monkeypatch: Any) -> tuple[Path, Path, drivework.DriveWork]:
    """A Drive folder, a target's prefix and a job begun for them, in a warmstart home of the test's own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    drive, prefix = tmp_path / "drive", tmp_path / "venv"
    for folder in (drive, prefix):
        folder.mkdir()
    return drive, prefix, drivework.start(prefix, drive, prefix / "bin" / "python")


def wait_for_workers(home: Path, seconds: float = 120) -> None:
    wait_until(lambda: not jobs(home), seconds, lambda: f"the Drive work did not finish in {seconds} s: {jobs(home)}",
               every=0.1)


def wait_for_the_killed_worker(home: Path, drive: Path, seconds: float = 60) -> None:
    """Until the worker has been at work and is gone: the temporary file of its first Drive write
    is there (WARMSTART_FAULT=cache-write killed it right after), and the pid it recorded no
    longer runs its job."""
    parts = drive / ".warmstart" / "v1" / "wheels"

    def killed() -> bool:
        started = parts.is_dir() and any(parts.glob(".*.part"))
        return started and bool(jobs(home)) and not any(drivework._worker_alive(job) for job in jobs(home))

    wait_until(killed, seconds, f"no worker was seen writing to Drive and then killed within {seconds} s", every=0.05)


def on_drive(drive: Path, kind: str) -> list[str]:
    folder = drive / ".warmstart" / "v1" / kind
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


def status(demo: Path, drive: Path, python: Path, env: dict[str, str]) -> dict:
    return json.loads(run_cli("status", "--recipe", str(demo), "--drive", str(drive), "--python", str(python),
                              "--json", env=env).stdout)


@needs_netns
def test_the_run_returns_before_the_drive_writes_and_a_wiped_vm_then_restores_offline(demo, drive, tmp_path, index):
    home = tmp_path / "home"
    env = background_env(index.url, home)
    python = make_venv(tmp_path / "venv")

    cold = bootstrap(demo, drive, python, env=env)

    assert cold.code == 0, cold.stderr
    assert cold.report["drive_writes"] == "being written to Drive in the background"
    download = next(s for s in cold.report["steps"] if s["name"] == "download")
    assert download["detail"] == "uv fetches what Drive lacks while it installs"  # the environment first
    assert {k: v for k, v in installed(python).items() if k in LOCKED} == LOCKED  # usable now
    assert "the Drive cache and snapshot are being written in the background: `" in cold.stderr
    wait_for_workers(home)
    assert len(on_drive(drive, "wheels")) == 3 and len(on_drive(drive, "snapshots")) == 2
    assert status(demo, drive, python, env)["drive_writes"] is None
    # uv took every pin from the index: the snapshot records how long, for a restore to race on
    index = json.loads(next((drive / ".warmstart" / "v1" / "snapshots").glob("*.json")).read_text())
    install = next(s for s in cold.report["steps"] if s["name"] == "install")
    assert 0 < index["index_seconds"] <= install["seconds"] + 0.01

    wiped = make_venv(tmp_path / "wiped")
    restored = bootstrap(demo, drive, wiped, "--offline", env=env, offline_net=True)

    assert restored.code == 0, restored.stderr
    assert {k: v for k, v in installed(wiped).items() if k in LOCKED} == LOCKED


def test_a_run_that_leaves_its_worker_at_work_warns_of_nothing_in_pythons_development_mode(demo, drive, tmp_path,
                                                                                          index):
    """`python -X dev` (PYTHONDEVMODE=1) shows what Python warns of: the run let go of the worker's
    Popen while the worker ran on, "ResourceWarning: subprocess N is still running" on stderr
    (with the warning as an error, "Exception ignored in: <function Popen.__del__ ...>"). The
    worker is detached on purpose; subprocess reaps it all the same."""
    home = tmp_path / "home"
    env = background_env(index.url, home, PYTHONDEVMODE="1", PYTHONWARNINGS="error::ResourceWarning")

    cold = bootstrap(demo, drive, make_venv(tmp_path / "venv"), env=env)

    assert cold.code == 0, cold.stderr
    assert cold.report["drive_writes"] == "being written to Drive in the background"
    assert [line for line in cold.stderr.splitlines() if not line.startswith("warmstart: ")] == []
    wait_for_workers(home)
    assert len(on_drive(drive, "snapshots")) == 2


def test_a_run_that_queues_no_snapshot_says_only_the_cache_is_being_written(demo, drive, tmp_path, index):
    """A run that installs nothing packs no snapshot; it said "the Drive cache and snapshot are
    being written" all the same (here: the packages are in place, a new asset goes to Drive)."""
    home = tmp_path / "home"
    env = background_env(index.url, home)
    python = make_venv(tmp_path / "venv")
    assert bootstrap(demo, drive, python, "--wait", env=env).code == 0
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "model.bin").write_bytes(b"weights")
    url, server = serve_folder(tmp_path / "files")
    demo.write_text(demo.read_text() + f'\n[[assets]]\nurl = "{url}/model.bin"\n'
                    f'sha256 = "{hashlib.sha256(b"weights").hexdigest()}"\ndest = "model.bin"\n')
    try:
        again = bootstrap(demo, drive, python, env=env)
    finally:
        server.shutdown()

    assert again.code == 0, again.stderr
    assert "the Drive cache is being written in the background: `" in again.stderr
    assert "snapshot" not in again.stderr
    wait_for_workers(home)
    assert len(on_drive(drive, "assets")) == 1 and len(on_drive(drive, "snapshots")) == 2


def test_a_killed_worker_leaves_only_whole_files_and_the_next_run_finishes_its_work(demo, drive, tmp_path, index):
    home = tmp_path / "home"
    python = make_venv(tmp_path / "venv")

    # The worker inherits the fault: it is killed at its first Drive write, as a wiped VM would be.
    cold = bootstrap(demo, drive, python, env=background_env(index.url, home, WARMSTART_FAULT="cache-write"))
    assert cold.code == 0, cold.stderr
    wait_for_the_killed_worker(home, drive)
    found = status(demo, drive, python, background_env(index.url, home))
    shown = found["drive_writes"]

    assert shown and "cache filling: 0 of 3 files on Drive; snapshot pending" in shown, shown
    assert "finished by the next run" in shown
    # the snapshot a wiped VM restores is not on Drive yet, but the job left packs it
    assert found["cache"]["snapshot"]["found"] is None and found["cache"]["snapshot"]["queued"] is True
    lines = run_cli("status", "--recipe", str(demo), "--drive", str(drive), "--python", str(python),
                    env=background_env(index.url, home)).stdout
    assert f"\nsnapshot  none for a wiped VM in {drive} yet: the Drive writes below pack it\n" in lines, lines
    assert on_drive(drive, "wheels") == []  # nothing half-written under a real name

    again = bootstrap(demo, drive, python, "--wait", env=background_env(index.url, home))

    assert again.code == 0, again.stderr
    assert "Drive writes of the last run: cache filling: 0 of 3" in again.stderr
    assert again.report["changed"] is False, "what the worker left is on Drive now: nothing to download"
    assert not jobs(home) and len(on_drive(drive, "wheels")) == 3 and len(on_drive(drive, "snapshots")) == 2
    assert status(demo, drive, python, background_env(index.url, home))["cache"]["snapshot"] == {
        **found["cache"]["snapshot"], "found": "drive", "queued": False}
    check = run_cli("cache", "--drive", str(drive), "--verify", env=background_env(index.url, home))
    assert check.code == 0 and "damaged" not in check.stdout, check.stdout + check.stderr


def test_a_run_before_an_earlier_runs_drive_writes_are_done_leaves_them_to_that_run(demo, drive, tmp_path, index):
    """The same bootstrap again while the first run's Drive writes wait (its worker killed at its
    first write here; or simply still at work): the environment matches, so the run only restarts
    that worker and says so, as `status` said it would. It queues no job of its own for the same
    wheels: before, it fetched all three from the index for Drive a second time."""
    home = tmp_path / "home"
    python = make_venv(tmp_path / "venv")
    cold = bootstrap(demo, drive, python, env=background_env(index.url, home, WARMSTART_FAULT="cache-write"))
    assert cold.code == 0, cold.stderr
    wait_for_the_killed_worker(home, drive)
    looked = status(demo, drive, python, background_env(index.url, home))

    again = bootstrap(demo, drive, python, env=background_env(index.url, home))

    assert looked["action"] == "finish an earlier run's Drive writes", looked["action"]  # was "fill the Drive cache"
    assert again.code == 0, again.stderr
    assert "the environment already matches the lock: nothing to do" in again.stderr
    assert again.report["drive_writes"] == "", "nothing of its own for Drive"
    assert "Drive writes of an earlier run: cache filling: 0 of 3 files on Drive; snapshot pending" in again.stderr
    assert "` shows how far" in again.stderr
    wait_for_workers(home)  # the earlier run's, restarted
    assert len(on_drive(drive, "wheels")) == 3 and len(on_drive(drive, "snapshots")) == 2


def test_the_wheels_a_job_will_put_on_drive_are_those_of_its_drive_by_name_and_version(tmp_path, monkeypatch):
    """What a run leaves out of its own Drive fetch: the wheels an earlier job still has to fetch,
    has fetched, or copies from the team cache, for the same Drive; not another version of one
    (another recipe's, on the same target), and nothing for another Drive."""
    from packaging.version import Version

    from warmstart.tiered import TieredStore

    drive, prefix, work = a_job(tmp_path, monkeypatch)
    work.download = [["Alpha", "1.0", ["sha256:00"]]]
    work.from_team = [["gamma-3.0-py3-none-any.whl", ["sha256:11"]]]
    (work.folder / drivework.FILES / "wheels").mkdir(parents=True)
    (work.folder / drivework.FILES / "wheels" / "beta-2.0-py3-none-any.whl").write_bytes(b"fetched")
    (work.folder / drivework.FILES / "wheels" / ".delta-4.0-py3-none-any.whl.part").write_bytes(b"half")
    work.write_job(TieredStore.at(drive))

    assert drivework.queued_wheels(prefix, drive) == {("alpha", Version("1.0")), ("beta", Version("2.0")),
                                                      ("gamma", Version("3.0"))}
    assert drivework.queued_wheels(prefix, tmp_path / "another-drive") == frozenset()


def test_an_index_gone_as_the_worker_fetches_for_drive_keeps_those_wheels_queued_and_writes_the_rest(
        tmp_path, monkeypatch, index):
    """A run that took its wheels from the index with uv leaves the Drive work those wheels to
    fetch for Drive, beside what needs no index (the snapshot to pack, an asset: here an asset).
    With the index gone by then (a network that dropped), the worker stopped at the download, and
    nothing else of the job reached Drive until the index came back. Now the rest is written, the
    wheels stay queued and the failure is said (status shows it); the next run with the index
    fetches them. The worker's work is done here, on real wheels of an index on 127.0.0.1."""
    from packaging.version import Version

    from warmstart.download import IndexUnavailable
    from warmstart.tiered import TieredStore

    drive, prefix, work = a_job(tmp_path, monkeypatch)
    wheel = index.files / "alpha-1.0-py3-none-any.whl"
    work.download = [["alpha", "1.0", [hashlib.sha256(wheel.read_bytes()).hexdigest()]]]
    work.tags = ["py3-none-any"]
    (work.area("assets") / ("1" * 64)).write_bytes(b"model")
    work.write_job(TieredStore.at(drive))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")

    with pytest.raises(IndexUnavailable, match=r"cannot reach the package index http://127\.0\.0\.1:9/simple"):
        drivework.finish(work.folder, TieredStore.at(drive))

    assert on_drive(drive, "assets") == ["1" * 64], "what needs no index is on Drive"
    assert drivework.queued_wheels(prefix, drive) == {("alpha", Version("1.0"))}
    monkeypatch.setenv("PIP_INDEX_URL", index.url)
    drivework.finish(work.folder, TieredStore.at(drive))
    assert on_drive(drive, "wheels") == [wheel.name] and not work.folder.exists()


def test_a_run_the_drive_serves_goes_on_past_an_earlier_jobs_wheels_the_index_cannot_give(
        demo, filled_drive, tmp_path, monkeypatch, index):
    """A run that changes the environment first finishes an earlier run's Drive writes. One of
    them the index had to give, and the index is gone: the run ended there ("cannot reach the
    package index", exit 3), though Drive held all it needed. Now that job stays for a later run,
    with a warning, and the run installs from Drive."""
    from warmstart.tiered import TieredStore

    home = tmp_path / "home"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    python = make_venv(tmp_path / "venv")
    earlier = drivework.start(python.parent.parent, filled_drive, python)
    wheel = index.files / "beta-1.6-py3-none-any.whl"
    earlier.download = [["beta", "1.6", [hashlib.sha256(wheel.read_bytes()).hexdigest()]]]
    earlier.tags = ["py3-none-any"]
    earlier.write_job(TieredStore.at(filled_drive))

    result = bootstrap(demo, filled_drive, python, env=cli_env("http://127.0.0.1:9/simple", PIP_RETRIES="0",
                                                                   XDG_CACHE_HOME=str(home / ".cache")))

    assert result.code == 0, result.stderr
    assert {k: v for k, v in installed(python).items() if k in LOCKED} == LOCKED
    assert "warning: the Drive writes of the last run stopped again: cannot reach the package index" in result.stderr
    assert earlier.folder.is_dir(), "the job stays for a run with the index"


def test_a_damaged_job_file_is_passed_over_by_each_reader_and_left_where_it_is(tmp_path, monkeypatch):
    """A job file that is JSON but not the object a run writes (or no JSON at all): `pending`,
    `queued_wheels`, `settle` and `finish` pass over it, as over one finished meanwhile, and the
    job stays where it is. Before, JSON that was not an object raised AttributeError in each."""
    from warmstart.tiered import TieredStore

    drive, prefix, work = a_job(tmp_path, monkeypatch)
    work.download = [["alpha", "1.0", ["sha256:00"]]]
    store = TieredStore.at(drive)
    work.write_job(store)
    said: list[str] = []

    for damaged in ("[]", '"job"', "{not json"):
        (work.folder / drivework.JOB).write_text(damaged)
        assert drivework.pending(prefix) is None
        assert drivework.queued_wheels(prefix, drive) == frozenset()
        assert drivework.settle(prefix, store, said.append) is False
        drivework.finish(work.folder, store)
        assert (work.folder / drivework.JOB).read_text() == damaged
    assert said == []


def test_the_worker_runs_at_low_priority_and_is_the_first_the_oom_killer_ends(tmp_path):
    """A training that outgrows the VM's RAM while the worker packs a snapshot: the kernel ends the
    worker (its job stays for the next run) before the user's kernel. The real worker, started
    with the command a run starts it with, held where it reads its job (a FIFO), its process read
    from /proc."""
    folder = tmp_path / "job"
    folder.mkdir()
    os.mkfifo(folder / drivework.JOB)
    worker = subprocess.Popen([sys.executable, "-c", drivework._WORKER, json.dumps([p for p in sys.path if p]),
                               str(folder)], stderr=subprocess.PIPE, text=True)
    adjusted = Path(f"/proc/{worker.pid}/oom_score_adj")
    try:  # until it waits for its job (it ends only once the FIFO is written)
        wait_until(lambda: adjusted.read_text().strip() == "1000", 60,
                   lambda: f"oom_score_adj stayed {adjusted.read_text().strip()}")
        nice = int((proc_stat(worker.pid) or [])[16])
    finally:
        try:  # a job that is no object: it ends (exit 1)
            fd = os.open(folder / drivework.JOB, os.O_WRONLY | os.O_NONBLOCK)
            os.write(fd, b"[]")
            os.close(fd)
        except OSError:  # not reading it (yet, or any more): nothing would ever end it
            worker.kill()
        worker.communicate(timeout=60)

    assert nice == min(os.nice(0) + 10, 19)


def test_relative_paths_in_the_settings_reach_the_background_worker(demo, drive, tmp_path, index):
    """`--cache ../lab` and `PIP_CERT=ca.pem` from the notebook's folder: the Drive worker works in
    `/` (where no project's module shadows its imports), and those paths named nothing there: it
    stopped ("the team cache folder ../lab does not exist", "PIP_CERT=ca.pem is not a file"), and
    every Drive write of the run with it (the wheels, the snapshot, the team's copy)."""
    home, notebook, lab = tmp_path / "home", tmp_path / "notebook", tmp_path / "lab"
    notebook.mkdir()
    lab.mkdir()
    shutil.copy(certifi.where(), notebook / "ca.pem")  # read by no one here: the index is plain http
    python = make_venv(tmp_path / "venv")
    env = background_env(index.url, home, PIP_CERT="ca.pem")

    result = run_cli("bootstrap", "--recipe", str(demo), "--drive", str(drive), "--python", str(python), "--json",
                     "--cache", "../lab", env=env, cwd=notebook)

    assert result.code == 0, result.stderr
    assert result.report["team_cache"]["cache"] == str(lab)
    printed = result.stderr.split("written in the background: `", 1)[1].split("`", 1)[0]
    assert printed.endswith(f" status --recipe {demo} --drive {drive} --python {python} --cache {lab}")
    wait_for_workers(home)
    assert len(on_drive(drive, "wheels")) == 3 and len(on_drive(drive, "snapshots")) == 2
    assert len(on_drive(lab, "wheels")) == 3 and len(on_drive(lab, "snapshots")) == 2
    pasted = subprocess.run(["bash", "-c", printed], capture_output=True, text=True, cwd=REPO,
                            env=dict(env, PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"))
    assert pasted.returncode == 0, pasted.stdout + pasted.stderr
    assert f"\nteam      {lab}: " in pasted.stdout and "safe to shut down" in pasted.stdout


def test_with_uv_fetching_from_the_index_an_unreachable_index_is_still_named(demo, drive, tmp_path):
    env = background_env("http://127.0.0.1:9/simple", tmp_path / "home", PIP_RETRIES="0")

    result = bootstrap(demo, drive, make_venv(tmp_path / "venv"), "--installer", "uv", env=env)

    assert result.code == 3, result.stderr
    assert "cannot reach the package index http://127.0.0.1:9/simple" in result.report["error"]


@needs_netns
def test_an_offline_run_right_after_waits_for_the_drive_writes_it_needs(demo, drive, tmp_path, index):
    """README's second run: the same prefix, wiped and made again at once, offline: whatever the
    worker has not written yet is finished first, so the restore finds a whole cache."""
    home = tmp_path / "home"
    env = background_env(index.url, home)
    assert bootstrap(demo, drive, make_venv(tmp_path / "venv"), env=env).code == 0
    shutil.rmtree(tmp_path / "venv")
    python = make_venv(tmp_path / "venv")

    restored = bootstrap(demo, drive, python, "--offline", env=env, offline_net=True)

    assert restored.code == 0, restored.stderr
    assert {k: v for k, v in installed(python).items() if k in LOCKED} == LOCKED
    wait_for_workers(home)  # and what needed the index is done by the worker, which has it
    assert len(on_drive(drive, "wheels")) == 3


@needs_netns
def test_an_offline_run_waits_for_a_worker_still_fetching_from_the_index(demo, drive, tmp_path, index):
    """With uv the run installs straight from the index and leaves the wheels for the cache to its
    worker. An offline run right after (README's second run) must wait for that worker, even
    one that has not begun yet (made slow to start here by a sitecustomize), not give up."""
    home = tmp_path / "home"
    slow = tmp_path / "slow-worker"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(
        "import sys, time\nif any('/drivework/' in a for a in sys.argv[1:]): time.sleep(3)\n")
    env = background_env(index.url, home, PYTHONPATH=str(slow))
    first = bootstrap(demo, drive, make_venv(tmp_path / "venv"), "--installer", "uv", env=env)
    assert first.code == 0 and on_drive(drive, "wheels") == [], first.stderr
    shutil.rmtree(tmp_path / "venv")
    python = make_venv(tmp_path / "venv")

    restored = bootstrap(demo, drive, python, "--offline", "--installer", "uv", env=env, offline_net=True)

    assert restored.code == 0, restored.stderr
    assert "waiting for the last run's Drive worker" in restored.stderr
    assert {k: v for k, v in installed(python).items() if k in LOCKED} == LOCKED
    assert len(on_drive(drive, "wheels")) == 3
    wait_for_workers(home)  # no job folder left, not even one a late lock would make again


def test_the_status_line_a_run_prints_works_pasted_and_says_when_it_is_safe_to_shut_down(demo, drive, tmp_path, index):
    """The line the run prints, run as printed (with the run's own --drive, --python and
    --packages-only): exit 1 while Drive writes are pending, naming them; exit 0 and "safe to
    shut down" once the last is on Drive. The recipe has an asset that --packages-only leaves
    out: it does not count. The worker is killed at its first Drive write, so the pending state
    lasts until the next run finishes it."""
    demo.write_text(demo.read_text() + '\n[[assets]]\nurl = "https://example.invalid/m.onnx"\n'
                    f'sha256 = "{"0" * 64}"\ndest = "m.onnx"\n')
    home = tmp_path / "home"
    python = make_venv(tmp_path / "venv")

    cold = bootstrap(demo, drive, python, "--packages-only", env=background_env(index.url, home,
                                                                                WARMSTART_FAULT="cache-write"))

    assert cold.code == 0, cold.stderr
    printed = cold.stderr.split("written in the background: `", 1)[1].split("`", 1)[0]
    assert printed == f"{INVOKE} status --recipe {demo} --drive {drive} --python {python} --packages-only"
    env = background_env(index.url, home)

    def run_pasted() -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", printed], env=env, capture_output=True, text=True, cwd=REPO)

    wait_for_the_killed_worker(home, drive)
    during = run_pasted()
    assert during.returncode == 1, during.stdout + during.stderr
    assert "drive     cache filling: 0 of 3 files on Drive; snapshot pending" in during.stdout

    assert bootstrap(demo, drive, python, "--packages-only", "--wait", env=env).code == 0  # finishes it
    after = run_pasted()

    assert after.returncode == 0, after.stdout + after.stderr
    assert "drive     nothing left to write to Drive: safe to shut down" in after.stdout


@needs_fuse
@pytest.mark.parametrize("client", ["Google Drive's own", "another FUSE file system"])
def test_on_google_drives_own_client_safe_to_shut_down_waits_for_its_upload(demo, tmp_path, index, client):
    """Colab's Drive client (FUSE type fuse.drive) keeps what is written on the VM's disk and
    uploads it in the background, minutes later for hundreds of MB (colabtools#659, #2607): a
    VM shut down when warmstart's writes were done lost what was not up yet. There, the run
    (--wait) and `status` say it is safe to shut down once Drive has uploaded it, and name the
    cell that waits for that; `status --json` gives that cell as `drive_upload`. Google's client
    cannot run here: bench/slowfs.py mounted with its type stands in (anything else is as before)."""
    (tmp_path / "backing").mkdir()
    python = make_venv(tmp_path / "venv")
    flush = "from google.colab import drive; drive.flush_and_unmount()"
    with slow_drive(tmp_path / "backing", tmp_path / "mnt", 0, 1000,
                    subtype="drive" if client == "Google Drive's own" else None) as mount:
        env = cli_env(index.url)  # WARMSTART_WAIT=1: the writes are done as the run returns
        run = bootstrap(demo, mount, python, "--packages-only", env=env)
        asked = run_cli("status", "--recipe", str(demo), "--drive", str(mount), "--python", str(python),
                        "--packages-only", env=env)
        as_json = run_cli("status", "--recipe", str(demo), "--drive", str(mount), "--python", str(python),
                          "--packages-only", "--json", env=env)

    assert run.code == 0, run.stderr
    assert asked.code == 0 and as_json.code == 0, asked.stdout + asked.stderr
    line = next(line for line in asked.stdout.splitlines() if line.startswith("drive "))
    if client == "Google Drive's own":
        uploaded = (f"safe to shut down once Google Drive has uploaded it from this VM's disk, which it does in the "
                    f"background: `{flush}` in a cell waits for that (and unmounts Drive)")
        assert f"warmstart: the Drive cache and snapshot are written: {uploaded}" in run.stderr
        assert line == f"drive     nothing left to write to Drive: {uploaded}"
        assert json.loads(as_json.stdout)["drive_upload"] == flush
    else:
        assert "Google Drive has uploaded" not in run.stderr
        assert line == "drive     nothing left to write to Drive: safe to shut down"
        assert json.loads(as_json.stdout)["drive_upload"] is None


def test_the_status_line_works_pasted_outside_the_checkout_that_invoke_was_pointed_at(demo, drive, tmp_path, index):
    """`.venv/bin/invoke --search-root CHECKOUT bootstrap ...` run from another folder: the line
    it prints carries the search root, which a bare `invoke status` there would not find
    ("Can't find any collection named 'tasks'!")."""
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    elsewhere.mkdir()
    python = make_venv(tmp_path / "venv")
    program = str(Path(sys.executable).parent / "invoke")  # this virtualenv's, by its path
    env = background_env(index.url, home)

    cold = subprocess.run([program, "--search-root", str(REPO), "bootstrap", "--recipe", str(demo), "--drive", str(drive),
                           "--python", str(python)], env=env, capture_output=True, text=True, cwd=elsewhere, timeout=300)

    assert cold.returncode == 0, cold.stderr
    printed = cold.stderr.split("written in the background: `", 1)[1].split("`", 1)[0]
    assert printed.startswith(f"{program} --search-root {REPO} status --recipe {demo} ")
    wait_for_workers(home)
    pasted = subprocess.run(["bash", "-c", printed], env=env, capture_output=True, text=True, cwd=elsewhere, timeout=300)
    assert pasted.returncode == 0, pasted.stdout + pasted.stderr
    assert "safe to shut down" in pasted.stdout


def test_wheels_only_the_team_folder_holds_are_copied_to_drive_online_and_wait_offline(tmp_path):
    """A job's wheels to copy from the team cache (a shared folder here, a real store): offline
    they stay queued, job and all; online each is checked against its sha256 and put on Drive,
    and one that differs is not."""
    from warmstart.tiered import TieredStore

    team, drive = tmp_path / "team", tmp_path / "drive"
    for folder in (team, drive):
        folder.mkdir()
    wheels = {name: os.urandom(1000) for name in ("a-1.0-py3-none-any.whl", "b-1.0-py3-none-any.whl")}
    shared = TieredStore.at(team)
    for name, data in wheels.items():
        (tmp_path / name).write_bytes(data)
        assert shared.put("wheels", name, tmp_path / name)
    hashes = {name: hashlib.sha256(data).hexdigest() for name, data in wheels.items()}
    work = drivework.DriveWork(tmp_path / "job", drive)
    work.folder.mkdir()
    work.from_team = [["a-1.0-py3-none-any.whl", [hashes["a-1.0-py3-none-any.whl"]]],
                      ["b-1.0-py3-none-any.whl", ["0" * 64]]]  # not what the team folder holds

    work.write_job(TieredStore.at(drive))
    drivework.finish(work.folder, TieredStore.at(drive), offline=True)  # an offline run's, no team
    assert json.loads((work.folder / drivework.JOB).read_text())["from_team"] == work.from_team
    assert not (drive / ".warmstart" / "v1" / "wheels").is_dir(), "offline: nothing copied yet"

    drivework.finish(work.folder, TieredStore.at(drive, team=str(team)))
    assert not work.folder.exists(), "the job is done"
    on_drive = drive / ".warmstart" / "v1" / "wheels"
    assert sorted(p.name for p in on_drive.iterdir()) == ["a-1.0-py3-none-any.whl"]
    assert (on_drive / "a-1.0-py3-none-any.whl").read_bytes() == wheels["a-1.0-py3-none-any.whl"]


def test_a_job_left_with_only_the_team_usage_record_counts_and_is_finished_online(tmp_path, monkeypatch):
    """The team store's usage record, alone in a job an offline run (or a killed worker) left:
    `pending` counts it (so a no-op run restarts a worker on it and `status` names it) and an
    online finish writes it to the team cache (a shared folder here, a real store) and removes
    the job. Before, such a job counted for nothing and its folder stayed for good."""
    from warmstart.tiered import TieredStore

    drive, prefix, work = a_job(tmp_path, monkeypatch)
    team = tmp_path / "team"
    team.mkdir()
    work.team_usage = ["wheels/a-1.0-py3-none-any.whl", "snapshots/s.tar.zst"]
    work.write_job(TieredStore.at(drive))

    drivework.finish(work.folder, TieredStore.at(drive), offline=True)
    state = drivework.pending(prefix)
    assert state is not None and state.team_usage and not state.files_left and not state.snapshot
    assert "the team cache's usage record pending" in state.describe()

    drivework.finish(work.folder, TieredStore.at(drive, team=str(team)))
    assert drivework.pending(prefix) is None and not work.folder.exists()
    used, records = TieredStore.at(team).here.last_used()
    assert set(used) == set(work.team_usage) and len(records) == 1


def test_a_run_that_changes_the_environment_waits_for_drives_writes_not_for_the_team_caches(tmp_path, monkeypatch):
    """settle finishes an earlier run's Drive writes before the environment changes (a snapshot
    is of what it describes); a job left with the team cache's part alone (its copy of Drive's
    files can take minutes) touches neither, and is left to its worker. Here nothing holds the
    jobs, so a settle that took one would finish it at once."""
    from warmstart.tiered import TieredStore

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    team, drive, prefix = tmp_path / "team", tmp_path / "drive", tmp_path / "venv"
    for folder in (team, drive, prefix):
        folder.mkdir()
    store = TieredStore.at(drive, team=str(team))
    team_only = drivework.start(prefix, drive, prefix / "bin" / "python")
    team_only.team_share = {"wheels/a-1.0-py3-none-any.whl": ["0" * 64]}
    team_only.write_job(store)
    said: list[str] = []

    assert drivework.settle(prefix, store, said.append) is False and said == []
    assert team_only.folder.is_dir(), "left to its worker"
    assert "the team cache's copy of what Drive holds pending" in drivework.pending(prefix).describe()

    for_drive = drivework.start(prefix, drive, prefix / "bin" / "python")
    (for_drive.area("assets") / ("1" * 64)).write_bytes(b"model")
    for_drive.write_job(store)

    assert drivework.settle(prefix, store, said.append) is True
    assert not for_drive.folder.exists() and (drive / ".warmstart" / "v1" / "assets" / ("1" * 64)).is_file()
    assert team_only.folder.is_dir() and len(said) == 1 and "team cache" not in said[0], said


def test_a_run_that_changes_the_environment_waits_for_a_worker_at_drives_writes_only_as_long_as_the_lock_timeout(
        tmp_path, monkeypatch):
    """A worker held its job (writing to Drive or a team folder on a mount that stopped answering,
    where a write never returns), and settle waited on its lock for ever, the run's last words
    "finishing them first". It waits WARMSTART_LOCK_TIMEOUT, as for another run on the target,
    then ends (exit 3) with the way out; the job stays as it was, for its worker or a later run.
    The lock is held here as the worker holds it: a flock on the job's folder."""
    from warmstart.tiered import TieredStore

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("WARMSTART_LOCK_TIMEOUT", "1")
    drive, prefix = tmp_path / "drive", tmp_path / "venv"
    for folder in (drive, prefix):
        folder.mkdir()
    store = TieredStore.at(drive)
    job = drivework.start(prefix, drive, prefix / "bin" / "python")
    (job.area("assets") / ("1" * 64)).write_bytes(b"model")
    job.write_job(store)
    said: list[str] = []
    held = os.open(job.folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(PreconditionUnmet) as waited:
            drivework.settle(prefix, store, said.append)
    finally:
        os.close(held)

    assert str(waited.value).startswith("the Drive writes of the last run did not end in 1 s, and this run waits "
                                        "for them (a snapshot is of the environment it describes): let them "
                                        "finish and run again, or, if Drive stopped answering, on Colab remount "
                                        "it by running this in a notebook cell: from google.colab import drive; ")
    assert str(waited.value).endswith("; or set WARMSTART_LOCK_TIMEOUT to wait longer")
    assert said == ["Drive writes of the last run: cache filling: 0 of 1 file on Drive (being written now); finishing "
                    "them first"], said
    assert (job.folder / "job.json").is_file() and not (drive / ".warmstart" / "v1" / "assets").exists()


def a_drive_that_hangs_writing(tmp_path: Path, kind: str):
    """A Drive that answers every look and read, and no write to a file of its `kind` folder
    (bench/slowfs.py --hang-writes-in) until the test touches `answer` (a process caught in one
    can only end then): a Drive that stopped in the middle of the Drive work. The mount and its
    `answer`."""
    (tmp_path / "backing").mkdir()
    answer = tmp_path / "answer"
    return slow_drive(tmp_path / "backing", tmp_path / "drive", 0, 1000, hang_writes_in=f".warmstart/v1/{kind}",
                      until=answer), answer


def gave_up(drive: Path) -> str:
    """What a worker says once a small file's write (a wheel of the demo's, under 1 MiB) waited 2 s."""
    return (f"{drive} stopped answering (a write waited 2 s to end); this run reads nothing more from it (on "
            f"Colab, {remount(drive)})")


def stalled(drive: Path) -> str:
    """What a worker says once it wrote nothing for twice the timeout of 2 s (its own bound, for a
    large file's write)."""
    return (f"nothing was written for 4 s: a write to {drive} waits: Drive stopped answering; on Colab, remount it "
            "by running this in a notebook cell: from google.colab import drive; "
            f"drive.mount({str(drive)!r}, force_remount=True)")


@needs_fuse
def test_a_waited_run_whose_drive_stops_answering_mid_write_ends_and_the_next_run_finishes_the_job(
        demo, tmp_path, index):
    """`--wait` (here WARMSTART_WAIT=1) put the run's files on Drive itself, and a write to a Drive
    that stopped answering never returns: the run waited for ever, the environment long installed.
    Now a worker the run starts writes them and gives up once it wrote nothing for twice
    WARMSTART_DRIVE_TIMEOUT: the run ends (exit 0) with one warning, the job stays with why, its
    lock let go, and the next run on a Drive that answers finishes it. The write left waiting is
    the snapshot's archive, after the wheels: a large file, which the worker writes itself."""
    home = tmp_path / "home"
    env = cli_env(index.url, XDG_CACHE_HOME=str(home / ".cache"), WARMSTART_DRIVE_TIMEOUT="2")
    layer, answer = a_drive_that_hangs_writing(tmp_path, "snapshots")  # the archive
    with layer as mount:
        python = make_venv(tmp_path / "venv")
        flags = ["--recipe", str(demo), "--drive", str(mount), "--python", str(python)]

        result = run_cli_on_hung_mount("bootstrap", *flags, "--json", env=env, answer=answer)

        assert result.code == 0, result.stderr  # on the code before: still waiting at the helper's 60 s, killed
        assert result.report["warnings"] == [f"the Drive cache was not filled: {stalled(mount)}; the next run "
                                             "tries again"], result.stderr
        assert locked_part_of(python) == LOCKED
        [job] = jobs(home)
        assert (job / "failed.txt").read_text() == stalled(mount)
        assert drivework.pending(python.parent.parent, [job]).running is False, "its lock let go"
        pending = status(demo, mount, python, env)["drive_writes"]
        assert pending == f"snapshot pending (stopped ({stalled(mount)}); the next run tries again)", pending

        answer.touch()  # the worker caught in the write ends as its mount answers
        again = bootstrap(demo, mount, python, env=env)

        assert again.code == 0, again.stderr
        assert "Drive writes of the last run: snapshot pending" in again.stderr
        assert len(on_drive(mount, "snapshots")) == 2, "an index and its archive"
        assert len(on_drive(mount, "wheels")) == 3
        assert jobs(home) == [] and again.report["warnings"] == []


@needs_fuse
def test_a_worker_stalled_on_the_team_caches_folder_names_it_not_drive(demo, tmp_path, index):
    """The worker's stall said "Drive (or the team cache, or the package index) stopped answering",
    and a user remounted a Drive that answered. The write it waits in names the folder: here the
    snapshot's archive to a team cache folder that stopped answering (a child's write there: an
    archive under 1 MiB), and the run's warning and the job say the team cache's folder, no
    remount; so does `status`. (A large file's write in the worker's own process is found by its
    open file: the test of a waited run's Drive above.)"""
    home = tmp_path / "home"
    env = cli_env(index.url, XDG_CACHE_HOME=str(home / ".cache"), WARMSTART_DRIVE_TIMEOUT="2")
    layer, answer = a_drive_that_hangs_writing(tmp_path, "snapshots")
    drive = tmp_path / "own-drive"
    drive.mkdir()
    with layer as team:
        python = make_venv(tmp_path / "venv")

        result = run_cli_on_hung_mount("bootstrap", "--recipe", str(demo), "--drive", str(drive), "--python",
                                       str(python), "--cache", str(team), "--json", env=env, answer=answer)

        said = f"nothing was written for 4 s: a write to the team cache {team} waits: it stopped answering"
        assert result.code == 0, result.stderr
        assert result.report["warnings"] == [f"the Drive cache was not filled: {said}; the next run tries again"], \
            result.report["warnings"]  # on the code before: "Drive (or the team cache, ...) ... remount it ..."
        [job] = jobs(home)
        assert (job / "failed.txt").read_text() == said
        assert len(on_drive(drive, "wheels")) == 3, "Drive got its wheels first"
        pending = status(demo, drive, python, env)["drive_writes"]
        assert pending == (f"snapshot pending; the team cache's copy of what Drive holds pending (stopped ({said}); "
                           "the next run tries again)"), pending
        answer.touch()


@needs_fuse
def test_a_worker_whose_drive_stops_answering_mid_write_lets_its_job_go_and_the_next_run_is_not_held(
        demo, tmp_path, index):
    """A worker in the background, caught in a write to a Drive that stopped answering, held its
    job's lock for ever, and the next run that changes the environment (it finishes the last
    run's writes first) waited WARMSTART_LOCK_TIMEOUT, then ended; were the lock free, it waited
    in the same write itself. Now a small file's write (the demo's wheels) is a child's, given
    WARMSTART_DRIVE_TIMEOUT: the worker stops there and lets the job go, and the next run's own
    try ends as soon: a warning, and it goes on."""
    home = tmp_path / "home"
    env = background_env(index.url, home, WARMSTART_DRIVE_TIMEOUT="2")
    layer, answer = a_drive_that_hangs_writing(tmp_path, "wheels")  # each under 1 MiB
    with layer as mount:
        first = bootstrap(demo, mount, make_venv(tmp_path / "venv"), env=env)
        assert first.code == 0, first.stderr
        [job] = jobs(home)
        wait_until((job / "failed.txt").is_file, 30, "the worker did not give up")  # on the code before: it never did
        assert (job / "failed.txt").read_text() == gave_up(mount)

        shutil.rmtree(tmp_path / "venv")  # the VM wiped: the run makes it anew, the last run's writes first
        python = make_venv(tmp_path / "venv")
        result = run_cli_on_hung_mount("bootstrap", "--recipe", str(demo), "--drive", str(mount), "--python",
                                       str(python), "--json", env=env, answer=answer)

        assert result.code == 0, result.stderr
        assert f"warning: the Drive writes of the last run stopped again: {gave_up(mount)}" in result.stderr, \
            result.stderr
        assert locked_part_of(python) == LOCKED


@needs_fuse
def test_a_run_whose_drive_stops_answering_as_it_records_what_it_used_ends_all_the_same(demo, tmp_path, index):
    """Each run that changes something writes a usage record to Drive (prune keeps what a run
    used), on a thread while it works, and waited for that thread as it ended: with every write
    of a record left waiting (bench/slowfs.py --hang-writes-in), the run never ended. A child
    writes it now, given WARMSTART_DRIVE_TIMEOUT: then Drive is down for the run, and the
    environment is installed all the same (exit 0)."""
    (tmp_path / "backing").mkdir()
    answer = tmp_path / "answer"
    env = cli_env(index.url, XDG_CACHE_HOME=str(tmp_path / "home" / ".cache"), WARMSTART_DRIVE_TIMEOUT="2")
    with slow_drive(tmp_path / "backing", tmp_path / "drive", 0, 1000, hang_writes_in=".warmstart/v1/usage",
                    until=answer) as mount:
        python = make_venv(tmp_path / "venv")

        result = run_cli_on_hung_mount("bootstrap", "--recipe", str(demo), "--drive", str(mount), "--python",
                                       str(python), "--json", env=env, answer=answer)

        assert result.code == 0, result.stderr  # on the code before: still waiting at the helper's 60 s, killed
        assert result.report["warnings"] == [f"the Drive cache was not filled: {mount} stopped answering (a write "
                                             "waited 2 s to end); the next run writes it"], result.stderr
        assert locked_part_of(python) == LOCKED


def test_a_jobs_team_cache_that_runs_now_refuse_leaves_its_worker_writing_drives_part(tmp_path, monkeypatch, capsys):
    """A job an earlier warmstart wrote for `--cache DRIVE/.warmstart`, which runs now refuse (bad
    input): the worker says so and writes Drive's part, as for a team folder gone; the job does
    not stay failing run after run."""
    from warmstart.tiered import TieredStore

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    drive, prefix = tmp_path / "drive", tmp_path / "venv"
    for folder in (drive / ".warmstart", prefix):
        folder.mkdir(parents=True)
    work = drivework.start(prefix, drive, prefix / "bin" / "python")
    (work.area("assets") / ("1" * 64)).write_bytes(b"model")
    work.write_job(TieredStore.at(drive))
    job = json.loads((work.folder / "job.json").read_text())
    job["team"] = {"location": str(drive / ".warmstart"), "read_only": False, "borrow": []}
    (work.folder / "job.json").write_text(json.dumps(job))

    assert drivework.main([str(work.folder)]) == 0
    assert (drive / ".warmstart" / "v1" / "assets" / ("1" * 64)).read_bytes() == b"model"
    assert not work.folder.exists()
    said = capsys.readouterr().err
    assert "lies in the Drive cache's own folder" in said and "the team cache's part of this run's writes is left out" in said


def test_a_snapshot_goes_to_the_team_cache_only_as_its_index_names_it_and_checked_against_it(tmp_path, monkeypatch):
    """The team cache's copy of Drive's snapshots (drivework._share_with_team): an archive whose
    bytes match the sha256 its index states, under the name snapshot.pack gives it, goes there
    with its index; an index naming an archive otherwise (rewritten on Drive) shares nothing, and
    an archive whose bytes differ is set aside on Drive. Real folders on both sides."""
    from warmstart.store import DriveStore
    from warmstart.tiered import TieredStore

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    team, drive, prefix = tmp_path / "team", tmp_path / "drive", tmp_path / "venv"
    for folder in (team, drive, prefix):
        folder.mkdir()
    snapshots = drive / ".warmstart" / "v1" / "snapshots"
    snapshots.mkdir(parents=True)
    share = {}
    for stem, data, named in (("good", b"archive", None), ("renamed", b"other", "renamed-0000000000000000"),
                              ("damaged", b"bytes", None)):
        sha256 = hashlib.sha256(data).hexdigest()
        archive = f"{named or stem + '-' + sha256[:16]}.tar.zst"
        (snapshots / archive).write_bytes(data if stem != "damaged" else b"flipped")
        (snapshots / f"{stem}.json").write_text(json.dumps({"archive": archive, "sha256": sha256}))
        share[f"snapshots/{stem}.json"] = []
    work = drivework.start(prefix, drive, prefix / "bin" / "python")
    work.team_share = share
    work.write_job(TieredStore.at(drive))

    drivework.finish(work.folder, TieredStore.at(drive, team=str(team)))

    shared = sorted(p.name for p in (team / ".warmstart" / "v1" / "snapshots").iterdir())
    good = f"good-{hashlib.sha256(b'archive').hexdigest()[:16]}.tar.zst"
    assert shared == [good, "good.json"], shared
    assert (team / ".warmstart" / "v1" / "snapshots" / good).read_bytes() == b"archive"
    assert [p.name for p in snapshots.glob("damaged-*.damaged-*")], "set aside on Drive"
    assert not work.folder.exists() and DriveStore(drive).on_drive("snapshots", "renamed.json")


def test_a_job_whose_worker_has_not_yet_begun_is_being_written_not_left_for_the_next_run(tmp_path, monkeypatch):
    """A run hands its job to a worker and returns; `status` asked at once (the in-kernel call's
    is in-process, and fast) may find the worker started but not yet holding the job's lock. It
    is being written all the same. Before, that said "to be finished by the next run"."""
    from warmstart.tiered import TieredStore

    drive, prefix, work = a_job(tmp_path, monkeypatch)
    work.snapshot = {"stem": "s"}  # what is in it does not count here
    work.write_job(TieredStore.at(drive))
    # a worker as `spawn` leaves it: started on this job (its pid written), not yet at work
    worker = subprocess.Popen([sys.executable, "-c", "print(flush=True); import time; time.sleep(60)", str(work.folder)],
                              stdout=subprocess.PIPE)
    worker.stdout.readline()  # up: its command line is in place (not yet, while its exec is under way)
    (work.folder / drivework.PID).write_text(str(worker.pid))
    try:
        starting = drivework.pending(prefix)
    finally:
        worker.kill()
        worker.wait()
    gone = drivework.pending(prefix)

    assert starting is not None and starting.describe() == "snapshot pending (being written now)"
    assert gone is not None and gone.describe() == "snapshot pending (to be finished by the next run, or by one with --wait)"


# Looks at a target's jobs (`status` and every run do, through `pending`) until told to stop.
_LOOKER = """
import sys
from pathlib import Path
from warmstart import drivework
from warmstart.errors import PreconditionUnmet
prefix, stop = Path(sys.argv[1]), Path(sys.argv[2])
print("looking", flush=True)
while not stop.exists():
    drivework.pending(prefix)
"""


def test_a_look_at_a_job_as_its_worker_removes_it_leaves_nothing_behind(tmp_path, monkeypatch):
    """A run or `status` looks at each job's lock while a worker finishes the job and removes its
    folder. A look at that moment must neither fail nor make the folder again (taking a lock
    file in it did: filelock made a lock file's missing folder), else the job seems to linger.
    300 empty folders in each job make its removal slow enough that a look falls into it; 20
    jobs, one after the other. Before, about one job in four was left holding a lone `.lock`."""
    from warmstart.tiered import TieredStore

    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), PYTHONPATH=str(REPO))
    drive, prefix, stop = tmp_path / "drive", tmp_path / "venv", tmp_path / "stop"
    for folder in (drive, prefix):
        folder.mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", env["XDG_CACHE_HOME"])
    works = [drivework.start(prefix, drive, prefix / "bin" / "python") for _ in range(20)]
    for work in works:
        for k in range(300):
            (work.folder / drivework.FILES / f"empty{k}").mkdir(parents=True)
        work.write_job(TieredStore.at(drive))
    looker = subprocess.Popen([sys.executable, "-c", _LOOKER, str(prefix), str(stop)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert looker.stdout is not None and looker.stdout.readline() == "looking\n"

    for work in works:
        drivework.finish(work.folder, TieredStore.at(drive))
    stop.touch()
    _, errors = looker.communicate(timeout=60)

    assert looker.returncode == 0, errors
    left = sorted(drivework.jobs_of(prefix).iterdir())
    assert left == [], [sorted(p.name for p in folder.iterdir()) for folder in left]


def _restored_with_drive_lacking_its_wheels(demo: Path, drive: Path, tmp_path: Path, index_url: str) -> Path:
    """A snapshot on Drive without the wheels it was made of (pruned, or never written: the index
    won the race): a wiped VM's environment comes from the snapshot, its wheels only for Drive."""
    assert bootstrap(demo, drive, make_venv(tmp_path / "venv"), env=cli_env(index_url)).code == 0
    for wheel in (drive / ".warmstart" / "v1" / "wheels").iterdir():
        wheel.unlink()
    shutil.rmtree(tmp_path / "venv")  # a snapshot is of one prefix: the VM is made again alike
    return make_venv(tmp_path / "venv")


def test_wheels_for_drive_alone_that_a_waited_run_cannot_fetch_are_a_warning_not_a_failure(demo, drive, tmp_path,
                                                                                         index):
    """A --wait run whose snapshot restored the whole environment, with the index down: the
    download of the wheels Drive lacked ended the run with exit 3 ("cannot reach the package
    index"), though its environment was whole. It is a warning, as a Drive that cannot be written
    is, and the next run with the index fills Drive."""
    python = _restored_with_drive_lacking_its_wheels(demo, drive, tmp_path, index.url)

    restored = bootstrap(demo, drive, python, env=cli_env("http://127.0.0.1:9/simple"))  # WARMSTART_WAIT=1

    assert restored.code == 0, restored.stderr
    assert {k: v for k, v in installed(python).items() if k in LOCKED} == LOCKED
    [warning] = restored.report["warnings"]
    assert warning.startswith("the Drive cache was not filled with 3 wheels (the environment has them already): "
                              "cannot reach the package index http://127.0.0.1:9/simple"), warning
    assert warning.endswith("; the next run fetches them")
    assert on_drive(drive, "wheels") == []
    again = bootstrap(demo, drive, python, env=cli_env(index.url))
    assert again.code == 0 and again.report["warnings"] == [], again.stderr
    assert len(on_drive(drive, "wheels")) == 3


def test_wheels_for_drive_alone_are_fetched_after_the_run_whatever_the_installer(demo, drive, tmp_path, index):
    """With pip, a run whose snapshot restored the whole environment downloaded the wheels Drive
    lacked before it returned, though the environment needed none of them: the Drive work
    fetches them after it, as it does for uv's."""
    python = _restored_with_drive_lacking_its_wheels(demo, drive, tmp_path, index.url)
    home = tmp_path / "home"

    restored = bootstrap(demo, drive, python, "--installer", "pip", env=background_env(index.url, home))

    assert restored.code == 0, restored.stderr
    assert {k: v for k, v in installed(python).items() if k in LOCKED} == LOCKED
    [download] = [step for step in restored.report["steps"] if step["name"] == "download"]
    assert (download["status"], download["detail"]) == ("skipped", "fetched for Drive after this run")
    wait_for_workers(home)
    assert len(on_drive(drive, "wheels")) == 3


@needs_fuse
def test_a_small_file_a_run_puts_on_a_drive_that_stopped_answering_is_given_up_on_in_the_drive_timeout(tmp_path):
    """A run puts a few small files on Drive itself (a lock made on the VM for its drifted
    runtime, its usage record): in its own process, a write to a Drive that stopped answering
    never returned, and the run with it. A child writes each now, given the Drive's timeout:
    then Drive is down for the run (one warning), and nothing more is written to it."""
    from warmstart.store import CacheStats, DriveStore

    (tmp_path / "backing").mkdir()
    answer = tmp_path / "answer"
    lock = tmp_path / "demo-py311-live.txt"
    lock.write_text("alpha==1.0 --hash=sha256:" + "0" * 64 + "\n")
    with slow_drive(tmp_path / "backing", tmp_path / "drive", 0, 1000, hang_writes_in=".warmstart/v1/locks",
                    until=answer) as mount:
        store = DriveStore(mount, CacheStats(), timeout=1)
        putting = threading.Thread(target=lambda: put.append(store.put("locks", lock.name, lock)), daemon=True)
        put: list[bool] = []
        putting.start()
        putting.join(30)
        answer.touch()  # a write left waiting ends now (on the code before: the put itself)

        assert put == [False], "given up on in the Drive's timeout"  # on the code before: still waiting at 30 s
        assert store.down == f"{mount} stopped answering (a write waited 1 s to end)"
        assert store.warnings == [f"{store.down}; this run reads nothing more from it (on Colab, {remount(mount)})"]
        assert store.put("locks", "another.txt", lock) is False and len(store.warnings) == 1, "nothing more"


def test_a_worker_started_on_a_job_as_its_folder_is_removed_leaves_no_folder(tmp_path, monkeypatch):
    """An offline run waits for the last run's worker until its pid file goes, then starts a worker
    of its own on the job (finish_watched), whose log is opened by the job's folder name. The
    first worker was removing the folder then: its rmtree, past the log's name already, could not
    remove the folder the log was made in again, and a job folder with a log alone stayed (CI:
    `wait_for_workers` timed out). Here the log is opened just as the folder itself is removed,
    the last step of rmtree; the folder is renamed away before its removal now."""
    from warmstart.tiered import TieredStore

    drive, _, work = a_job(tmp_path, monkeypatch)
    (work.area("assets") / ("1" * 64)).write_bytes(b"model")
    work.write_job(TieredStore.at(drive))
    rmdir = os.rmdir

    def a_run_starts_its_worker_first(path: Any, *args: Any, **kwargs: Any) -> None:
        if work.folder.name in Path(path).name:  # the job's folder itself (or, renamed away, .NAME.gone)
            try:
                os.close(os.open(work.folder / "worker.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND))
            except FileNotFoundError:
                pass  # no folder by that name: the worker's start says the job is done
        rmdir(path, *args, **kwargs)
    monkeypatch.setattr(os, "rmdir", a_run_starts_its_worker_first)

    drivework.finish(work.folder, TieredStore.at(drive))

    assert on_drive(drive, "assets") == ["1" * 64]
    assert list(work.folder.parent.iterdir()) == [], "no job folder, nor one renamed away, is left"
    drivework.finish_watched(work.folder, TieredStore.at(drive))  # the run's own try, later still: nothing to do
    assert list(work.folder.parent.iterdir()) == []


@pytest.mark.parametrize("the_runs_read_fails", ["before the worker's answer is taken in", "after"])
def test_a_team_cache_down_for_the_run_and_for_its_watched_worker_is_said_once(tmp_path, monkeypatch, the_runs_read_fails):
    """A restore that Drive finished first leaves the team store's read of a part under way; the
    run hands its writes to a worker it waits for (WARMSTART_WAIT) with the team store not yet
    down, the worker finds it down too, and the read then fails, before the worker answered or
    after. One warning, either way (the run said two, CI saw it). Here the team cache is an S3
    bucket at a port nothing listens on, so every request of the run's and the worker's fails;
    the abandoned read's failure is the run's own `_failed`, called at those two moments."""
    from warmstart.team import ObjectStore
    from warmstart.tiered import TieredStore

    drive, _, work = a_job(tmp_path, monkeypatch)
    for var, value in {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ENDPOINT_URL": dead_url(), "AWS_MAX_ATTEMPTS": "1", "WARMSTART_TEAM_TIMEOUT": "10"}.items():
        monkeypatch.setenv(var, value)
    (work.area("assets") / ("1" * 64)).write_bytes(b"model")
    store = TieredStore.at(drive)
    store.put_behind("s3://bucket/team")
    team = store.team
    assert isinstance(team, ObjectStore) and not team.down
    work.write_job(store)

    def the_read_fails() -> None:
        team._failed("reading part 2 of the snapshot", ConnectionResetError(104, "Connection reset by peer"))

    waited = drivework._answer_of

    def answered_while_the_read_failed(*args: Any) -> dict[str, Any]:
        said = waited(*args)
        if the_runs_read_fails != "after":  # as the worker wrote: the run has not looked at the store since
            the_read_fails()
        return said
    monkeypatch.setattr(drivework, "_answer_of", answered_while_the_read_failed)

    drivework.finish_watched(work.folder, store)
    if the_runs_read_fails == "after":
        the_read_fails()

    down = [w for w in store.warnings if "cannot be used" in w]
    assert len(down) == 1, store.warnings
    assert team.down and on_drive(drive, "assets") == ["1" * 64], "Drive's writes went on"
