"""The team cache on Google Cloud Storage, as a Colab notebook reaches it (the README's *Share a
cache with your team*): nothing installed for it, since warmstart's own interpreter borrows the
gcsfs the image ships from the notebook's (here the stand-in VM's interpreter, with the image's
versions of gcsfs and all it needs, from Colab's published package list).

What stands in for Google: the bucket is a GCS JSON API server on 127.0.0.1
(gcp-storage-emulator, in memory, reached by gcsfs through STORAGE_EMULATOR_HOST), and the
credentials are anonymous (FSSPEC_GCS_TOKEN=anon) where a notebook calls
`auth.authenticate_user()`. Everything else is real: warmstart.sh, the hyperlpr recipe's Colab
lock and wheels from PyPI, uv.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from conftest import COLAB_IMAGES, install_image_versions
from test_colab_flow import RECIPE_ADDS, canonical, cells, make_vm
from test_fresh_machine import copy_checkout

BUCKET = "team-bucket"
MINOR = max(COLAB_IMAGES)  # Colab's latest runtime


@pytest.fixture
def gcs(tmp_path):
    """A GCS JSON API server on 127.0.0.1, holding one empty bucket; its URL."""
    emulator = shutil.which("gcp-storage-emulator", path=str(Path(sys.executable).parent))
    if emulator is None:
        pytest.fail("needs gcp-storage-emulator (the test extra)")
    server, url = _started(emulator, tmp_path / "gcs.log")
    try:
        yield url
    finally:
        server.terminate()
        server.wait(10)


def _started(emulator: str, log: Path, tries: int = 3) -> tuple[subprocess.Popen, str]:
    """The emulator on a port free a moment before, and its URL; started again on another when
    that port was taken meanwhile (by a test beside this one: the emulator then says so in `log`
    and goes on running, answering nothing)."""
    for _ in range(tries):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        with open(log, "wb") as out:
            server = subprocess.Popen([emulator, "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory",
                                       "--default-bucket", BUCKET], stdout=out, stderr=subprocess.STDOUT)
        try:
            for _ in range(100):
                try:
                    if requests.get(f"{url}/storage/v1/b/{BUCKET}", timeout=1).ok:
                        return server, url
                except requests.RequestException:  # not up yet, or another's port
                    pass
                if b"Address already in use" in log.read_bytes():
                    break
                time.sleep(0.1)
        except BaseException:  # an interrupt: no server outlives the test
            server.kill()
            server.wait(10)
            raise
        server.terminate()
        server.wait(10)
        if b"Address already in use" not in log.read_bytes():
            pytest.fail(f"the GCS emulator did not answer; it said: {log.read_text(errors='replace')[-2000:]}")
    pytest.fail(f"the GCS emulator found its port taken, {tries} times")


def objects(url: str, prefix: str) -> dict[str, int]:
    """The bucket's objects under `prefix`: name (below it) -> size, as GCS lists them."""
    listed = requests.get(f"{url}/storage/v1/b/{BUCKET}/o", params={"prefix": prefix}, timeout=10).json()
    return {item["name"].removeprefix(prefix): int(item["size"]) for item in listed.get("items", [])}


def a_vm(root: Path) -> tuple[Path, dict[str, str]]:
    """A wiped Colab VM whose interpreter ships the image's gcsfs, as Colab's does."""
    python, env = make_vm(root, MINOR)
    install_image_versions(python, {"gcsfs"}, COLAB_IMAGES[MINOR], root)
    return python, env


@pytest.mark.registry
def test_a_teammates_wiped_vm_restores_from_the_team_cache_on_gcs_through_the_images_own_gcsfs(gcs, tmp_path):
    assert COLAB_IMAGES[MINOR].shipped.get("gcsfs"), "Colab's image ships gcsfs"
    team = {"WARMSTART_CACHE": f"gs://{BUCKET}/hyperlpr", "STORAGE_EMULATOR_HOST": gcs, "FSSPEC_GCS_TOKEN": "anon"}
    script = "bash {mount}/MyDrive/warmstart/warmstart.sh hyperlpr --allow-no-gpu --packages-only --json > {report}"
    drives = [tmp_path / "drive-1", tmp_path / "drive-2"]  # two people's Drives, one team cache
    for drive in drives:
        copy_checkout(drive / "MyDrive" / "warmstart")
    mount = tmp_path / "vm" / "content" / "drive"

    # VM 1: an empty Drive and an empty bucket. What it fetches goes to both (WARMSTART_WAIT:
    # the Drive work is done before the cell ends).
    python, env = a_vm(tmp_path / "vm")
    first, _ = cells(tmp_path / "vm", drives[0], env | team,
                     [script.format(mount=mount, report=tmp_path / "report-1.json")])

    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads((tmp_path / "report-1.json").read_text())["ok"]
    assert "cannot be used" not in first.stderr and "backend" not in first.stderr, first.stderr[-3000:]
    stored = objects(gcs, "hyperlpr/v1/")
    [index] = [name for name in stored if name.startswith("snapshots/") and name.endswith(".json")]
    [archive] = [name for name in stored if name.startswith("snapshots/") and name.endswith(".tar.zst")]
    assert {name.split("/")[1].split("-")[0].replace("_", "-") for name in stored if name.startswith("wheels/")} \
        == RECIPE_ADDS, "the wheels of what the image lacks"

    # VM 2: a teammate's, wiped, with a Drive of their own that holds nothing of the recipe's.
    shutil.rmtree(tmp_path / "vm")
    python, env = a_vm(tmp_path / "vm")
    before = canonical(python)
    second, _ = cells(tmp_path / "vm", drives[1], env | team,
                      [script.format(mount=mount, report=tmp_path / "report-2.json")])

    assert second.returncode == 0, second.stderr[-3000:]
    report = json.loads((tmp_path / "report-2.json").read_text())
    assert report["ok"] and report["snapshot"]["used"] is True, report["snapshot"]
    assert set(report["snapshot"]["read"]) == {"the team cache"}, report["snapshot"]
    assert report["snapshot"]["read"]["the team cache"] == stored[archive], "the whole archive, read once"
    assert "cannot be used" not in second.stderr, second.stderr[-3000:]
    assert set(canonical(python)) - set(before) == RECIPE_ADDS
    on_drive = sorted(p.name for p in (drives[1] / "MyDrive" / ".warmstart" / "v1" / "snapshots").iterdir())
    assert on_drive == sorted(Path(name).name for name in (index, archive)), \
        "the teammate's Drive keeps a copy for next time"
