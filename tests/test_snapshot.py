"""Environment snapshots: one archive on Drive, restored so that pip and importlib.metadata cannot
tell it from a pip install; damaged or foreign snapshots fall back to the wheels."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import bootstrap, cli_env, installed, make_venv, run_cli

PLAIN = {"beta": "2.0", "gpu-build": "1.0"}


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

    result = bootstrap(plain, packed, python, env=env)

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

    assert pip(python, "uninstall", "--yes", "beta", env=env).returncode == 0
    assert not (site / "beta").exists() and not (site / "beta-2.0.dist-info").exists()


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


@pytest.mark.parametrize("tool", ["pip", "uv"])
def test_installer_can_be_chosen(plain, drive, tmp_path, env, tool):
    python = make_venv(tmp_path / "venv")

    result = bootstrap(plain, drive, python, "--installer", tool, env=env)

    assert result.code == 0, result.stderr
    assert result.report["installer"] == tool
    assert installed(python) == PLAIN
    installer_file = next((tmp_path / "venv" / "lib").glob("python3*/site-packages/beta-2.0.dist-info/INSTALLER"))
    assert installer_file.read_text().strip() == tool


def test_unknown_installer_is_bad_input(plain, tmp_path, env):
    result = bootstrap(plain, tmp_path, make_venv(tmp_path / "venv"), "--installer", "conda", env=env)
    assert result.code == 2 and "--installer must be auto, pip or uv" in result.stderr
