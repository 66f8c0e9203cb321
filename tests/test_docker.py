"""The Colab cycle in containers built from the CUDA image in docker/ (marked `docker`).

A cold bootstrap with a host folder as Drive, then a fresh container with the network disabled
that restores from that folder and runs the recipe's checks, then `invoke gpu --json`. These
need a Docker engine, and the GPU parts an NVIDIA runtime: without them they skip, saying why.
The same scenario without Docker runs everywhere in tests/test_fresh_machine.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


def docker_info() -> str | None:
    if not shutil.which("docker"):
        return None
    done = subprocess.run(["docker", "info", "--format", "{{json .Runtimes}}"], capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else None


INFO = docker_info()
needs_docker = pytest.mark.skipif(INFO is None, reason="no Docker engine answers `docker info`")
HAS_NVIDIA = bool(INFO and "nvidia" in INFO)
needs_gpu = pytest.mark.skipif(not HAS_NVIDIA, reason="Docker has no NVIDIA runtime (--gpus all)")
GPU = ["--gpus", "all"] if HAS_NVIDIA else []
NO_GPU = [] if HAS_NVIDIA else ["--allow-no-gpu"]


@pytest.fixture(scope="module", params=["3.12", "3.13"])
def image(request):
    tag = f"warmstart-cuda-test:py{request.param.replace('.', '')}"
    subprocess.run(["docker", "build", "-f", "docker/Dockerfile", "--build-arg",
                    f"PYTHON_VERSION={request.param}", "-t", tag, "."], cwd=REPO, check=True)
    return tag


@pytest.fixture(scope="module")
def drive(tmp_path_factory):
    return tmp_path_factory.mktemp("docker-drive")


def container(image, drive, *args, network=True, entrypoint=None):
    cmd = ["docker", "run", "--rm", *GPU, "-v", f"{drive}:/drive"]
    cmd += [] if network else ["--network", "none"]
    cmd += ["--entrypoint", entrypoint] if entrypoint else []
    return subprocess.run([*cmd, image, *args], capture_output=True, text=True, timeout=1800)


@pytest.mark.docker
@needs_docker
def test_cold_then_offline_restore_in_fresh_containers(image, drive):
    cold = container(image, drive, "hyperlpr", *NO_GPU, "--json")
    assert cold.returncode == 0, cold.stderr
    offline = container(image, drive, "hyperlpr", *NO_GPU, "--offline", "--json", network=False)
    assert offline.returncode == 0, offline.stderr
    report = json.loads(offline.stdout)
    assert report["platform"] == "docker"
    assert report["installed"] == json.loads(cold.stdout)["installed"]
    assert report["cache"]["misses"] == 0
    assert all(check["ok"] for check in report["checks"])


@pytest.mark.docker
@needs_docker
@needs_gpu
def test_nvml_sees_the_gpu_inside_the_container(image, drive):
    script = "bash warmstart.sh warmstart --offline >/dev/null && invoke gpu --json"
    done = container(image, drive, "-c", script, network=False, entrypoint="bash")
    assert done.returncode == 0, done.stderr
    gpu = json.loads(done.stdout.strip().splitlines()[-1])
    assert gpu["available"] is True and gpu["devices"]


def tool(name: str) -> str:
    """A linter from the test extras (next to this interpreter) or from PATH."""
    found = shutil.which(name, path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    if found is None:
        pytest.skip(f"{name} is not installed (the test extras bring it)")
    return found


def test_dockerfile_passes_hadolint():
    done = subprocess.run([tool("hadolint"), "docker/Dockerfile"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_shell_scripts_pass_shellcheck():
    scripts = ["warmstart.sh", ".ci/run", "docker/run.sh", "bench/hyperlpr_device.sh"]
    done = subprocess.run([tool("shellcheck"), *scripts], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
