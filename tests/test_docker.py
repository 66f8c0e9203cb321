"""The Colab cycle in containers (marked `docker`), on a real container engine: Docker where it
answers, else podman (`.ci/run` installs podman, runc and debootstrap from Debian's packages).

The image is docker/Dockerfile built on a base made from Debian's packages (docker/debian-base.sh:
debootstrap, no registry) with this machine's pyenv Python 3.12 or 3.13 as the system `python3`,
as Colab's is; the base is made once per run, under the run's temporary folder, and one image
serves every test of a Python version. A host folder is Drive. Nothing is pulled from a registry.
The GPU parts need an NVIDIA container runtime (`--gpus all`); without one they skip, saying why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    HAVE_MODELS,
    REPO,
    SCRATCH,
    hyperlpr_mirror,
    hyperlpr_variant,
    pyenv_python,
    serve_folder,
    skip_or_fail,
)
from test_fresh_machine import copy_checkout

from warmstart.uv import find_uv

CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"  # this host's, which trusts its egress proxy


def engine_and_flags() -> tuple[str, list[str], list[str]] | None:
    """What docker/engine.sh chooses (the scripts' one definition): the engine, the flags each run
    takes and its GPU flags; None where no engine answers."""
    script = ('source docker/engine.sh && echo "$engine" && echo "${run_flags[*]}" && echo "${gpu_flags[*]}"')
    done = subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        return None
    engine, run, gpu = [*done.stdout.splitlines(), "", ""][:3]
    return engine, run.split(), gpu.split()


FOUND = engine_and_flags()
ENGINE, RUN_FLAGS, GPU = FOUND or ("docker", [], [])
HAS_NVIDIA = bool(GPU)
needs_gpu = pytest.mark.skipif(not HAS_NVIDIA, reason="the container engine has no NVIDIA runtime or CDI spec")
NO_GPU = [] if HAS_NVIDIA else ["--allow-no-gpu"]
RECIPE_FLAGS = [*NO_GPU, *([] if HAVE_MODELS else ["--packages-only"])]


@pytest.fixture(scope="module", params=["3.12", "3.13"])
def image(request) -> str:
    """The project's image on the Debian base with this Python: the checkout as `git clone` has
    it, with the hyperlpr recipe's assets served from this machine (conftest.hyperlpr_variant)."""
    if FOUND is None:
        skip_or_fail("no container engine answers (docker info, podman info)")
    minor = request.param
    python = pyenv_python(minor)
    if python is None:
        skip_or_fail(f"no pyenv Python {minor} to make the image's system python3 from")
    # this run's own names: a run beside it (another checkout's CI) builds and removes its own
    run = SCRATCH.name.rsplit("-", 1)[-1].lower().replace("_", "")
    tag = f"localhost/warmstart-test-{run}:py{minor.replace('.', '')}"
    base = f"localhost/warmstart-test-base-{run}:py{minor.replace('.', '')}"
    built = subprocess.run(["bash", "docker/debian-base.sh", str(python), base, str(SCRATCH / "debian-base")],
                           cwd=REPO, env=dict(os.environ, UV=str(find_uv())), capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-3000:]
    context = SCRATCH / f"docker-context-{minor}"
    copy_checkout(context)
    hyperlpr_variant(context)
    fmt = ["--format", "docker"] if ENGINE == "podman" else []  # SHELL is a Docker-format instruction
    done = subprocess.run([ENGINE, "build", "--quiet", "--pull=never", *fmt, "-f", "docker/Dockerfile", "--build-arg",
                           f"BASE_IMAGE={base}", "--build-arg", "PYTHON_FROM=base", "--build-arg",
                           f"PYTHON_VERSION={minor}", "-t", tag, "."], cwd=context, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    yield tag
    subprocess.run([ENGINE, "rmi", "--force", tag, base], capture_output=True)


def container(image: str, drive: Path, *args: str, network: str = "default", entrypoint: str | None = None,
              drive_mode: str = "rw", user: str | None = None, env: dict[str, str] | None = None):
    """`ENGINE run --rm` with Drive at /drive. network: "default" (the engine's, reaching the package
    index through this host's CA bundle), "host" (127.0.0.1 too: the asset mirror) or "none"."""
    cmd = [ENGINE, "run", "--rm", "--pull=never", *RUN_FLAGS, *GPU, "-v", f"{drive}:/drive:{drive_mode}"]
    if network != "none":
        cmd += ["-v", f"{CA_BUNDLE}:/etc/ssl/certs/host-ca.crt:ro", "-e", "SSL_CERT_FILE=/etc/ssl/certs/host-ca.crt",
                "-e", "PIP_CERT=/etc/ssl/certs/host-ca.crt"]
    cmd += [] if network == "default" else ["--network", network]
    cmd += ["--user", user] if user else []
    cmd += [arg for k, v in (env or {}).items() for arg in ("-e", f"{k}={v}")]
    cmd += ["--entrypoint", entrypoint] if entrypoint else []
    return subprocess.run([*cmd, image, *args], capture_output=True, text=True, timeout=1800)


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.docker
def test_cold_then_offline_restore_in_fresh_containers(image, tmp_path):
    """A cold bootstrap of the real hyperlpr recipe with a host folder as Drive; a fresh container
    with no network restores from it, runs the recipe's checks, and `invoke gpu --json` says
    what NVML sees; the host folder then holds only what warmstart wrote."""
    drive = tmp_path / "drive"
    drive.mkdir()
    mirror, server = serve_folder(hyperlpr_mirror()) if HAVE_MODELS else ("http://127.0.0.1:9", None)
    try:
        cold = container(image, drive, "hyperlpr", *RECIPE_FLAGS, "--json", network="host",
                         env={"WARMSTART_ASSET_MIRROR": mirror})
    finally:
        if server:
            server.shutdown()
    assert cold.returncode == 0, cold.stderr[-3000:]
    first = last_json(cold.stdout)
    assert first["platform"] == "docker" and first["drive_writes"] == "written to Drive", \
        "a container's processes end with it: Drive is written before the run returns"

    offline = container(image, drive, "hyperlpr", *RECIPE_FLAGS, "--offline", "--json", network="none")

    assert offline.returncode == 0, offline.stderr[-3000:]
    report = last_json(offline.stdout)
    assert report["installed"] == first["installed"]
    assert report["snapshot"]["used"] is True and report["cache"]["misses"] == 0
    if HAVE_MODELS:
        assert [c["ok"] for c in report["checks"]] == [True] * len(report["checks"]) and report["checks"]

    gpu = container(image, drive, "-c", "bash warmstart.sh warmstart --offline >/dev/null && invoke gpu --json",
                    network="none", entrypoint="bash")
    if HAS_NVIDIA:
        assert gpu.returncode == 0 and last_json(gpu.stdout)["devices"], gpu.stderr
    else:
        assert gpu.returncode == 3, gpu.stdout + gpu.stderr
        assert last_json(gpu.stdout)["available"] is False
        assert "no NVIDIA driver library (libnvidia-ml.so.1)" in gpu.stdout + gpu.stderr

    assert sorted(p.name for p in drive.iterdir()) == [".warmstart", "HyperLPR"], "only what warmstart wrote"
    assert sorted(p.name for p in (drive / ".warmstart").iterdir()) == ["v1"]


@pytest.mark.docker
@pytest.mark.parametrize("image", ["3.12"], indirect=True)  # one Python shows it
def test_a_read_only_drive_installs_and_warns_that_nothing_was_cached(image, tmp_path):
    drive = tmp_path / "drive"
    drive.mkdir()

    done = container(image, drive, "hyperlpr", *NO_GPU, "--packages-only", "--json", drive_mode="ro")

    assert done.returncode == 0, done.stderr[-3000:]
    report = last_json(done.stdout)
    assert report["ok"] and len(report["installed"]) == 28
    assert any("not cached on Drive" in w or "Drive cache was not filled" in w for w in report["warnings"]), \
        report["warnings"]
    assert list(drive.iterdir()) == []


@pytest.mark.docker
@pytest.mark.parametrize("image", ["3.12"], indirect=True)  # one Python shows it
def test_a_non_root_user_with_drive_owned_by_root_is_one_line_exit_3(image, tmp_path):
    drive = tmp_path / "drive"
    (drive / ".warmstart").mkdir(parents=True)
    os.chmod(drive, 0o755)  # root's, as a root container leaves it
    os.chmod(drive / ".warmstart", 0o755)

    done = container(image, drive, "hyperlpr", *NO_GPU, "--packages-only", user="1000:1000",
                     env={"HOME": "/tmp/home"}, network="none")

    assert done.returncode == 3, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("warmstart.sh: the Drive folder /drive belongs to uid 0, and this user (uid 1000) "
                           "may not write there: run as uid 0"), line
    assert sorted(p.name for p in drive.rglob("*")) == [".warmstart"], "and nothing was written"


@pytest.mark.docker
@needs_gpu
def test_nvml_sees_the_gpu_inside_the_container(image, tmp_path):
    done = container(image, tmp_path, "-c", "bash warmstart.sh warmstart >/dev/null && invoke gpu --json",
                     entrypoint="bash")
    assert done.returncode == 0, done.stderr
    gpu = last_json(done.stdout)
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
    scripts = ["warmstart.sh", ".ci/run", "docker/run.sh", "docker/engine.sh", "docker/debian-base.sh",
               "bench/hyperlpr_device.sh"]
    done = subprocess.run([tool("shellcheck"), "-x", *scripts], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
