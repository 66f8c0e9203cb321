"""Environment snapshots: one archive on Drive, restored so that pip and importlib.metadata cannot
tell it from a pip install; damaged or foreign snapshots fall back to the wheels."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import bootstrap, cli_env, installed, make_venv, needs_fuse, needs_mountns, run_cli, slow_drive

from warmstart import snapshot, target
from warmstart.background import ChildRead
from warmstart.headstart import FOLDER_PREFIX
from warmstart.readahead import ReadAhead
from warmstart.store import DriveStore

PLAIN = {"beta": "2.0", "gpu-build": "1.0"}
SITE = f"lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"  # a venv of this Python's


@pytest.fixture
def plain(demo, index) -> Path:
    """A recipe without excludes, so that `pip check` has nothing to miss."""
    (demo.parent.parent / "requirements" / "demo.in").write_text("beta\ngpu-build\n")
    demo.write_text(demo.read_text().replace('exclude = ["cpu-only"]', "exclude = []"))
    assert run_cli("lock", "--recipe", str(demo), env=cli_env(index.url)).code == 0
    return demo


@pytest.fixture
def env(index):
    return cli_env(index.url)


def pip(python: Path, *args: str, env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "--python", str(python), *args], env=env,
                          capture_output=True, text=True)


def snapshots(drive: Path) -> list[Path]:
    return sorted((drive / ".warmstart" / "v1" / "snapshots").iterdir())


@pytest.fixture
def packed(plain, drive, tmp_path, env):
    """A Drive whose snapshot was made by a cold bootstrap into `venv`, which is then wiped
    (a snapshot is keyed by the target's prefix: a new VM has the same one, like /usr)."""
    cold = bootstrap(plain, drive, make_venv(tmp_path / "venv"), env=env)
    assert cold.code == 0, cold.stderr
    assert cold.report["drive_writes"] == "written to Drive"  # the snapshot with them (WARMSTART_WAIT=1)
    assert len(snapshots(drive)) == 2, "an archive and its index"
    (tmp_path / "reference").write_text(json.dumps(installed(tmp_path / "venv" / "bin" / "python")))
    shutil.rmtree(tmp_path / "venv")
    return drive


def test_restore_replaces_an_older_version_and_is_indistinguishable_from_pip(plain, packed, tmp_path, env, index):
    python = make_venv(tmp_path / "venv")
    assert pip(python, "install", "--quiet", "--index-url", index.url, "beta==1.0", env=env).returncode == 0

    planned = bootstrap(plain, packed, python, "--dry-run", env=env)
    result = bootstrap(plain, packed, python, env=env)

    assert "replaces beta 1.0 with 2.0" in planned.stderr, "a version the environment had is never replaced silently"
    said, changed = result.stderr.index("replaces beta 1.0 with 2.0"), result.stderr.index("warmstart: snapshot ")
    assert said < changed, "said before anything changes"
    assert result.code == 0, result.stderr
    assert result.report["snapshot"]["used"] is True
    assert not [s for s in result.report["steps"] if s["name"] == "install" and s["status"] != "skipped"]
    site = next((tmp_path / "venv" / "lib").glob("python3*/site-packages"))
    assert not (site / "beta-1.0.dist-info").exists(), "the replaced version must be gone"
    assert subprocess.run([str(python), "-c", "import beta; assert beta.__version__ == '2.0'"]).returncode == 0
    assert installed(python) == json.loads((tmp_path / "reference").read_text()) == PLAIN
    listed = json.loads(pip(python, "list", "--format=json", env=env).stdout)
    assert {d["name"]: d["version"] for d in listed} == PLAIN
    assert pip(python, "check", env=env).returncode == 0
    script = subprocess.run([str(tmp_path / "venv" / "bin" / "gpu-build")], capture_output=True, text=True)
    assert script.stdout.strip() == "gpu-build 1.0", "console scripts keep working"
    for record in site.glob("*.dist-info/RECORD"):  # written anew: each row as the file is
        for path, stated, size in csv.reader(record.read_text().splitlines()):
            if stated:
                data = (site / path).read_bytes()
                assert (stated, int(size)) == (target.record_hash(data), len(data)), path

    assert pip(python, "uninstall", "--yes", "beta", env=env).returncode == 0
    assert not (site / "beta").exists() and not (site / "beta-2.0.dist-info").exists()


@needs_fuse
def test_a_restore_writes_its_usage_record_on_drive_while_it_reads_the_archive(plain, packed, tmp_path, env):
    """Drive's usage record (what prune keeps) names the snapshot and the cached wheels the lock
    uses, and is written once the plan is made, while the archive is read: not after the restore,
    where a Drive write would wait at the end of the run. Drive is the FUSE stand-in, whose reads
    past the first KiB of a file (the archive's, not its index's) answer only once a usage record
    is there: a record written after the restore would leave that read waiting until the Drive
    timeout (10 s here) gave the snapshot up."""
    usage = packed / ".warmstart" / "v1" / "usage"
    for record in usage.iterdir():  # the packing run's: the gate waits for this run's
        record.unlink()
    index, archive = sorted(snapshots(packed), key=lambda p: p.name.endswith(".tar.zst"))
    assert index.stat().st_size < 1024 < archive.stat().st_size
    python = make_venv(tmp_path / "venv")

    with slow_drive(packed, tmp_path / "mount", 0, 1000, hang_after=1024, until=usage / "*.json") as mount:
        result = bootstrap(plain, mount, python, "--offline", env=dict(env, WARMSTART_DRIVE_TIMEOUT="10"))

    assert result.code == 0 and result.report["snapshot"]["used"] is True, result.stderr
    (record,) = usage.iterdir()
    used = json.loads(record.read_text())["used"]
    assert {k.split("/")[0] for k in used} >= {"snapshots", "wheels"}, used


def test_damaged_archive_falls_back_to_wheels_and_is_set_aside(plain, packed, tmp_path, env):
    archive = next(p for p in snapshots(packed) if p.name.endswith(".tar.zst"))
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))

    result = bootstrap(plain, packed, make_venv(tmp_path / "venv"), env=env)

    assert result.code == 0, result.stderr
    assert result.report["snapshot"]["used"] is False
    assert "damaged" in result.report["snapshot"]["reason"]
    assert result.report["installed"] == PLAIN
    names = [p.name for p in snapshots(packed)]
    assert any(".damaged-" in n for n in names), "the damaged archive is kept aside, not deleted"
    assert any(n.endswith(".tar.zst") for n in names), "a fresh snapshot replaces it"


def test_an_archive_whose_bytes_differ_where_no_file_lies_is_caught_by_its_frames_checksum(plain, packed, tmp_path, env):
    """A restore from Drive alone does not hash the whole archive (its files' hashes are the
    check); the zstd frame's own checksum catches damage that changes no file. Here its last
    byte, the checksum's own, is flipped and the index made to vouch for the result."""
    index_file, archive = sorted(snapshots(packed), key=lambda p: p.name.endswith(".tar.zst"))
    data = bytearray(archive.read_bytes())
    data[-1] ^= 0xFF
    archive.write_bytes(bytes(data))
    index = json.loads(index_file.read_text())
    index.update(sha256=hashlib.sha256(data).hexdigest())
    index.pop("parts")  # they would disagree; an index need not list them
    index_file.write_text(json.dumps(index))

    result = bootstrap(plain, packed, make_venv(tmp_path / "venv"), env=env)

    assert result.code == 0, result.stderr
    assert result.report["snapshot"]["used"] is False
    assert "is damaged (ZstdError" in result.report["snapshot"]["reason"], result.report["snapshot"]
    assert "checksum" in result.report["snapshot"]["reason"], result.report["snapshot"]
    assert result.report["installed"] == PLAIN


def test_snapshot_made_for_another_python_is_not_used(plain, packed, tmp_path, env):
    index_file = next(p for p in snapshots(packed) if p.name.endswith(".json"))
    index = json.loads(index_file.read_text())
    index["facts"]["python"] = "3.12.0"
    index_file.write_text(json.dumps(index))

    result = bootstrap(plain, packed, make_venv(tmp_path / "venv"), env=env)

    assert result.code == 0, result.stderr
    assert result.report["snapshot"]["used"] is False
    assert "made for another target" in result.report["snapshot"]["reason"] and "3.12.0" in result.report["snapshot"]["reason"]
    assert result.report["installed"] == PLAIN


def test_a_lock_made_again_with_the_same_pins_keeps_its_snapshot(plain, packed, tmp_path, env):
    """A snapshot is keyed by what its lock installs (the lock's body), not by its header: an `.in`
    given a comment makes the lock stale, and the lock made again holds the same pins under a new
    inputs digest. The wiped VM restores the snapshot packed before, rather than installing from
    the wheels and packing another."""
    lock = next((plain.parent.parent / "requirements").glob("demo-py*.txt"))
    before = lock.read_text()
    requirements_in = plain.parent.parent / "requirements" / "demo.in"
    requirements_in.write_text(requirements_in.read_text() + "# pinned by the lock\n")
    assert run_cli("lock", "--recipe", str(plain), env=env).code == 0
    after = lock.read_text()
    assert after != before and after.split("# lock-sha256: ")[1] == before.split("# lock-sha256: ")[1]

    result = bootstrap(plain, packed, make_venv(tmp_path / "venv"), env=env)

    assert result.code == 0, result.stderr
    assert result.report["snapshot"]["used"] is True, result.report["snapshot"]
    assert result.report["installed"] == PLAIN
    assert len(snapshots(packed)) == 2, "no second snapshot packed"


@pytest.mark.parametrize("tool", ["pip", "uv"])
def test_installer_can_be_chosen(plain, drive, tmp_path, env, tool):
    python = make_venv(tmp_path / "venv")

    result = bootstrap(plain, drive, python, "--installer", tool, env=env)

    assert result.code == 0, result.stderr
    assert result.report["installer"] == tool
    assert installed(python) == PLAIN
    installer_file = next((tmp_path / "venv" / "lib").glob("python3*/site-packages/beta-2.0.dist-info/INSTALLER"))
    assert installer_file.read_text().strip() == tool


def test_uv_set_to_link_from_its_cache_still_installs_files_a_snapshot_holds(plain, drive, tmp_path, env):
    """A user's UV_LINK_MODE=symlink had uv install links into warmstart's own uv cache: an
    environment that broke with that folder, and no snapshot ("... is not a file")."""
    python = make_venv(tmp_path / "venv")

    result = bootstrap(plain, drive, python, env=env | {"UV_LINK_MODE": "symlink"})

    assert result.code == 0 and result.report["installer"] == "uv", result.stderr
    assert not [p for p in (tmp_path / "venv").rglob("*") if p.is_symlink() and "site-packages" in p.parts]
    assert len(snapshots(drive)) == 2, result.stderr


def test_unknown_installer_is_bad_input_before_any_step(plain, tmp_path, env):
    """As every bad flag is: not after the recipe, the target, the GPU and the lock were looked at
    (it was said under the `cache` step)."""
    result = bootstrap(plain, tmp_path, make_venv(tmp_path / "venv"), "--installer", "conda", env=env)
    assert result.code == 2
    assert result.stderr.splitlines() == ["warmstart: error: --installer must be auto, pip or uv, got 'conda'"]


# --- a snapshot rewritten by someone with write access to the store ----------------------------

def rewrite(drive: Path, change, then=None) -> None:
    """Rewrite the snapshot as an attacker with write access to the store would: unpack the
    archive, `change(folder)`, pack it again (`then(tar, folder)` adds members at its end) and
    make its index vouch for the new archive (its sha256 and size), so that only the lock can tell."""
    import tarfile

    import zstandard

    folder = snapshots(drive)[0].parent
    index_file = next(p for p in folder.iterdir() if p.name.endswith(".json"))
    index = json.loads(index_file.read_text())
    tree = folder.parent / "unpacked"
    with zstandard.open(folder / index["archive"], "rb") as fh, tarfile.open(fileobj=fh, mode="r|") as tar:
        tar.extractall(tree, filter="tar")
    change(tree)
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w|") as tar:
        for where, dirs, files in os.walk(tree):  # links are packed as links, never followed
            for name in sorted([*dirs, *files]):
                path = Path(where) / name
                tar.add(path, arcname=str(path.relative_to(tree)), recursive=False)
        if then:
            then(tar, tree)
    data = zstandard.ZstdCompressor().compress(plain.getvalue())
    (folder / index["archive"]).write_bytes(data)
    index.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data), tar_bytes=len(plain.getvalue()),
                 parts=[hashlib.sha256(data[i:i + index["part_size"]]).hexdigest()
                        for i in range(0, len(data), index["part_size"])])
    index_file.write_text(json.dumps(index))
    shutil.rmtree(tree)


def site_of(tree: Path) -> Path:
    return next(tree.glob("lib/python3*/site-packages"))


def add_startup_code(tree: Path) -> None:  # a .pth file runs at every interpreter start
    (site_of(tree) / "zz-evil.pth").write_text("import os; os.system('touch /tmp/pwned')\n")


def add_startup_code_to_a_record(tree: Path) -> None:
    add_startup_code(tree)
    record = site_of(tree) / "beta-2.0.dist-info" / "RECORD"
    record.write_text(record.read_text() + "zz-evil.pth,,\n")


def name_a_file_outside_in_a_record(tree: Path) -> None:  # an absolute path, as pip would honour it
    record = site_of(tree) / "beta-2.0.dist-info" / "RECORD"
    record.write_text(record.read_text() + "/etc/hostname,,\n")


def change_a_module(tree: Path) -> None:
    (site_of(tree) / "beta" / "__init__.py").write_text("__version__ = '2.0'\nimport os\n")


def add_a_link(tree: Path) -> None:  # a folder a wheel never holds, pointing anywhere
    (site_of(tree) / "shadow").symlink_to("/tmp")


def add_bytecode(tree: Path) -> None:
    cache = site_of(tree) / "beta" / "__pycache__"
    cache.mkdir()
    (cache / "__init__.cpython-311.pyc").write_bytes(b"\x00" * 16)


@pytest.mark.parametrize(("change", "why"), [
    (add_startup_code, "/site-packages/zz-evil.pth, which no locked wheel installs"),
    (add_startup_code_to_a_record, "the files of beta are not those of the wheel the lock names"),
    (change_a_module, "the files of beta are not those of the wheel the lock names"),
    (name_a_file_outside_in_a_record, "RECORD names '/etc/hostname', outside the environment"),
    (add_bytecode, "which no locked wheel installs"),
    (add_a_link, f"it holds a link, {SITE}/shadow"),
])
def test_a_rewritten_snapshot_is_refused_set_aside_and_the_wheels_install(plain, packed, tmp_path, env, change, why):
    rewrite(packed, change)
    python = make_venv(tmp_path / "venv")

    result = bootstrap(plain, packed, python, env=env)

    assert result.code == 0, result.stderr
    assert result.report["snapshot"]["used"] is False
    assert "does not match the lock" in result.report["snapshot"]["reason"]
    assert why in result.report["snapshot"]["reason"]
    assert sum("installing from the wheels instead" in w for w in result.stderr.splitlines()) == 1
    assert result.report["installed"] == PLAIN
    site = site_of(tmp_path / "venv")
    assert not (site / "zz-evil.pth").exists() and "import os" not in (site / "beta" / "__init__.py").read_text()
    assert any(".damaged-" in p.name for p in snapshots(packed)), "the rewritten snapshot is set aside"


def test_a_file_unpacked_twice_is_refused_though_its_first_copy_matched_the_lock(plain, packed, tmp_path, env):
    """Files are hashed as they are unpacked (a head start on the check): a second member over a
    file already hashed must not ride on the first one's hash."""
    def overwrite_after(tar, tree) -> None:
        module = site_of(tree) / "beta" / "__init__.py"
        evil = b"__version__ = '2.0'\nimport os\n"
        info = tar.gettarinfo(module, arcname=str(module.relative_to(tree)))
        info.size = len(evil)
        tar.addfile(info, io.BytesIO(evil))

    rewrite(packed, lambda tree: None, then=overwrite_after)
    python = make_venv(tmp_path / "venv")

    result = bootstrap(plain, packed, python, env=env)

    assert result.code == 0, result.stderr
    assert result.report["snapshot"]["used"] is False
    assert f"holds {SITE}/beta/__init__.py twice" in result.report["snapshot"]["reason"]
    assert "import os" not in (site_of(tmp_path / "venv") / "beta" / "__init__.py").read_text()
    assert result.report["installed"] == PLAIN


def test_a_snapshot_that_asks_the_decoder_for_more_memory_than_warmstart_allows_is_refused(plain, packed, tmp_path, env):
    """Decoding a zstd frame takes memory about its window: an archive whose frame asks for a
    larger window than warmstart writes is refused, whatever its index says."""
    import zstandard

    from warmstart.snapshot import WINDOW_LOG

    folder = snapshots(packed)[0].parent
    index_file = next(p for p in folder.iterdir() if p.name.endswith(".json"))
    index = json.loads(index_file.read_text())
    archive = folder / index["archive"]
    tar = zstandard.ZstdDecompressor().decompressobj().decompress(archive.read_bytes())
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=WINDOW_LOG + 2, enable_ldm=True)
    out = io.BytesIO()
    with zstandard.ZstdCompressor(compression_params=params).stream_writer(out, closefd=False) as writer:
        writer.write(tar)  # streamed, its size unknown: the frame keeps the window it was given
    data = out.getvalue()
    assert zstandard.get_frame_parameters(data).window_size > 1 << WINDOW_LOG
    archive.write_bytes(data)
    index.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    index_file.write_text(json.dumps(index))

    result = bootstrap(plain, packed, make_venv(tmp_path / "venv"), env=env)

    assert result.code == 0, result.stderr
    assert result.report["snapshot"]["used"] is False
    assert "is damaged (ZstdError" in result.report["snapshot"]["reason"], result.report["snapshot"]
    assert result.report["installed"] == PLAIN


@pytest.mark.parametrize(("field", "why"), [
    ("tar_bytes", "it unpacks to more than the"),  # it would unpack more than its index says
    ("size", "is longer than the"),  # it holds more bytes than its index says
])
def test_a_snapshot_bigger_than_its_index_says_is_cut_short_and_refused(plain, packed, tmp_path, env, field, why):
    def grow(tree: Path) -> None:
        (site_of(tree) / "beta" / "padding.bin").write_bytes(b"\0" * (8 << 20))

    rewrite(packed, grow)
    index_file = next(p for p in snapshots(packed) if p.name.endswith(".json"))
    index = json.loads(index_file.read_text())
    index[field] -= 4 << 20 if field == "tar_bytes" else 100
    index_file.write_text(json.dumps(index))
    python = make_venv(tmp_path / "venv")

    result = bootstrap(plain, packed, python, env=env)

    assert result.code == 0, result.stderr
    assert result.report["snapshot"]["used"] is False and why in result.report["snapshot"]["reason"]
    assert not list((tmp_path / "venv").glob(".warmstart-restore-*")), "the staging folder is gone"
    assert result.report["installed"] == PLAIN


def test_console_scripts_from_a_snapshot_are_written_anew(plain, packed, tmp_path, env):
    """A console script is not in the wheel: it cannot be checked against the lock, so whatever
    the snapshot holds is replaced by one written for this target from the checked entry points."""
    def plant(tree: Path) -> None:
        (tree / "bin" / "gpu-build").write_text("#!/bin/sh\necho pwned\n")

    rewrite(packed, plant)
    python = make_venv(tmp_path / "venv")

    result = bootstrap(plain, packed, python, env=env)

    assert result.code == 0, result.stderr
    assert result.report["snapshot"]["used"] is True
    script = tmp_path / "venv" / "bin" / "gpu-build"
    assert "pwned" not in script.read_text() and script.read_text().startswith(f"#!{python}\n")
    assert subprocess.run([str(script)], capture_output=True, text=True).stdout.strip() == "gpu-build 1.0"
    assert pip(python, "check", env=env).returncode == 0


@needs_mountns
def test_a_disk_that_fills_as_console_scripts_are_written_anew_ends_the_run_naming_it(plain, packed, tmp_path, env):
    """The restore's last writes before the move into place are the console scripts and RECORDs
    it writes anew. Here the snapshot lacks its one console script (the store's copy rewritten, as
    the lock cannot tell), and the environment lies on a real tmpfs (a private mount namespace,
    the prefix the snapshot was made for) with room for the archive's files and not one page
    more: the files unpack and trace back to the lock, and writing the script fills the disk. The
    run ends with exit 3 and one line naming the script; before, the snapshot was blamed ("does
    not match the lock: [Errno 28] ..."), set aside on Drive and the wheels tried on the full
    disk. Drive's snapshot stays as it was."""
    from conftest import REPO, a_target_on_a_small_disk
    room = []

    def drop_the_script(tree: Path) -> None:
        (tree / "bin" / "gpu-build").unlink()
        room.append(sum(-(-f.stat().st_size // 4096) * 4096 for f in tree.rglob("*") if f.is_file()))

    rewrite(packed, drop_the_script)
    kept = [p.name for p in snapshots(packed)]
    venv = tmp_path / "venv"
    venv.mkdir()
    invoke = [sys.executable, "-m", "invoke", "--search-root", str(REPO), "bootstrap", "--recipe", str(plain),
              "--drive", str(packed), "--python", str(venv / "bin" / "python"), "--offline"]

    done = subprocess.run(a_target_on_a_small_disk(venv, venv, "2m", room[0], invoke), env=env,
                          capture_output=True, text=True, timeout=300)

    assert done.returncode == 3, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert re.fullmatch(rf"warmstart: error: {venv}/{FOLDER_PREFIX}[^/]+/bin/gpu-build: No space left on device "
                        r"\[errno 28\]; .*", last), last
    assert "does not match the lock" not in done.stderr and "Traceback" not in done.stderr
    assert FOLDER_PREFIX not in done.stdout.split("left:")[-1], "a staging folder is left"
    assert [p.name for p in snapshots(packed)] == kept, "Drive's snapshot is kept as it was"


class _Recorded(io.RawIOBase):
    """A stream of `data` that notes each read (a stand-in for Drive: the matter here is when the
    reads are asked for, not the file system)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at, self.reads = data, 0, 0
        self.second_read = threading.Event()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        self.reads += 1
        if self.reads == 2:
            self.second_read.set()
        n = min(len(buffer), len(self.data) - self.at)
        buffer[:n] = self.data[self.at:self.at + n]
        self.at += n
        return n


def test_the_next_block_is_asked_for_while_the_last_is_hashed(monkeypatch):
    """A Drive that is not asked gives no credit for the pause: hashing each block between two
    reads made a 60 MiB/s Drive's read 0.2 s longer. Here hashing the first block waits until the
    source has been asked for the second; then every byte is hashed, in order."""
    data = os.urandom(ReadAhead.FIRST + ReadAhead.BLOCK + 12345)
    real = hashlib.sha256

    class Stalled:  # the first block's hash ends only once the second read came (or 10 s passed)
        def __init__(self) -> None:
            self.digest, self.updates = real(), 0

        def update(self, block: bytes) -> None:
            self.updates += 1
            if self.updates == 1:
                asked.append(source.second_read.wait(10))
            self.digest.update(block)

        def hexdigest(self) -> str:
            return self.digest.hexdigest()

    monkeypatch.setattr(snapshot.hashlib, "sha256", Stalled)
    source, asked = _Recorded(data), []
    reading = ReadAhead(io.BufferedReader(source), limit=len(data))
    got = b"".join(iter(lambda: reading.read(ReadAhead.BLOCK), b""))
    reading.close()

    assert asked == [True], "the second read waited for the first block's hash"
    assert got == data
    assert reading.hexdigest() == real(data).hexdigest()


def test_the_end_of_an_archive_is_read_in_short_blocks():
    """What comes last is decompressed and unpacked as it comes, not once a whole 4 MiB block is
    in (70 ms of a 60 MiB/s Drive): towards the end each read asks for a quarter of what is left,
    down to LAST; every byte still comes, in order."""
    data = os.urandom(ReadAhead.FIRST + 6 * ReadAhead.BLOCK + 12345)

    class Asked(_Recorded):
        def __init__(self, data: bytes) -> None:
            super().__init__(data)
            self.asked: list[int] = []

        def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
            self.asked.append(len(buffer))
            return super().readinto(buffer)

    source = Asked(data)
    reading = ReadAhead(source, limit=len(data))
    got = b"".join(iter(lambda: reading.read(ReadAhead.BLOCK), b""))
    reading.close()

    assert got == data
    left = len(data) - ReadAhead.FIRST
    assert source.asked[:2] == [ReadAhead.FIRST, ReadAhead.BLOCK]
    for asked in source.asked[1:]:
        assert asked == max(ReadAhead.LAST, min(ReadAhead.BLOCK, left // 4)), source.asked
        left -= min(asked, left)
    assert source.asked[-2:] == [ReadAhead.LAST] * 2, "the last bytes, then the end"


class _Throttled(io.RawIOBase):
    """A real file read at `mib_per_s` (a Drive's pace; the file system is not the matter here)."""

    def __init__(self, path: Path, mib_per_s: float) -> None:
        self.file, self.rate = path.open("rb", buffering=0), mib_per_s * 2**20

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        n = self.file.readinto(buffer)
        time.sleep(n / self.rate)
        return n

    def close(self) -> None:
        self.file.close()
        super().close()


def _read_ahead_while_the_consumer_waits(source: io.RawIOBase, size: int, spill_to: Path,
                                          seconds: float) -> tuple[ReadAhead, int, bytes]:
    """Take nothing for `seconds` (a consumer busy with thousands of small files), then all of it:
    how far the read got meanwhile, and every byte handed on, in order."""
    reading = ReadAhead(io.BufferedReader(source), limit=size, spill_to=spill_to)
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and reading.size < size:
            time.sleep(0.01)
        read_meanwhile = reading.size
        got = b"".join(iter(lambda: reading.read(ReadAhead.BLOCK), b""))
    finally:
        reading.close()
    return reading, read_meanwhile, got


# How far a read gets at most without a spill file: the blocks in memory, the one waiting for a
# room, and those being hashed.
IN_MEMORY = ReadAhead.FIRST + (ReadAhead.DEPTH + 1 + ReadAhead.HASH_DEPTH) * ReadAhead.BLOCK


def test_a_slow_source_reads_on_into_a_spill_file_while_the_consumer_is_busy(tmp_path):
    """hyperlpr's 2,291 small files, unpacked first, held a 60 MiB/s Drive's read still for 1.2 s
    once 32 MiB waited in memory. A source slower than SPILL_BELOW reads on: here to its end,
    while the consumer took nothing, the blocks beyond memory's in an unnamed file of the folder
    given; every byte comes out in order, and the folder holds nothing, during or after."""
    size = IN_MEMORY + 3 * ReadAhead.BLOCK
    data = os.urandom(size)
    (tmp_path / "archive").write_bytes(data)
    spill = tmp_path / "prefix"
    spill.mkdir()
    mib_per_s = ReadAhead.SPILL_BELOW / 2**20 / 2

    reading, read_meanwhile, got = _read_ahead_while_the_consumer_waits(
        _Throttled(tmp_path / "archive", mib_per_s), size, spill, seconds=5 + size / 2**20 / mib_per_s)

    assert read_meanwhile == size, "the read stood still while the consumer was busy"
    assert reading.spilled >= size - IN_MEMORY
    assert got == data
    assert reading.hexdigest() == hashlib.sha256(data).hexdigest()
    assert list(spill.iterdir()) == []


def test_a_fast_source_waits_for_the_consumer_instead_of_spilling(tmp_path):
    """From local disk a read that waits loses nothing: what is left takes no time to read. So it
    waits, as before there was a spill file, and nothing is copied twice."""
    size = IN_MEMORY + 8 * ReadAhead.BLOCK
    data = os.urandom(size)
    (tmp_path / "archive").write_bytes(data)

    reading, read_meanwhile, got = _read_ahead_while_the_consumer_waits(
        (tmp_path / "archive").open("rb", buffering=0), size, tmp_path, seconds=0.5)

    assert read_meanwhile <= IN_MEMORY < size
    assert reading.spilled == 0
    assert got == data


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs (needs root)")
def test_a_spill_file_that_fills_its_disk_leaves_the_read_to_wait(tmp_path):
    """A full disk (a real 6 MiB tmpfs, ENOSPC) ends the spilling, not the restore: the block that
    did not fit waits for a room in memory, as without a spill file, and every byte comes out in
    order, those spilled before included."""
    size = IN_MEMORY + 4 * ReadAhead.BLOCK
    data = os.urandom(size)
    (tmp_path / "archive").write_bytes(data)
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(small)], check=True)
    try:
        reading, read_meanwhile, got = _read_ahead_while_the_consumer_waits(
            _Throttled(tmp_path / "archive", ReadAhead.SPILL_BELOW / 2**20 / 2), size, small, seconds=2.0)
        left_there = list(small.iterdir())
    finally:
        subprocess.run(["umount", str(small)], check=True)

    assert reading.spilled == ReadAhead.BLOCK, "one block fits in 6 MiB, the next does not"
    assert read_meanwhile <= IN_MEMORY + ReadAhead.BLOCK < size
    assert got == data
    assert reading.hexdigest() == hashlib.sha256(data).hexdigest()
    assert left_there == []


def test_a_spill_file_holds_no_more_than_its_limit(tmp_path, monkeypatch):
    """An index states the archive's size, so a hostile one could have a read spill until the disk
    is full: past SPILL_LIMIT (here two blocks) the read waits for the consumer, and every byte
    still comes out in order."""
    monkeypatch.setattr(ReadAhead, "SPILL_LIMIT", 2 * ReadAhead.BLOCK)
    size = IN_MEMORY + 4 * ReadAhead.BLOCK
    data = os.urandom(size)
    (tmp_path / "archive").write_bytes(data)

    reading, read_meanwhile, got = _read_ahead_while_the_consumer_waits(
        _Throttled(tmp_path / "archive", ReadAhead.SPILL_BELOW / 2**20 / 2), size, tmp_path, seconds=2.0)

    assert reading.spilled == 2 * ReadAhead.BLOCK
    assert read_meanwhile <= IN_MEMORY + 2 * ReadAhead.BLOCK < size
    assert got == data


@needs_fuse
def test_an_archive_on_fuse_is_read_by_a_child_and_one_on_local_disk_by_the_run(tmp_path, monkeypatch):
    """On a FUSE mount (Colab's Drive; here bench/slowfs.py) a child reads the archive, so its
    reads go on while the run's threads hold the GIL. On local disk the pipe would only cost a
    copy, and where no cat can run, the run reads it itself."""
    local = DriveStore(tmp_path / "drive")
    local.path("snapshots", "a.tar.zst").parent.mkdir(parents=True)
    local.path("snapshots", "a.tar.zst").write_bytes(b"archive")
    with slow_drive(local.drive, tmp_path / "mount", 0, 1000) as mount:
        with DriveStore(mount).open("snapshots", "a.tar.zst") as stream:
            assert isinstance(stream, ChildRead) and stream.read() == b"archive"
        with monkeypatch.context() as without_cat:
            without_cat.setenv("PATH", str(tmp_path / "nothing-here"))
            with DriveStore(mount).open("snapshots", "a.tar.zst") as stream:
                assert not isinstance(stream, ChildRead) and stream.read() == b"archive"
    with local.open("snapshots", "a.tar.zst") as stream:
        assert not isinstance(stream, ChildRead) and stream.read() == b"archive"
