"""Recipe assets and checks: real downloads from a real HTTP server on 127.0.0.1 (including one
that drops the connection mid-file and one that serves wrong bytes), real archives, and an
offline restore with the network cut."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.server
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    LOCKED,
    REPO,
    Result,
    bootstrap,
    cli_env,
    locked_part_of,
    make_venv,
    needs_fuse,
    needs_mountns,
    needs_netns,
    on_a_small_disk,
    run_cli,
    run_cli_on_hung_mount,
    slow_drive,
)

from warmstart.disks import remount

MODEL = bytes(range(256)) * 4096  # 1 MiB
DATA_TXT = b"label,plate\n1,AB-123\n"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tar_gz(members: dict[str, bytes], links: dict[str, str] | None = None, encoding: str | None = None) -> bytes:
    """A .tar.gz; `encoding` names its members in that code page, as a tar made on Windows does
    (GNU format: a pax header would name them in UTF-8)."""
    buffer = io.BytesIO()
    named = {"format": tarfile.GNU_FORMAT, "encoding": encoding} if encoding else {}
    with tarfile.open(fileobj=buffer, mode="w:gz", **named) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return buffer.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


class AssetServer:
    """Serves `files` with Range support; `/drop/NAME` breaks off halfway on its first request,
    `/wrong/NAME` serves other bytes than NAME, `/long/NAME` and `/endless/NAME` 32 MiB more
    than NAME (the first says so in its Content-Length, the second sends no length), counting
    in `sent` what they got out before the client hung up. Records every request it answers."""

    EXTRA = 32 << 20

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.dropped: set[str] = set()
        self.sent = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                kind, _, name = self.path.lstrip("/").partition("/")
                data = server.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                if kind == "wrong":
                    data = data[::-1]
                if kind in ("long", "endless"):
                    self.send_response(200)
                    if kind == "long":
                        self.send_header("Content-Length", str(len(data) + server.EXTRA))
                    self.end_headers()
                    body = memoryview(data + bytes(server.EXTRA))
                    try:
                        for at in range(0, len(body), 64 << 10):
                            piece = body[at:at + (64 << 10)]
                            self.wfile.write(piece)
                            server.sent += len(piece)
                    except OSError:  # the client hung up
                        pass
                    self.close_connection = True
                    return
                start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
                body = data[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if kind == "drop" and name not in server.dropped:
                    server.dropped.add(name)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server():
    srv = AssetServer()
    srv.files.update({"model.onnx": MODEL, "data.tar.gz": tar_gz({"data/plates.csv": DATA_TXT})})
    yield srv
    srv.httpd.shutdown()


@pytest.fixture
def home(tmp_path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def asset_block(url: str, data: bytes, dest: str, unpack: bool = False, size: int | None = None) -> str:
    return (f'\n[[assets]]\nurl = "{url}"\nsha256 = "{sha256(data)}"\ndest = "{dest}"\n'
            f"unpack = {'true' if unpack else 'false'}\n" + (f"size = {size}\n" if size is not None else ""))


def with_assets(recipe: Path, *blocks: str) -> Path:
    recipe.write_text(recipe.read_text() + "".join(blocks))
    return recipe


def bootstrap_home(recipe, drive, home, tmp_path, index, *flags, offline_net=False, venv="venv", fault=None):
    """conftest's bootstrap, with HOME (where `~` assets land) and a venv kept across calls."""
    env = cli_env(index.url, HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"))
    python = tmp_path / venv / "bin" / "python"
    if not python.exists():
        make_venv(tmp_path / venv)
    return bootstrap(recipe, drive, python, *flags, env=env, offline_net=offline_net, fault=fault)


def bootstrap_on_a_small_disk(recipe: Path, drive: Path, tmp_path: Path, index, small: Path, size: str,
                              **env: str) -> tuple[subprocess.CompletedProcess, str]:
    """The bootstrap where `small` is a small disk (a real tmpfs of `size` in a private mount
    namespace), and what that disk holds after it, listed inside the namespace (outside, the
    folder is empty)."""
    invoke = [sys.executable, "-m", "invoke", "--search-root", str(REPO), "bootstrap", "--recipe", str(recipe),
              "--drive", str(drive), "--python", str(make_venv(tmp_path / "env"))]
    then_list = ["sh", "-c", '"$@"; code=$?; echo "left: $(ls -A "$0")"; exit $code', str(small), *invoke]
    done = subprocess.run(on_a_small_disk(small, then_list, size=size), capture_output=True, text=True,
                          env=cli_env(index.url, **env), timeout=300)
    return done, done.stdout.strip().splitlines()[-1].removeprefix("left:").strip()


def drive_assets(drive: Path) -> list[str]:
    root = drive / ".warmstart" / "v1" / "assets"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def test_assets_downloaded_verified_cached_and_placed(demo, drive, home, tmp_path, index, server):
    recipe = with_assets(
        demo,
        asset_block(f"{server.url}/files/model.onnx", MODEL, "~/models/model.onnx", size=len(MODEL)),
        asset_block(f"{server.url}/files/data.tar.gz", server.files["data.tar.gz"], "dataset", unpack=True),
    )

    result = bootstrap_home(recipe, drive, home, tmp_path, index)

    assert result.code == 0, result.stderr
    assert (home / "models" / "model.onnx").read_bytes() == MODEL
    assert (drive / "Demo" / "dataset" / "data" / "plates.csv").read_bytes() == DATA_TXT
    assert drive_assets(drive) == sorted([sha256(MODEL), sha256(server.files["data.tar.gz"])])
    assert [s["detail"] for s in result.report["steps"] if s["name"] == "assets"] == ["2 downloaded"]

    listing = run_cli("assets", "--recipe", str(recipe), "--drive", str(drive),
                      env=cli_env(HOME=str(home)))
    assert listing.code == 0
    assert listing.stdout.count("in place") == 2
    listed = run_cli("assets", "--recipe", str(recipe), "--drive", str(drive), "--json", env=cli_env(HOME=str(home)))
    assert listed.code == 0 and listed.report == {
        "recipe": "demo", "recipe_path": str(recipe), "error": None, "exit_code": 0, "assets": [
            {"name": "model.onnx", "state": "in place", "destination": str(home / "models" / "model.onnx"),
             "in_the_way": None},
            {"name": "data.tar.gz", "state": "in place", "destination": str(drive / "Demo" / "dataset"),
             "in_the_way": None}]}


def three_versions_the_second_killed(demo: Path, drive: Path, home: Path, tmp_path: Path, index, server, fault: str,
                                     versions: list[bytes], suffix: str, dest: str, unpack: bool = False,
                                     after_kill: Callable[[], object] = lambda: None):
    """Bootstraps of `demo` with each of three versions of one asset (served as vN`suffix`, placed
    at `dest`), the second killed at the fault point `fault`, then `after_kill()`: the third's
    result."""
    base = demo.read_text()
    for n, data in enumerate(versions):
        server.files[f"v{n}{suffix}"] = data

    def bootstrap_version(n: int, fault: str | None = None):
        demo.write_text(base)
        with_assets(demo, asset_block(f"{server.url}/files/v{n}{suffix}", versions[n], dest, unpack=unpack))
        return bootstrap_home(demo, drive, home, tmp_path, index, fault=fault)

    assert bootstrap_version(0).code == 0
    killed = bootstrap_version(1, fault)
    assert killed.code == -9, killed.stderr
    after_kill()
    return bootstrap_version(2)


def parts_beside(dest: Path) -> list[str]:
    """The temporary files (or folders) warmstart's writers of dest name beside it."""
    return sorted(p.name for p in dest.parent.iterdir() if re.fullmatch(rf"\.{re.escape(dest.name)}\.[0-9a-f]{{32}}\.part", p.name))


@pytest.mark.parametrize("where", ["~/models/model.onnx", "models/model.onnx"], ids=["local", "on-drive"])
def test_a_run_killed_as_it_places_a_file_asset_leaves_a_file_the_next_version_replaces(
        demo, drive, home, tmp_path, index, server, where):
    """SIGKILL right after a new version of a file asset is renamed into place, before the ledger
    of what warmstart placed records it: the file is warmstart's all the same (the ledger named
    both versions before the rename), so the recipe's next version replaces it, where that run
    stopped (exit 2) saying the file was changed since warmstart placed it. The ledger in
    warmstart's cache folder, and on Drive for a destination in the workdir."""
    versions = [MODEL, MODEL[::-1], MODEL[1:]]
    result = three_versions_the_second_killed(demo, drive, home, tmp_path, index, server, "asset-place",
                                              versions, ".onnx", where)

    assert result.code == 0, result.stderr
    dest = home / where[2:] if where.startswith("~") else drive / "Demo" / where
    assert dest.read_bytes() == versions[2]


def test_a_run_killed_as_it_unpacks_an_archive_asset_leaves_no_member_the_next_version_keeps(
        demo, drive, home, tmp_path, index, server):
    """SIGKILL once the first member of an archive's new version is moved into its folder: the
    folder's marker named it before (under the version it replaces), so the version after that
    removes it with the rest of what warmstart put there, where it stayed behind, a file no
    marker named. The folder it was unpacked in beside the destination, with the members not yet
    moved, is removed by that run too (on a plain folder standing in for Drive)."""
    folder = drive / "Demo" / "dataset"
    killed_left: list[str] = []
    versions = [tar_gz({"data/a.csv": b"a0", "data/b.csv": b"b"}), tar_gz({"data/0new.csv": b"n", "data/a.csv": b"a1"}),
                tar_gz({"data/a.csv": b"a2", "data/d.csv": b"d"})]
    result = three_versions_the_second_killed(demo, drive, home, tmp_path, index, server, "asset-member",
                                              versions, ".tar.gz", "dataset", unpack=True,
                                              after_kill=lambda: killed_left.extend(parts_beside(folder)))

    assert result.code == 0, result.stderr
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*.csv")) == ["data/a.csv", "data/d.csv"]
    assert (folder / "data" / "a.csv").read_bytes() == b"a2"
    assert len(killed_left) == 1 and parts_beside(folder) == []


def test_a_run_killed_as_it_writes_a_file_asset_leaves_a_temporary_file_the_next_write_removes(
        demo, drive, home, tmp_path, index, server):
    """SIGKILL while a new version of a file asset is written under its temporary name beside it:
    that file stays. The next run that writes the asset finds no writer in the folder (the kernel
    dropped the killed run's lock of it) and removes it; a file of the user's named alike, not as
    warmstart names its own, stays."""
    dest = home / "models" / "model.onnx"
    users = dest.parent / ".model.onnx.mine.part"
    killed_left: list[bytes] = []

    def after_kill() -> None:
        killed_left.extend((dest.parent / name).read_bytes() for name in parts_beside(dest))
        users.write_bytes(b"the user's")

    versions = [MODEL, MODEL[::-1], MODEL[1:]]
    result = three_versions_the_second_killed(demo, drive, home, tmp_path, index, server, "asset-write",
                                              versions, ".onnx", "~/models/model.onnx", after_kill=after_kill)

    assert result.code == 0, result.stderr
    assert killed_left == [versions[1]]  # the killed run's write, whole, not renamed
    assert dest.read_bytes() == versions[2]
    assert parts_beside(dest) == []
    assert users.read_bytes() == b"the user's"


def test_a_temporary_file_beside_an_asset_is_left_while_another_writer_holds_the_folder(
        demo, drive, home, tmp_path, index, server):
    """A writer still writing in the asset's folder (here: this test, holding the folder's lock
    shared as a run that writes there does) may own a temporary file there: the run places the
    asset beside it and removes nothing; once the folder is free, the next write removes it."""
    dest = home / "models" / "model.onnx"
    dest.parent.mkdir(parents=True)
    other = dest.parent / f".model.onnx.{'0' * 32}.part"
    other.write_bytes(b"half written")
    server.files["v2.onnx"] = MODEL[::-1]
    base = demo.read_text()
    with_assets(demo, asset_block(f"{server.url}/files/model.onnx", MODEL, "~/models/model.onnx"))

    folder = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(folder, fcntl.LOCK_SH)
        held = bootstrap_home(demo, drive, home, tmp_path, index)
    finally:
        os.close(folder)
    assert held.code == 0, held.stderr
    assert dest.read_bytes() == MODEL and other.read_bytes() == b"half written"

    demo.write_text(base)
    with_assets(demo, asset_block(f"{server.url}/files/v2.onnx", MODEL[::-1], "~/models/model.onnx"))
    free = bootstrap_home(demo, drive, home, tmp_path, index)
    assert free.code == 0, free.stderr
    assert dest.read_bytes() == MODEL[::-1] and not other.exists()


def test_what_killed_writes_of_an_archives_marker_and_of_the_ledger_left_is_removed_by_the_next_write(
        demo, drive, home, tmp_path, index, server):
    """A run killed while it writes an unpacked archive's marker, or a ledger of the files it
    placed (in warmstart's cache folder; on Drive, a plain folder here, for the workdir), leaves
    its temporary file (named as transfer.part_name names it: made here as such a kill leaves
    it, the moment being too short to kill a run in). The next run that writes them removes
    those; a file of the user's named alike stays."""
    folder, model = home / "dataset", home / "models" / "model.onnx"
    ledgers = [home / ".cache" / "warmstart" / "placed.json", drive / ".warmstart" / "v1" / "placed.json"]
    base = demo.read_text()

    def bootstrap_version(n: int):
        server.files[f"v{n}.onnx"], server.files[f"v{n}.tar.gz"] = MODEL[n:], tar_gz({"a.csv": b"a%d" % n})
        demo.write_text(base)
        with_assets(demo, asset_block(f"{server.url}/files/v{n}.onnx", MODEL[n:], "~/models/model.onnx"),
                    asset_block(f"{server.url}/files/v{n}.onnx", MODEL[n:], "models/model.onnx"),
                    asset_block(f"{server.url}/files/v{n}.tar.gz", server.files[f"v{n}.tar.gz"], "~/dataset",
                                unpack=True))
        return bootstrap_home(demo, drive, home, tmp_path, index)

    assert bootstrap_version(0).code == 0
    written = [folder / ".warmstart-asset", *ledgers]
    killed = [path.with_name(f".{path.name}.{'7' * 32}.part") for path in written]
    users = [path.with_name(f".{path.name}.mine.part") for path in written]
    for path in [*killed, *users]:
        path.write_bytes(b"half written")

    result = bootstrap_version(1)

    assert result.code == 0, result.stderr
    assert (folder / "a.csv").read_bytes() == b"a1" and model.read_bytes() == MODEL[1:]
    assert (drive / "Demo" / "models" / "model.onnx").read_bytes() == MODEL[1:]
    assert [path.exists() for path in killed] == [False, False, False]
    assert [path.read_bytes() for path in users] == [b"half written"] * 3


def test_a_users_file_where_an_asset_goes_stops_the_run_before_anything_is_installed_or_fetched(
        demo, drive, home, tmp_path, index, server):
    """Refused as the run looks (exit 2), not after the packages were installed and the asset
    downloaded; `invoke assets` names it too."""
    recipe = with_assets(demo, asset_block(f"{server.url}/files/model.onnx", MODEL, "~/models/model.onnx"))
    (home / "models").mkdir()
    (home / "models" / "model.onnx").write_bytes(b"my own fine-tuned model")

    result = bootstrap_home(recipe, drive, home, tmp_path, index)

    assert result.code == 2, result.stderr
    said = f"asset model.onnx: {home}/models/model.onnx holds another file, which warmstart did not place"
    assert said in result.stderr
    assert (home / "models" / "model.onnx").read_bytes() == b"my own fine-tuned model"
    assert server.requests == [], "nothing is downloaded for an asset that cannot be placed"
    assert [s["name"] for s in result.report["steps"]] == ["recipe", "python", "gpu", "drive", "lock", "cache"]
    assert not list((tmp_path / "venv").glob("lib/python*/site-packages/*.dist-info")), "nothing installed"

    listing = run_cli("assets", "--recipe", str(recipe), "--drive", str(drive), env=cli_env(HOME=str(home)))
    assert listing.code == 2, "as the bootstrap: a script that asks first learns that it would stop"
    assert listing.stdout.splitlines()[1] == f"          ! {said}; move it away (or point the asset's dest elsewhere) and run again"
    assert listing.stderr.strip().splitlines() == [
        "warmstart: error: 1 asset above cannot be placed: something of yours is in its way (`!` lines); "
        "a bootstrap of demo stops there until it is moved"]
    listed = run_cli("assets", "--recipe", str(recipe), "--drive", str(drive), "--json", env=cli_env(HOME=str(home)))
    assert listed.code == 2 and listed.stderr == listing.stderr
    assert listed.report["exit_code"] == 2 and listed.report["error"] == listing.stderr.strip().removeprefix(
        "warmstart: error: ")
    assert [(a["name"], a["state"], a["in_the_way"]) for a in listed.report["assets"]] == [
        ("model.onnx", "missing", f"{said}; move it away (or point the asset's dest elsewhere) and run again")]


def test_invoke_assets_on_a_drive_root_that_is_a_file_says_that_not_what_is_in_each_assets_way(tmp_path, home):
    drive = tmp_path / "drive"
    drive.write_text("not a folder")
    listing = run_cli("assets", "--recipe", str(REPO / "recipes" / "hyperlpr.toml"), "--drive", str(drive),
                      env=cli_env(HOME=str(home)))
    assert listing.code == 3
    assert listing.stderr.strip().splitlines() == [f"warmstart: error: Drive root {drive} is not a folder; pass --drive DIR"]
    assert listing.stdout == ""


def test_a_file_shared_by_two_recipes_is_stored_once(demo, drive, home, tmp_path, index, server):
    url = f"{server.url}/files/model.onnx"
    first = with_assets(demo, asset_block(url, MODEL, "~/a/model.onnx"))
    second = demo.with_name("other.toml")
    second.write_text(first.read_text().replace('name = "demo"', 'name = "other"')
                      .replace("~/a/model.onnx", "~/b/model.onnx"))
    assert bootstrap_home(first, drive, home, tmp_path, index).code == 0
    served = len(server.requests)

    result = bootstrap_home(second, drive, home, tmp_path, index)

    assert result.code == 0, result.stderr
    assert len(server.requests) == served, "the second recipe must take the file from Drive"
    assert (home / "b" / "model.onnx").read_bytes() == MODEL
    assert drive_assets(drive) == [sha256(MODEL)]


def test_dropped_connection_is_resumed(demo, drive, home, tmp_path, index, server):
    recipe = with_assets(demo, asset_block(f"{server.url}/drop/model.onnx", MODEL, "~/m/model.onnx"))

    result = bootstrap_home(recipe, drive, home, tmp_path, index)

    assert result.code == 0, result.stderr
    ranges = [r for path, r in server.requests if path == "/drop/model.onnx"]
    assert len(ranges) == 2 and ranges[0] is None
    resumed_at = int(ranges[1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= len(MODEL) // 2, "the retry must resume, not restart"
    assert (home / "m" / "model.onnx").read_bytes() == MODEL


def test_wrong_bytes_are_refused_naming_the_asset(demo, drive, home, tmp_path, index, server):
    recipe = with_assets(demo, asset_block(f"{server.url}/wrong/model.onnx", MODEL, "~/m/model.onnx"))

    result = bootstrap_home(recipe, drive, home, tmp_path, index)

    assert result.code == 1
    assert "asset model.onnx" in result.stderr and sha256(MODEL) in result.stderr
    assert not (home / "m").exists()
    assert drive_assets(drive) == []


@pytest.mark.parametrize("kind", ["long", "endless"])
def test_an_asset_longer_than_the_recipe_states_is_not_read_past_its_size(demo, drive, home, tmp_path, index,
                                                                           server, kind):
    """A server (or WARMSTART_ASSET_MIRROR) that serves more than the `size` the recipe states:
    the download ends there, with or without a Content-Length, in one line naming the URL and
    the size; no part file is left on the local disk, nothing is placed or cached."""
    url = f"{server.url}/{kind}/model.onnx"
    recipe = with_assets(demo, asset_block(url, MODEL, "~/m/model.onnx", size=len(MODEL)))

    result = bootstrap_home(recipe, drive, home, tmp_path, index)

    assert result.code == 1, result.stderr
    served = f"{len(MODEL) + server.EXTRA} bytes" if kind == "long" else f"more than {len(MODEL)} bytes"
    assert f"{url} served {served}, where the recipe lists {len(MODEL)} bytes for it" in result.stderr, result.stderr
    # the socket buffers take some MiB before the client hangs up; uncapped, all 32 went
    assert server.sent < len(MODEL) + server.EXTRA // 2, f"{server.sent} bytes sent before the client hung up"
    assert [p for p in home.rglob("*") if p.is_file() and sha256(MODEL) in p.name] == [], "a part file was left"
    assert not (home / "m").exists()
    assert drive_assets(drive) == []


@needs_mountns
@pytest.mark.parametrize("sized", [False, True], ids=["size unknown", "size stated"])
def test_a_local_disk_too_small_for_a_download_is_named_and_nothing_is_left(demo, drive, home, tmp_path, index,
                                                                            server, sized):
    """The local folder a download goes to (warmstart's downloads folder: here a real 256 KiB
    tmpfs in a private mount namespace) has no room for the 1 MiB asset: exit 3, one line, and
    nothing is placed or cached. Of an asset whose recipe states no size, the line starts with the
    part file being written and says the disk is full, and the part is removed (it would keep the
    disk full; before, the line named no file). Of one that states its size, the run ends before
    the download begins, the line naming the asset, its size, the folder and its free space."""
    downloads = home / ".cache" / "warmstart" / "downloads"
    downloads.mkdir(parents=True)
    recipe = with_assets(demo, asset_block(f"{server.url}/files/model.onnx", MODEL, "~/m/model.onnx",
                                           size=len(MODEL) if sized else None))

    done, left = bootstrap_on_a_small_disk(recipe, drive, tmp_path, index, downloads, "256k",
                                           HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"))

    assert done.returncode == 3, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    if sized:
        assert re.fullmatch(r"warmstart: error: download model.onnx: the file is 1.0 MiB, more than the \d+ bytes "
                            rf"free in {downloads}; free disk space there, then run again", last), last
        assert server.requests == [], "nothing is fetched"
    else:
        assert last.startswith(f"warmstart: error: {downloads / sha256(MODEL)}.part: No space left on device"), last
    assert "Traceback" not in done.stderr and "Drive is full" not in done.stderr
    assert left == "", "the part file is left"
    assert not (home / "m").exists()
    assert drive_assets(drive) == []


@needs_mountns
@pytest.mark.parametrize(("name", "unpack"), [("model.onnx", False), ("big.tar.gz", True), ("big.zip", True)])
def test_a_destination_disk_too_small_for_an_asset_is_named_and_nothing_is_left_half_placed(
        demo, drive, home, tmp_path, index, server, name, unpack):
    """The asset's destination (a folder in HOME: here a real 512 KiB tmpfs in a private mount
    namespace) fills as the verified file is copied or its archive extracted there: exit 3, one
    line that starts with the destination and says the disk is full, and nothing of it is left
    there. Before, the copy's line named the downloaded file in warmstart's cache (shutil's error
    names the source) and the extraction's no file at all."""
    server.files["big.tar.gz"] = tar_gz({"data/a.bin": MODEL, "data/b.bin": MODEL})
    server.files["big.zip"] = zip_bytes({"data/a.bin": MODEL, "data/b.bin": MODEL})
    small = home / "small"
    small.mkdir()
    recipe = with_assets(demo, asset_block(f"{server.url}/files/{name}", server.files[name], f"~/small/{name}.d",
                                           unpack=unpack))

    done, left = bootstrap_on_a_small_disk(recipe, drive, tmp_path, index, small, "512k",
                                           HOME=str(home), XDG_CACHE_HOME=str(tmp_path / "cache"))

    assert done.returncode == 3, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"warmstart: error: {small / name}.d: No space left on device"), last
    assert "Traceback" not in done.stderr
    assert left == "", "something is left half-placed"


@pytest.mark.parametrize(
    ("archive_name", "archive"),
    [
        ("escape.tar.gz", tar_gz({"ok.txt": b"ok", "../../evil.txt": b"evil"})),
        ("escape.zip", zip_bytes({"ok.txt": b"ok", "../../evil.txt": b"evil"})),
        ("link.tar.gz", tar_gz({"ok.txt": b"ok"}, links={"link": "/etc/passwd"})),
    ],
)
def test_archive_member_escaping_dest_is_refused(demo, drive, home, tmp_path, index, server,
                                                 archive_name, archive):
    server.files[archive_name] = archive
    recipe = with_assets(demo, asset_block(f"{server.url}/files/{archive_name}", archive,
                                           "~/data/unpacked", unpack=True))

    result = bootstrap_home(recipe, drive, home, tmp_path, index)

    assert result.code == 1
    assert f"asset {archive_name}" in result.stderr and "refusing to extract" in result.stderr
    assert not (home / "data" / "unpacked").exists()
    assert not list(tmp_path.rglob("evil.txt"))
    assert [p.name for p in (home / "data").iterdir()] == [], "no temporary folder may stay behind"


@needs_netns
def test_offline_restore_puts_assets_back_from_drive(demo, drive, home, tmp_path, index, server):
    recipe = with_assets(demo, asset_block(f"{server.url}/files/model.onnx", MODEL, "~/models/model.onnx"))
    assert bootstrap_home(recipe, drive, home, tmp_path, index).code == 0
    shutil.rmtree(home)  # a wiped VM: new home, new environment, same Drive
    home.mkdir()
    shutil.rmtree(tmp_path / "venv")

    result = bootstrap_home(recipe, drive, home, tmp_path, index, "--offline", offline_net=True)

    assert result.code == 0, result.stderr
    assert (home / "models" / "model.onnx").read_bytes() == MODEL
    assert [s["detail"] for s in result.report["steps"] if s["name"] == "assets"] == ["1 from Drive"]


@needs_netns
def test_damaged_cached_asset_offline_is_an_error_naming_it(demo, drive, home, tmp_path, index, server):
    recipe = with_assets(demo, asset_block(f"{server.url}/files/model.onnx", MODEL, "~/models/model.onnx"))
    assert bootstrap_home(recipe, drive, home, tmp_path, index).code == 0
    cached = drive / ".warmstart" / "v1" / "assets" / sha256(MODEL)
    cached.write_bytes(b"X" + MODEL[1:])
    (home / "models" / "model.onnx").unlink()

    result = bootstrap_home(recipe, drive, home, tmp_path, index, "--offline", offline_net=True)

    assert result.code == 3
    assert "asset model.onnx" in result.stderr and "does not match" in result.stderr
    assert not (home / "models" / "model.onnx").exists()


@contextlib.contextmanager
def bootstrap_on_a_drive_that_stops(recipe: Path, tmp_path: Path, home: Path, index,
                                    **hang: Any) -> Iterator[tuple[Result, Path]]:
    """A bootstrap of `recipe` (HOME `home`, WARMSTART_DRIVE_TIMEOUT=2) whose Drive is a FUSE
    layer that stops answering as `hang` says (slow_drive's hang_from or hang_writes_in), until
    the run ends or 30 s pass; then it answers again. Its result and the mount, which answers."""
    (tmp_path / "backing").mkdir()
    answer = tmp_path / "answer"
    python = make_venv(tmp_path / "venv")
    env = cli_env(index.url, HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), WARMSTART_DRIVE_TIMEOUT="2")
    with slow_drive(tmp_path / "backing", tmp_path / "drive", 0, 1000, until=answer, **hang) as mount:
        result = run_cli_on_hung_mount("bootstrap", "--recipe", str(recipe), "--drive", str(mount), "--python",
                                       str(python), "--json", env=env, answer=answer, timeout=30)
        yield result, mount


@needs_fuse
def test_a_drive_that_stops_answering_during_the_install_ends_the_run_before_the_workdirs_asset(
        demo, home, tmp_path, index, server):
    """Drive answered the run's first look, then stopped while the packages installed (the layer
    answers nothing once the target holds alpha's dist-info): the asset for the workdir on Drive
    was placed in the run's own process, which waited for ever. The run looks at the workdir
    again first, bounded: exit 3 saying so and what to do, the packages installed; once Drive
    answers, the next run places the asset. The Colab side (a remount) cannot run here."""
    recipe = with_assets(demo, asset_block(f"{server.url}/files/model.onnx", MODEL, "models/model.onnx"))
    alpha = tmp_path / "venv" / "lib" / "python3*" / "site-packages" / "alpha-*.dist-info"
    with bootstrap_on_a_drive_that_stops(recipe, tmp_path, home, index, hang_from=alpha) as (result, mount):
        assert result.code == 3, result.stderr  # on the code before: still waiting at 30 s, killed
        waited = r"\(a (look at its files|write) waited 2 s( to end)?\)"  # the look, or the usage record's write
        assert re.fullmatch(
            rf"the workdir {re.escape(str(mount / 'Demo'))} lies on Drive, and {re.escape(str(mount))} stopped "
            rf"answering {waited}: on Colab, {re.escape(remount(mount))} and run again", result.report["error"]), \
            result.report["error"]
        assert locked_part_of(tmp_path / "venv" / "bin" / "python") == LOCKED

        again = bootstrap_home(recipe, mount, home, tmp_path, index)

        assert again.code == 0, again.stderr
        assert (mount / "Demo" / "models" / "model.onnx").read_bytes() == MODEL


@needs_fuse
@pytest.mark.parametrize(("name", "dest", "unpack"), [("model.onnx", "models/model.onnx", False),
                                                     ("data.tar.gz", "dataset", True)], ids=["file", "archive"])
def test_an_asset_whose_write_to_the_workdir_on_drive_never_ends_is_given_up_after_drives_timeout(
        demo, home, tmp_path, index, server, name, dest, unpack):
    """A Drive that answers every look but stopped in the middle of a write to the workdir: the
    asset's copy there (an archive's members and marker) was the run's own, waited for ever. A
    child writes each file now, given WARMSTART_DRIVE_TIMEOUT each time it takes nothing more:
    exit 3 naming the asset, Drive and what to do; nothing is left half-placed, and once Drive
    answers no part of it is left under a temporary name either."""
    recipe = with_assets(demo, asset_block(f"{server.url}/files/{name}", server.files[name], dest, unpack=unpack))
    with bootstrap_on_a_drive_that_stops(recipe, tmp_path, home, index, hang_writes_in="Demo") as (result, mount):
        assert result.code == 3, result.stderr  # on the code before: still waiting at 30 s, killed
        place = mount / "Demo" / dest
        assert result.report["error"] == (f"asset {name}: {place} lies on Drive, and {mount} stopped answering (a "
                                          f"write waited 2 s to end): on Colab, {remount(mount)} and run again")
        left = tmp_path / "backing" / "Demo"  # the mount answers since the helper ended
        for _ in range(100):
            if not any(p.is_file() for p in left.rglob("*")):
                break
            time.sleep(0.1)
        assert [p for p in left.rglob("*") if p.is_file()] == []


@needs_fuse
def test_an_archive_asset_on_a_fuse_drive_is_unpacked_locally_and_its_members_copied_into_the_workdir(
        demo, home, tmp_path, index, server):
    """On a FUSE Drive an archive is unpacked on local disk and each member copied into its folder
    in the workdir by a child (bounded as every write there): the folder holds the archive's files;
    the next version replaces and removes what the last one put there, and keeps the user's own."""
    versions = [tar_gz({"data/a.csv": b"a1", "data/b.csv": b"b1"}), tar_gz({"data/a.csv": b"a2", "data/c.csv": b"c2"})]
    base = demo.read_text()
    (tmp_path / "backing").mkdir()
    with slow_drive(tmp_path / "backing", tmp_path / "drive", 0, 1000) as mount:
        for n, data in enumerate(versions):
            server.files[f"v{n}.tar.gz"] = data
            demo.write_text(base)
            with_assets(demo, asset_block(f"{server.url}/files/v{n}.tar.gz", data, "dataset", unpack=True))
            result = bootstrap_home(demo, mount, home, tmp_path, index)
            assert result.code == 0, result.stderr
            if n == 0:
                (mount / "Demo" / "dataset" / "data" / "mine.csv").write_bytes(b"mine")

        folder = mount / "Demo" / "dataset"
        assert {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == {
            "data/a.csv": b"a2", "data/c.csv": b"c2", "data/mine.csv": b"mine",
            ".warmstart-asset": f"{sha256(versions[1])}\ndata/a.csv\ndata/c.csv\n".encode()}


@needs_fuse
def test_a_check_that_cannot_end_when_killed_is_left_there_and_said_not_waited_for(tmp_path, monkeypatch):
    """A check caught in a write to a Drive that stopped answering cannot end even killed (a FUSE
    write under way is waited out): once its timeout killed it, the run waited for it for ever.
    Now it waits KILLED_WAIT (2 s here) and the check fails saying why it is still there."""
    from warmstart import checks
    from warmstart.recipe import Check

    monkeypatch.setattr(checks, "KILLED_WAIT", 2.0)
    (tmp_path / "backing" / "out").mkdir(parents=True)
    answer = tmp_path / "answer"
    with slow_drive(tmp_path / "backing", tmp_path / "drive", 0, 1000, hang_writes_in="out", until=answer) as mount:
        results: list[checks.CheckResult] = []
        check = Check("writes a plate", run="echo AB-123 > out/plate.txt", timeout=1)
        running = threading.Thread(target=lambda: results.extend(checks.run_checks((check,), Path(sys.executable),
                                                                                   mount)), daemon=True)
        running.start()
        running.join(30)
        answer.touch()  # the check ends now (on the code before: the run, which waited for it)

    assert [(r.ok, r.summary) for r in results] == [(False, (
        "timed out after 1 s (set timeout for this check in the recipe); it did not end when killed (still there "
        "2 s later): a file it reads or writes lies on a mount that stopped answering (Drive?)"))]


def test_checks_report_pass_and_fail(demo, drive, home, tmp_path, index):
    demo.write_text(demo.read_text() + (
        '\n[[checks]]\nname = "alpha imports"\npython = "import alpha; print(alpha.__version__)"\n'
        '\n[[checks]]\nname = "shell sees the target python"\n'
        'run = "python -c \'import beta; print(beta.__version__)\'; echo no GPU here >&2; exit 4"\n'
    ))

    result = bootstrap_home(demo, drive, home, tmp_path, index)

    assert result.code == 1
    checks = result.report["checks"]
    assert [(c["name"], c["ok"]) for c in checks] == [("alpha imports", True),
                                                      ("shell sees the target python", False)]
    assert checks[0]["output"] == "1.0" and checks[1]["output"] == "2.0\nno GPU here"
    assert "checks failed: shell sees the target python" in result.stderr
