"""Every kind of asset destination: warmstart replaces only what it placed, keeps the user's files.

These run `assets.ensure` on a real file system with the asset already in the Drive cache
(offline), so each case is the placing step alone; test_assets.py has the downloads.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_assets import tar_gz

from warmstart.assets import KIND, MARKER, ensure
from warmstart.download import Downloader
from warmstart.drivework import DriveWork
from warmstart.errors import BadInput
from warmstart.pipconfig import IndexSettings
from warmstart.recipe import Asset
from warmstart.store import DriveStore
from warmstart.tiered import TieredStore


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A Drive with a store, a workdir on it, and a helper that caches bytes as an asset."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    drive = tmp_path / "drive"
    store = TieredStore(DriveStore(drive))
    (store.root / KIND).mkdir(parents=True)
    workdir = drive / "Work"
    workdir.mkdir()

    def asset(data: bytes, name: str, dest: str, unpack: bool = False) -> Asset:
        sha = hashlib.sha256(data).hexdigest()
        store.path(KIND, sha).write_bytes(data)
        store.names(KIND).append(sha)  # as the run's one listing would have found it
        return Asset(f"https://example.invalid/{name}", sha, dest, unpack)

    def place(a: Asset) -> Path:
        dest = a.destination(workdir)
        scratch = tmp_path / "scratch"
        scratch.mkdir(exist_ok=True)
        # Offline: the downloader is never asked (example.invalid would not answer), and nothing
        # is downloaded for the Drive work to write.
        ensure(a, dest, store, Downloader(IndexSettings(("https://example.invalid/simple",))),
               DriveWork(tmp_path / "work", drive), offline=True, scratch=scratch)
        return dest

    return asset, place, workdir


def test_a_file_goes_where_nothing_was(world):
    asset, place, _workdir = world
    dest = place(asset(b"model v1", "m.onnx", "models/m.onnx"))
    assert dest.read_bytes() == b"model v1"


def test_a_file_warmstart_placed_is_replaced_by_the_recipes_new_version(world):
    asset, place, _workdir = world
    place(asset(b"model v1", "m.onnx", "models/m.onnx"))
    dest = place(asset(b"model v2", "m.onnx", "models/m.onnx"))
    assert dest.read_bytes() == b"model v2"


def test_a_users_file_at_the_destination_is_kept_and_named(world):
    asset, place, workdir = world
    (workdir / "models").mkdir()
    (workdir / "models" / "m.onnx").write_bytes(b"my own fine-tuned model")

    with pytest.raises(BadInput, match=r"models/m.onnx holds another file, which warmstart did not place"):
        place(asset(b"model v1", "m.onnx", "models/m.onnx"))
    assert (workdir / "models" / "m.onnx").read_bytes() == b"my own fine-tuned model"


def test_a_placed_file_the_user_changed_since_is_kept(world):
    asset, place, _workdir = world
    dest = place(asset(b"model v1", "m.onnx", "m.onnx"))
    dest.write_bytes(b"edited by the user")
    with pytest.raises(BadInput, match=r"m.onnx was changed since warmstart placed it, so it is yours now; move it "
                                       r"away \(or point the asset's dest elsewhere\) and run again"):
        place(asset(b"model v2", "m.onnx", "m.onnx"))
    assert dest.read_bytes() == b"edited by the user"


@pytest.mark.parametrize("kind", ["folder", "link"])
def test_a_folder_or_link_where_a_file_goes_is_refused(world, kind):
    asset, place, workdir = world
    target = workdir / "m.onnx"
    if kind == "folder":
        target.mkdir()
        (target / "notes.txt").write_text("mine")
    else:
        target.symlink_to(workdir.parent / "elsewhere")
    with pytest.raises(BadInput, match=f"is a {kind}"):
        place(asset(b"model", "m.onnx", "m.onnx"))
    assert target.is_symlink() if kind == "link" else (target / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("kind", ["file", "link"])
def test_a_file_or_link_where_a_folder_of_the_destination_goes_is_refused_and_kept(world, kind):
    """Before, a file where the destination's folder goes reached mkdir, whose "File exists"
    read as a disk's fault."""
    asset, place, workdir = world
    in_the_way = workdir / "models"
    if kind == "file":
        in_the_way.write_text("a file of the user's")
    else:
        in_the_way.symlink_to(workdir / "nowhere")
    with pytest.raises(BadInput, match=f"models is a {kind} where a folder goes, which warmstart did not place"):
        place(asset(b"model", "m.onnx", "models/sub/m.onnx"))
    assert in_the_way.read_text() == "a file of the user's" if kind == "file" else in_the_way.is_symlink()
    assert not (workdir / "nowhere").exists()


def test_a_link_to_a_folder_where_a_folder_goes_is_followed(world):
    asset, place, workdir = world
    (workdir / "elsewhere").mkdir()
    (workdir / "models").symlink_to(workdir / "elsewhere")
    place(asset(b"model", "m.onnx", "models/m.onnx"))
    assert (workdir / "elsewhere" / "m.onnx").read_bytes() == b"model"


def test_an_archive_goes_into_an_empty_place(world):
    asset, place, _workdir = world
    dest = place(asset(tar_gz({"a.onnx": b"a", "sub/b.onnx": b"b"}), "m.tar.gz", "models", unpack=True))
    assert (dest / "a.onnx").read_bytes() == b"a" and (dest / "sub" / "b.onnx").read_bytes() == b"b"
    assert (dest / MARKER).read_text().splitlines()[1:] == ["a.onnx", "sub/b.onnx"]


def test_an_archive_merges_into_a_folder_of_the_users_and_keeps_every_file_there(world):
    """The data-loss case: unpacking into a folder that already holds the user's files."""
    asset, place, workdir = world
    (workdir / "models").mkdir()
    (workdir / "models" / "my-notes.txt").write_text("results of three weeks")
    (workdir / "models" / "runs").mkdir()
    (workdir / "models" / "runs" / "best.pt").write_bytes(b"weights")

    dest = place(asset(tar_gz({"a.onnx": b"a"}), "m.tar.gz", "models", unpack=True))

    assert (dest / "my-notes.txt").read_text() == "results of three weeks"
    assert (dest / "runs" / "best.pt").read_bytes() == b"weights"
    assert (dest / "a.onnx").read_bytes() == b"a"


def test_an_archive_member_clashing_with_a_users_file_is_refused_with_nothing_changed(world):
    asset, place, workdir = world
    (workdir / "models").mkdir()
    (workdir / "models" / "a.onnx").write_bytes(b"the user's a.onnx")

    with pytest.raises(BadInput, match=r"models/a.onnx holds another file"):
        place(asset(tar_gz({"a.onnx": b"a", "b.onnx": b"b"}), "m.tar.gz", "models", unpack=True))
    assert sorted(p.name for p in (workdir / "models").iterdir()) == ["a.onnx"]
    assert (workdir / "models" / "a.onnx").read_bytes() == b"the user's a.onnx"


def test_a_new_archive_version_replaces_only_the_members_warmstart_put_there(world):
    asset, place, _workdir = world
    dest = place(asset(tar_gz({"a.onnx": b"a1", "old.onnx": b"o"}), "m.tar.gz", "models", unpack=True))
    (dest / "mine.txt").write_text("added by the user since")

    place(asset(tar_gz({"a.onnx": b"a2", "new.onnx": b"n"}), "m.tar.gz", "models", unpack=True))

    assert (dest / "a.onnx").read_bytes() == b"a2" and (dest / "new.onnx").read_bytes() == b"n"
    assert not (dest / "old.onnx").exists(), "warmstart's own member of the old version went"
    assert (dest / "mine.txt").read_text() == "added by the user since"


def test_an_archive_where_a_file_is_is_refused(world):
    asset, place, workdir = world
    (workdir / "models").write_text("a file of the user's")
    with pytest.raises(BadInput, match="models is a file"):
        place(asset(tar_gz({"a.onnx": b"a"}), "m.tar.gz", "models", unpack=True))
    assert (workdir / "models").read_text() == "a file of the user's"


def test_an_archive_member_below_a_users_file_or_link_is_refused(world):
    asset, place, workdir = world
    (workdir / "models").mkdir()
    (workdir / "models" / "sub").write_text("a file where the archive has a folder")
    with pytest.raises(BadInput, match="models/sub is in the way"):
        place(asset(tar_gz({"sub/b.onnx": b"b"}), "m.tar.gz", "models", unpack=True))
    assert (workdir / "models" / "sub").read_text() == "a file where the archive has a folder"


def test_an_archive_whose_names_are_not_utf8_is_placed_and_its_next_version_replaces_them(world):
    """A tar made on Windows names its files in its code page: GBK for the photo of a Chinese
    plate. Unpacked, they are named by those bytes, and the marker that lists them could not be
    written (UnicodeEncodeError: exit 70, on every run)."""
    asset, place, _workdir = world
    first, second = "plates/京A12345.jpg", "plates/沪B54321.jpg"

    def unpacked(name: str) -> str:
        return os.fsdecode(name.encode("gbk"))  # the name the file has: GBK's bytes

    dest = place(asset(tar_gz({first: b"1", second: b"2"}, encoding="gbk"), "p.tar.gz", "data", unpack=True))
    assert (dest / unpacked(first)).read_bytes() == b"1" and (dest / unpacked(second)).read_bytes() == b"2"

    place(asset(tar_gz({second: b"2 again"}, encoding="gbk"), "p.tar.gz", "data", unpack=True))
    assert not (dest / unpacked(first)).exists(), "warmstart's own member of the old version went"
    assert (dest / unpacked(second)).read_bytes() == b"2 again"
    assert (dest / MARKER).read_bytes().split(b"\n")[1:] == [second.encode("gbk"), b""]


def test_a_marker_naming_what_lies_outside_its_folder_removes_nothing_there(world, tmp_path):
    """The marker lies on Drive beside the members, and Drive may be shared: one that names a
    path outside its folder (`..`, an absolute path, a path through a link in the folder) is no
    record of warmstart's members. A new version removes only what lies inside the folder."""
    asset, place, workdir = world
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("victim", "via-link"):
        (outside / name).write_text("the user's")
    (workdir / "beside.txt").write_text("the user's")
    dest = workdir / "models"
    dest.mkdir()
    (dest / "link").symlink_to(outside)
    (dest / "old.onnx").write_text("from the version before")
    (dest / MARKER).write_text("\n".join(["0" * 64, "old.onnx", "../beside.txt", "sub/../../beside.txt",
                                          str(outside / "victim"), "link/via-link"]) + "\n")

    archive = tar_gz({"a.onnx": b"a"})  # once: gzip's header holds the time it was made
    place(asset(archive, "m.tar.gz", "models", unpack=True))

    assert (dest / "a.onnx").read_bytes() == b"a" and not (dest / "old.onnx").exists()
    assert (workdir / "beside.txt").read_text() == "the user's"
    assert [(p.name, p.read_text()) for p in sorted(outside.iterdir())] == [("via-link", "the user's"),
                                                                           ("victim", "the user's")]
    assert (dest / MARKER).read_text() == f"{hashlib.sha256(archive).hexdigest()}\na.onnx\n"


def test_a_marker_that_is_no_text_or_is_huge_is_no_record(world):
    """A damaged marker (not UTF-8, or of 1 GiB) is read no further than a marker holds, and
    means the folder's members are not warmstart's: the archive is placed as into a new folder."""
    asset, place, workdir = world
    dest = workdir / "models"
    dest.mkdir()
    (dest / MARKER).write_bytes(b"\xff\xfe" * 100)
    place(asset(tar_gz({"a.onnx": b"a"}), "m.tar.gz", "models", unpack=True))
    assert (dest / "a.onnx").read_bytes() == b"a"

    os.truncate(dest / MARKER, 1 << 30)
    (dest / "a.onnx").unlink()
    place(asset(tar_gz({"a.onnx": b"a"}), "m.tar.gz", "models", unpack=True))
    assert (dest / "a.onnx").read_bytes() == b"a" and (dest / MARKER).stat().st_size < 200


@pytest.mark.parametrize("where", ["local", "on-drive"])
def test_two_runs_recording_placed_files_at_once_lose_none(tmp_path, where):
    """The ledger of the files warmstart placed is read and written again for each file: two
    runs at once on one machine (two recipes placing their models) each dropped some of what the
    other recorded meanwhile (41 to 80 of 80 kept, in three tries), and a later version of such
    a file stopped as if it were the user's. Real processes, 100 records each."""
    drive = tmp_path / "drive"
    (drive / "Work").mkdir(parents=True)
    writer = ("import sys\nfrom pathlib import Path\nfrom warmstart.assets import PlacedFiles\n"
              "from warmstart.store import DriveStore\nfrom warmstart.tiered import TieredStore\n"
              "placed = PlacedFiles(TieredStore(DriveStore(Path(sys.argv[1]))))\n"
              "for n in range(100):\n    placed.record(Path(sys.argv[2]) / f'f{n}.onnx', sys.argv[3])\n")
    base = {"local": tmp_path / "home", "on-drive": drive / "Work"}[where]
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    runs = [subprocess.Popen([sys.executable, "-c", writer, str(drive), str(base / f"run{n}"), f"{n}" * 64], env=env)
            for n in (1, 2)]

    assert [run.wait(timeout=120) for run in runs] == [0, 0]
    ledger = tmp_path / "cache" / "warmstart" / "placed.json" if where == "local" else \
        TieredStore(DriveStore(drive)).placed_ledger
    recorded = json.loads(ledger.read_text())
    assert len(recorded) == 200 and {recorded[str(base / "run2" / "f7.onnx")]} == {"2" * 64}
