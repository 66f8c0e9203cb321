"""The real `hyperlpr` recipe against the real registry (PyPI): cold install into a fresh
virtualenv with the model files served from ../shared/hyperlpr on 127.0.0.1 (upstream cannot be
reached from here), no-op re-run, wipe of the environment and the home folder, then an offline
restore with the network cut, and the user's own HyperLPR3 code reading a real photo. The GPU
is the one thing this machine lacks, so these runs pass --allow-no-gpu; a GPU VM is staged with
the fake NVML driver library where what matters is the decision a GPU changes."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import (
    HAVE_MODELS,
    NETNS,
    REPO,
    SHARED_HYPERLPR,
    cli_env,
    hyperlpr_mirror,
    hyperlpr_variant,
    installed,
    make_venv,
    needs_netns,
    nvml_env,
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
    mirror, models = serve_folder(hyperlpr_mirror())
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
    # the wiped home's 3 models and the recognizer's stand-in; the sample photo stays in the workdir, on Drive
    assets = 4 if HAVE_MODELS else 0
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


def test_hyperlpr3_is_patched_and_the_patch_is_reported(restored):
    python, _home, cold, offline = restored
    for report in (cold, offline):
        assert [(p["distribution"], p["state"]) for p in report["patches"]] == [("hyperlpr3", "applied")]
    assert offline["patches"][0]["changed"] is False, "the snapshot brought the patched files back"
    base = python.parent.parent.glob("lib/python*/site-packages/hyperlpr3/inference/base/base.py")
    assert "def onnx_providers" in next(base).read_text()


# The README's HyperLPR3 usage, unchanged, with a look at what each onnxruntime session asks for.
USER_CODE = """
import json, sys, cv2, onnxruntime as ort
asked, create = [], ort.InferenceSession.__init__
def spy(self, *args, **kwargs):
    asked.append(kwargs.get("providers", args[2] if len(args) > 2 else None))
    create(self, *args, **kwargs)
ort.InferenceSession.__init__ = spy
import hyperlpr3 as lpr3
catcher = lpr3.LicensePlateCatcher()
image = cv2.imread(sys.argv[1])
plates = catcher(image)
box = catcher.pipeline.detector(image)[0]
print(json.dumps({"asked": asked, "plates": [p[0] for p in plates], "box": [float(v) for v in box[:5]],
                  "ran": [s.session.get_providers()[0] for s in (catcher.pipeline.detector,
                          catcher.pipeline.recognizer, catcher.pipeline.classifier)]}))
"""


@pytest.mark.skipif(not HAVE_MODELS, reason="../shared/hyperlpr/models not present")
@pytest.mark.parametrize("machine", ["with an NVIDIA driver", "without one"])
def test_the_users_own_code_asks_for_cuda_first_and_finds_the_plate(restored, fake_nvml_dir, machine):
    """On this CPU machine a GPU VM is the fake NVML driver library: hyperlpr3's sessions then
    ask for CUDA first (and onnxruntime, lacking the CUDA libraries, runs them on the CPU)."""
    python, home, _cold, _offline = restored
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
    if machine == "with an NVIDIA driver":
        env = nvml_env(env, fake_nvml_dir)
    out = subprocess.run([*NETNS, "--", str(python), "-c", USER_CODE, str(SHARED_HYPERLPR / "images" / "test_img.jpg")],
                         env=env, capture_output=True, text=True, check=True).stdout
    seen = json.loads(out)
    wanted = (["CUDAExecutionProvider", "CPUExecutionProvider"] if machine == "with an NVIDIA driver"
              else ["CPUExecutionProvider"])
    assert seen["asked"] == [wanted] * 3, "detector, recognizer and classifier"
    assert seen["ran"] == ["CPUExecutionProvider"] * 3  # no CUDA libraries here: onnxruntime fell back
    x1, y1, x2, y2, score = seen["box"]
    assert abs(x1 - 1752) < 10 and abs(y1 - 747) < 10 and abs(x2 - 1879) < 10 and abs(y2 - 855) < 10
    assert abs(score - 0.74) < 0.05
    assert seen["plates"] == ["A012345"], "the stand-in recognizer read the plate the detector found"


@pytest.mark.skipif(not HAVE_MODELS, reason="../shared/hyperlpr/models not present")
def test_the_recipes_checks_prove_the_device_the_inference_ran_on(restored, fake_nvml_dir):
    """Without a GPU the checks report the CPU and pass; on a machine whose driver reports a GPU
    (the fake NVML library) but where the CUDA provider cannot load, they fail naming the library."""
    python, home, _cold, offline = restored
    outputs = {c["name"]: c["output"] for c in offline["checks"]}
    assert [c["ok"] for c in offline["checks"]] == [True, True]
    plate = outputs["HyperLPR3 reads a plate on the GPU"]
    assert "plate at (1752, 747, 1879, 855), score 0.74" in plate
    assert plate.count("ran on CPUExecutionProvider") == 3 and "there is no NVIDIA GPU here" in plate
    assert "no NVIDIA GPU here: onnxruntime runs on the CPU provider" in outputs["onnxruntime's CUDA provider loads and runs"]

    workdir = Path(offline["workdir"])
    env = nvml_env({"HOME": str(home), "PATH": "/usr/bin:/bin"}, fake_nvml_dir)
    for script, expected in [("onnxruntime_cuda.py", "the CUDA provider cannot load: libcublasLt.so.12"),
                             ("hyperlpr_gpu.py", "ran on the CPU: onnxruntime's CUDA provider did not load")]:
        done = subprocess.run([*NETNS, "--", str(python), str(REPO / "recipes" / "checks" / script)], cwd=workdir,
                              env=env, capture_output=True, text=True)
        assert done.returncode == 1, done.stdout + done.stderr
        assert expected in done.stdout, done.stdout
