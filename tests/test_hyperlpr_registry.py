"""The real `hyperlpr` recipe against the real registry (PyPI): cold install into a fresh
virtualenv with the model files served from ../shared/hyperlpr on 127.0.0.1 (upstream cannot be
reached from here), no-op re-run, wipe of the environment and the home folder, then an offline
restore with the network cut, and a real plate detection. The GPU is the one thing this
machine lacks, so these runs pass --allow-no-gpu."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from conftest import (
    HAVE_MODELS,
    NETNS,
    SHARED_HYPERLPR,
    cli_env,
    hyperlpr_variant,
    installed,
    make_venv,
    needs_netns,
    run_cli,
    serve_folder,
)

pytestmark = [pytest.mark.registry, needs_netns]
@pytest.fixture(scope="module")
def restored(tmp_path_factory):
    """Cold bootstrap, re-run, wipe (environment and home), offline restore."""
    tmp = tmp_path_factory.mktemp("hyperlpr")
    recipe = hyperlpr_variant(tmp / "project")
    drive, home = tmp / "drive", tmp / "home"
    drive.mkdir()
    home.mkdir()
    mirror, models = serve_folder(SHARED_HYPERLPR / "models" / "20230229" / "onnx")
    env = cli_env(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), WARMSTART_ASSET_MIRROR=mirror)
    args = ("bootstrap", "--recipe", str(recipe), "--drive", str(drive), "--allow-no-gpu", "--json")

    cold = run_cli(*args, "--python", str(make_venv(tmp / "venv")), env=env)
    models.shutdown()
    assert cold.code == 0, cold.stderr
    again = run_cli(*args, "--python", str(tmp / "venv" / "bin" / "python"), env=env)
    assert again.code == 0 and again.report["changed"] is False, again.stderr

    shutil.rmtree(tmp / "venv")
    shutil.rmtree(home)
    home.mkdir()
    python = make_venv(tmp / "venv")
    offline = run_cli(*args, "--python", str(python), "--offline", env=env, offline_net=True)
    assert offline.code == 0, offline.stderr
    return python, home, cold.report, offline.report


def test_offline_restore_brings_back_the_same_versions(restored):
    python, _home, cold, offline = restored
    assert offline["installed"] == cold["installed"]
    assert offline["snapshot"]["used"] is True, "a warm restore unpacks the snapshot"
    assets = 3 if HAVE_MODELS else 0
    assert offline["cache"]["misses"] == 0 and offline["cache"]["hits"] == 1 + assets
    have = installed(python)
    assert have["hyperlpr3"] == "0.1.3"
    assert "onnxruntime-gpu" in have and "opencv-python-headless" in have


def test_cpu_onnxruntime_and_opencv_never_installed(restored):
    python, _home, _cold, _offline = restored
    have = installed(python)
    assert "onnxruntime" not in have and "opencv-python" not in have
    providers = subprocess.run(
        [str(python), "-c", "import onnxruntime; print(onnxruntime.get_available_providers())"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "CUDAExecutionProvider" in providers  # the GPU build owns the `onnxruntime` module


@pytest.mark.skipif(not HAVE_MODELS, reason="../shared/hyperlpr/models not present")
def test_restored_vm_detects_a_plate_offline(restored):
    python, home, _cold, offline = restored
    assert [c["ok"] for c in offline["checks"]] == [True, True]
    assert (home / ".hyperlpr3" / "20230229" / "onnx" / "y5fu_320x_sim.onnx").is_file()
    script = (
        "import os, cv2, hyperlpr3\n"
        "from hyperlpr3.inference.multitask_detect import MultiTaskDetectorORT\n"
        "d = MultiTaskDetectorORT(os.path.expanduser('~/.hyperlpr3/20230229/onnx/y5fu_320x_sim.onnx'),"
        " input_size=(320, 320))\n"
        f"boxes = d(cv2.imread('{SHARED_HYPERLPR}/images/test_img.jpg'))\n"
        "print(len(boxes), *[round(float(v)) for v in boxes[0][:4]], float(boxes[0][4]))\n"
    )
    out = subprocess.run([*NETNS, "--", str(python), "-c", script],
                         env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, check=True).stdout.split()
    count, x1, y1, x2, y2, score = int(out[0]), *map(int, out[1:5]), float(out[5])
    assert count == 1
    assert abs(x1 - 1751) < 10 and abs(y1 - 747) < 10 and abs(x2 - 1879) < 10 and abs(y2 - 855) < 10
    assert score > 0.5
