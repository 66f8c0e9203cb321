"""The real `hyperlpr` recipe against the real registry (PyPI): cold install into a fresh
virtualenv, no-op re-run, wipe, then an offline restore with the network cut. The GPU is the
one thing this machine lacks, so these runs pass --allow-no-gpu."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import REPO, SHARED_HYPERLPR, cli_env, installed, make_venv, needs_netns, run_cli

pytestmark = [pytest.mark.registry, needs_netns]


@pytest.fixture(scope="module")
def restored(tmp_path_factory):
    """Cold bootstrap, re-run, wipe, offline restore; yields the restored interpreter."""
    tmp = tmp_path_factory.mktemp("hyperlpr")
    drive = tmp / "drive"
    drive.mkdir()
    env = cli_env()
    args = ("bootstrap", "--recipe", "hyperlpr", "--drive", str(drive), "--allow-no-gpu", "--json")

    cold = run_cli(*args, "--python", str(make_venv(tmp / "venv")), env=env)
    assert cold.code == 0, cold.stderr
    again = run_cli(*args, "--python", str(tmp / "venv" / "bin" / "python"), env=env)
    assert again.code == 0 and again.report["changed"] is False, again.stderr

    shutil.rmtree(tmp / "venv")
    python = make_venv(tmp / "venv")
    offline = run_cli(*args, "--python", str(python), "--offline", env=env, offline_net=True)
    assert offline.code == 0, offline.stderr
    return python, cold.report, offline.report


def test_offline_restore_brings_back_the_same_versions(restored):
    python, cold, offline = restored
    assert offline["installed"] == cold["installed"]
    assert offline["cache"]["misses"] == 0 and offline["cache"]["hits"] == len(cold["installed"])
    have = installed(python)
    assert have["hyperlpr3"] == "0.1.3"
    assert "onnxruntime-gpu" in have and "opencv-python-headless" in have


def test_cpu_onnxruntime_and_opencv_never_installed(restored):
    python, _cold, _offline = restored
    have = installed(python)
    assert "onnxruntime" not in have and "opencv-python" not in have
    providers = subprocess.run(
        [str(python), "-c", "import onnxruntime; print(onnxruntime.get_available_providers())"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "CUDAExecutionProvider" in providers  # the GPU build owns the `onnxruntime` module


@pytest.mark.skipif(not (SHARED_HYPERLPR / "models").is_dir(), reason="../shared/hyperlpr not present")
def test_restored_environment_detects_a_plate(restored, tmp_path):
    python, _cold, _offline = restored
    # hyperlpr3 downloads its models on import unless ~/.hyperlpr3/20230229 exists.
    (tmp_path / ".hyperlpr3").mkdir()
    (tmp_path / ".hyperlpr3" / "20230229").symlink_to(SHARED_HYPERLPR / "models" / "20230229")
    script = (
        "import cv2\n"
        "from hyperlpr3.inference.multitask_detect import MultiTaskDetectorORT\n"
        f"d = MultiTaskDetectorORT('{SHARED_HYPERLPR}/models/20230229/onnx/y5fu_320x_sim.onnx',"
        " input_size=(320, 320))\n"
        f"boxes = d(cv2.imread('{SHARED_HYPERLPR}/images/test_img.jpg'))\n"
        "print(len(boxes), *[round(float(v)) for v in boxes[0][:4]], float(boxes[0][4]))\n"
    )
    out = subprocess.run(["unshare", "--net", "--", str(python), "-c", script], cwd=REPO,
                         env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, check=True).stdout.split()
    count, x1, y1, x2, y2, score = int(out[0]), *map(int, out[1:5]), float(out[5])
    assert count == 1
    assert abs(x1 - 1751) < 10 and abs(y1 - 747) < 10 and abs(x2 - 1879) < 10 and abs(y2 - 855) < 10
    assert score > 0.5
