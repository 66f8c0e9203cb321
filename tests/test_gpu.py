"""GPU preflight through the real pynvml, against a fake `libnvidia-ml.so.1` built with gcc.

Each case runs warmstart in a subprocess with LD_LIBRARY_PATH pointing at the fake library,
since pynvml loads the library by bare name when the process starts using it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import T4, bootstrap, cli_env, make_venv, nvml_env, run_cli

A100_MIG = "NVIDIA A100-SXM4-40GB|40960|8.0|1"


def gpu_json(env):
    result = run_cli("gpu", "--json", env=env)
    return result.code, result.report


def test_t4(fake_nvml_dir):
    code, report = gpu_json(nvml_env(cli_env(), fake_nvml_dir, T4, driver="580.82.07", cuda="12080"))
    assert code == 0
    assert report["available"] is True and (report["error"], report["exit_code"]) == (None, 0)
    assert report["driver_version"] == "580.82.07" and report["cuda_driver_version"] == "12.8"
    (t4,) = report["devices"]
    assert t4["index"] == 0 and t4["name"] == "Tesla T4" and t4["uuid"].startswith("GPU-")
    assert t4["memory_total_mib"] == 15360 and 0 < t4["memory_free_mib"] < 15360
    assert t4["compute_capability"] == "7.5" and t4["mig"] is False


def test_two_different_gpus_and_table(fake_nvml_dir):
    env = nvml_env(cli_env(), fake_nvml_dir, f"{T4};{A100_MIG}", cuda="12040")
    code, report = gpu_json(env)
    assert code == 0 and report["cuda_driver_version"] == "12.4"
    assert [(d["name"], d["compute_capability"], d["mig"]) for d in report["devices"]] == [
        ("Tesla T4", "7.5", False), ("NVIDIA A100-SXM4-40GB", "8.0", True)]
    table = run_cli("gpu", env=env)
    assert table.code == 0
    assert "NVIDIA A100-SXM4-40GB  40960" in table.stdout and "CUDA 12.4" in table.stdout


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        ({"devices": ""}, "reports no GPUs"),
        ({"init_error": "9"}, "driver is installed but not loaded"),
        ({"init_error": "18"}, "driver library and kernel module differ"),
        ({"init_error": "4"}, "no permission"),
    ],
)
def test_no_usable_gpu_says_why_and_exits_3(fake_nvml_dir, settings, reason):
    settings = dict(settings)
    code, report = gpu_json(nvml_env(cli_env(), fake_nvml_dir, settings.pop("devices", T4), **settings))
    assert code == 3 == report["exit_code"]
    assert report["available"] is False and report["devices"] == []
    assert reason in report["error"]


def test_library_missing(tmp_path, no_real_nvml):
    code, report = gpu_json(dict(cli_env(), LD_LIBRARY_PATH=str(tmp_path)))
    assert code == 3 and report["available"] is False
    assert "libnvidia-ml.so.1" in report["error"] and "CPU-only" in report["error"]
    human = run_cli("gpu", env=dict(cli_env(), LD_LIBRARY_PATH=str(tmp_path)))
    assert human.code == 3 and "no usable GPU" in human.stderr


# --- bootstrap's preflight ---------------------------------------------------------------

GPU_TABLE = """[gpu]
required = true
min_memory_gib = 16
min_compute_capability = "7.0"
min_cuda = "12.0"
"""


@pytest.fixture
def gpu_recipe(demo) -> Path:
    demo.write_text(demo.read_text().replace("[gpu]\nrequired = false\n", GPU_TABLE))
    return demo


def preflight(recipe, tmp_path, env, *flags):
    drive = tmp_path / "drive"
    drive.mkdir(exist_ok=True)
    return bootstrap(recipe, drive, make_venv(tmp_path / "venv"), *flags, env=env)


@pytest.mark.parametrize(
    ("devices", "cuda", "found", "needed"),
    [
        ("Tesla T4|15360|7.5|none", "12080", "Tesla T4 (15.0 GiB", "needs a GPU with 16 GiB"),
        ("Tesla M60|16384|5.2|none", "12080", "sm 5.2", "needs compute capability 7.0"),
        ("NVIDIA A100-SXM4-40GB|40960|8.0|0", "11040", "supports CUDA 11.4", "needs CUDA 12.0"),
    ],
)
def test_gpu_below_a_recipe_threshold_stops_before_any_download(
    fake_nvml_dir, gpu_recipe, tmp_path, index, devices, cuda, found, needed
):
    env = nvml_env(cli_env(index.url), fake_nvml_dir, devices, cuda=cuda)

    result = preflight(gpu_recipe, tmp_path, env)

    assert result.code == 3
    assert found in result.stderr and needed in result.stderr
    assert "Runtime > Change runtime type" in result.stderr
    assert result.report["gpu"]["available"] is True
    assert list((tmp_path / "drive").iterdir()) == [], "nothing may be downloaded before the preflight"
    # --allow-no-gpu is about a missing GPU; it does not hide one that is too small.
    assert preflight(gpu_recipe, tmp_path, env, "--allow-no-gpu").code == 3
    allowed = preflight(gpu_recipe, tmp_path, env, "--allow-unfit-gpu")
    assert allowed.code == 0, allowed.stderr
    assert "warning" in allowed.stderr
    looked = run_cli("status", "--recipe", str(gpu_recipe), "--drive", str(tmp_path / "drive"),
                     "--python", str(tmp_path / "venv" / "bin" / "python"), "--json", env=env)
    assert looked.report["action"] == "stop at the GPU check (with --allow-unfit-gpu: no-op)", looked.stderr


def test_fitting_gpu_passes_and_is_in_the_report(fake_nvml_dir, gpu_recipe, tmp_path, index):
    env = nvml_env(cli_env(index.url), fake_nvml_dir, f"{T4};{A100_MIG}")

    result = preflight(gpu_recipe, tmp_path, env, "--dry-run")

    assert result.code == 0, result.stderr
    gpu = result.report["gpu"]
    assert set(gpu) == {"available", "driver_version", "cuda_driver_version", "devices", "error"}
    assert [d["name"] for d in gpu["devices"]] == ["Tesla T4", "NVIDIA A100-SXM4-40GB"]
    assert [s["status"] for s in result.report["steps"] if s["name"] == "gpu"] == ["ok"]


def test_driver_not_loaded_blocks_a_gpu_recipe(fake_nvml_dir, gpu_recipe, tmp_path, index):
    env = nvml_env(cli_env(index.url), fake_nvml_dir, T4, init_error="9")

    result = preflight(gpu_recipe, tmp_path, env)

    assert result.code == 3
    assert "not loaded" in result.stderr and "--allow-no-gpu" in result.stderr


def test_a_run_that_fails_before_the_gpu_step_ends_once_the_probe_s_import_has(demo, tmp_path):
    """The GPU probe runs on a daemon thread beside the steps before the GPU's, and imports
    pynvml there; a run whose target Python did not fit ended while that thread imported, and
    under load about one such run in 30 died of SIGSEGV as the interpreter finalized (CPython
    3.11's import lock freed under the importing thread; seen in CI, where the target printed as
    it started). The process waits for other threads' imports before it ends now
    (background.imports_ended). A stand-in pynvml on PYTHONPATH takes half a second to import on
    any thread but the main one, and writes a file as its import ends."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "pynvml.py").write_text(
        "import os, pathlib, threading, time\n"
        "if threading.current_thread() is not threading.main_thread():\n"
        "    time.sleep(0.5)\n"
        "pathlib.Path(os.environ['IMPORT_ENDED']).write_text(threading.current_thread().name)\n")
    import_ended = tmp_path / "import-ended"
    demo.write_text(demo.read_text().replace('python = ">=3.8"', 'python = ">=3.99"'))
    drive = tmp_path / "drive"
    drive.mkdir()

    result = bootstrap(demo, drive, Path(sys.executable), env=cli_env(PYTHONPATH=str(shim), IMPORT_ENDED=str(import_ended)))

    assert result.code == 3 and "the recipe needs Python >=3.99" in result.report["error"], result.stderr
    assert import_ended.exists(), "the run ended while the probe's thread imported pynvml"
