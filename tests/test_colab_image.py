"""The shipped recipes on a Colab stand-in built from Colab's own published package lists.

A stand-in VM, for each runtime users meet (3.13 latest, 3.12 the pinned 2026.07): the pyenv
interpreter of that Python; a virtualenv holding the image's versions (envs/images/) of the
recipe's dependency closure and of image packages that depend on them (pandas, google-api-core,
requests-oauthlib, opencv-python), installed from PyPI; Google Drive as a tmpfs mounted in a
private mount namespace at the colab profile's mount point. What cannot exist here is mocked
and says so: the image's CUDA 12.8 torch builds (+cu128, from PyTorch's own index) are
dist-info folders only, and there is no notebook kernel (this is the `!invoke` path).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    ALL_COLAB_IMAGES,
    CACHE_HOME,
    DEPENDENTS,
    MOUNTNS,
    REPO,
    Result,
    cli_env,
    colab_vm,
    install_image_versions,
    installed,
    needs_netns,
    run_cli,
)
from conftest import COLAB_IMAGES as IMAGES
from packaging.utils import canonicalize_name

from warmstart.cudalibs import SHARED_OBJECT, cuda_of, read_elf
from warmstart.images import Image
from warmstart.lock import parse_lock
from warmstart.pipconfig import uv_env
from warmstart.status import status_lines
from warmstart.uv import find_uv


def pip_check(python: Path) -> set[str]:
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "check"],
                          capture_output=True, text=True, env=cli_env())
    return {line for line in done.stdout.splitlines() if line and "No broken requirements" not in line}


def on_colab(tmp_path: Path, *args: str) -> Result:
    """`!invoke ARGS` on the stand-in: Drive mounted (a tmpfs) at the colab mount point."""
    mount = tmp_path / "content" / "drive"
    mount.mkdir(parents=True, exist_ok=True)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = cli_env(WARMSTART_PLATFORM="colab", WARMSTART_MOUNT_POINT=str(mount), HOME=str(home))
    script = 'mount -t tmpfs tmpfs "$0" && mkdir "$0/MyDrive" && cd /tmp && exec "$@"'
    done = subprocess.run([*MOUNTNS, "--", "sh", "-c", script, str(mount), sys.executable, "-m",
                           "invoke", "--search-root", str(REPO), *args],
                          env=env, capture_output=True, text=True, timeout=900)
    return Result(done.returncode, done.stdout, done.stderr)


def canonical(dists: dict[str, str]) -> dict[str, str]:
    return {canonicalize_name(k): v for k, v in dists.items()}


def cuda_needs_and_provides(python: Path) -> tuple[set[str], set[str]]:
    prefix = Path(subprocess.run([str(python), "-c", "import sys; print(sys.prefix)"],
                                 capture_output=True, text=True, check=True).stdout.strip())
    needs, provides = set(), set()
    for path in prefix.rglob("*"):
        if path.is_file() and SHARED_OBJECT.search(path.name) and path.read_bytes()[:4] == b"\x7fELF":
            found = cuda_of(*read_elf(path))
            needs |= found[0]
            provides |= found[1]
    return needs, provides


def standin(tmp_path: Path, image: Image, lock: Path) -> Path:
    """A stand-in VM of `image`: its Python, and the image's versions of the lock's closure and of
    the image packages that depend on it."""
    python = colab_vm(tmp_path, image.python_minor)
    closure = {p.name for p in parse_lock(lock).pins if p.name in image.shipped}
    install_image_versions(python, closure | set(DEPENDENTS), image, tmp_path)
    return python


def hyperlpr_lock(image: Image) -> Path:
    return REPO / "requirements" / image.name / f"hyperlpr-py{image.python_minor.replace('.', '')}-manylinux_x86_64.txt"


@pytest.mark.registry
@pytest.mark.parametrize("name", sorted(ALL_COLAB_IMAGES))
def test_hyperlpr_on_colab_adds_only_what_the_image_lacks(name, tmp_path):
    """One stand-in per shipped image (2026.04 and 2026.07 share Python 3.12: the VM's packages
    tell which it is)."""
    image = ALL_COLAB_IMAGES[name]
    python = standin(tmp_path, image, hyperlpr_lock(image))
    before, broken_before = canonical(installed(python)), pip_check(python)

    result = on_colab(tmp_path, "bootstrap", "--recipe", "hyperlpr", "--python", str(python),
                      "--allow-no-gpu", "--packages-only", "--json")

    assert result.code == 0, result.stderr
    report = result.report
    assert report["lock"] == str(hyperlpr_lock(image))
    assert report["image"] == image.name
    # The stand-in holds the image's versions of the recipe's closure, not the whole image, and
    # its pyenv Python is not the image's patch level: said before anything was installed.
    drifted = report["image_drift"]
    assert drifted["closure"] == {} and drifted["image"] == image.name
    vm_python = subprocess.run([str(python), "-c", "import platform; print(platform.python_version())"],
                               capture_output=True, text=True, check=True).stdout.strip()
    assert drifted["python"] == (None if vm_python == str(image.python)
                                 else {"image": str(image.python), "installed": vm_python})
    assert f"image this runtime differs from {image.name} in " in result.stderr
    after = canonical(installed(python))
    assert {n: v for n, v in before.items() if after.get(n) != v} == {}, "the image's versions stay"
    assert set(after) - set(before) == {"hyperlpr3", "loguru", "onnxruntime-gpu"}
    assert report["replaced"] == {} and report["restart_needed"] == []
    # The image ships opencv-python beside the headless build, sharing cv2's files: its doing, not this run's.
    assert not [w for w in report["warnings"] if "which the recipe excludes" in w], report["warnings"]
    status = json.loads(on_colab(tmp_path, "status", "--recipe", "hyperlpr", "--python", str(python),
                                 "--packages-only", "--json").stdout)
    assert "opencv-python" in status["extra"] and status["shared"] == []
    # All of it the image's own: the human line counts them rather than naming them (600 on Colab).
    assert status["extra_not_shipped"] == []
    assert f"extra     none besides the image's {len(status['extra'])}" in status_lines(status)
    new_conflicts = pip_check(python) - broken_before
    # hyperlpr3 declares the CPU onnxruntime, which the recipe excludes on purpose.
    assert all("requires onnxruntime," in line for line in new_conflicts), new_conflicts
    needs, provides = cuda_needs_and_provides(python)
    assert "libcudart.so.12" in needs, "onnxruntime-gpu's CUDA provider was read"
    assert needs - provides <= image.cuda, "every CUDA library it needs is on the image"


def drifted_standin(tmp_path: Path, image: Image) -> Path:
    """A 2026.07 VM drifted by hand: packaging a minor newer than the list says, tqdm missing,
    and click a local-version build (a dist-info only: nothing here imports it)."""
    python = standin(tmp_path, image, hyperlpr_lock(image))
    env = uv_env() | {"UV_CACHE_DIR": str(Path(CACHE_HOME) / "uv")}
    env.pop("PIP_INDEX_URL", None)
    uv = str(find_uv())
    subprocess.run([uv, "pip", "install", "--quiet", "--python", str(python), "packaging==26.4"], check=True, env=env)
    subprocess.run([uv, "pip", "uninstall", "--quiet", "--python", str(python), "tqdm", "click"], check=True, env=env)
    fake_image_build(python, "click", f"{image.shipped['click']}+local")
    return python


@pytest.mark.registry
@needs_netns
def test_a_drifted_runtime_gets_a_lock_of_its_own_and_a_wiped_vm_restores_with_it_offline(tmp_path):
    image = ALL_COLAB_IMAGES["colab-2026.07"]
    drive = tmp_path / "drive"
    drive.mkdir()
    python = drifted_standin(tmp_path / "vm1", image)
    before, broken_before = canonical(installed(python)), pip_check(python)
    flags = ["--recipe", "hyperlpr", "--drive", str(drive), "--allow-no-gpu", "--packages-only", "--json"]

    first = run_cli("bootstrap", *flags, "--python", str(python), env=cli_env(WARMSTART_PLATFORM="colab"))

    assert first.code == 0, first.stderr
    report = first.report
    drift = report["image_drift"]["closure"]
    assert drift["packaging"] == {"image": "26.2", "installed": "26.4"} and drift["tqdm"]["installed"] is None
    lock_step = next(s for s in report["steps"] if s["name"] == "lock")
    assert "made on this runtime now" in lock_step["detail"], lock_step
    print(f"a lock for this runtime, hyperlpr: {lock_step['seconds']:.1f} s")
    after = canonical(installed(python))
    assert report["replaced"] == {} and report["restart_needed"] == [], "nothing the VM had was replaced"
    assert {n: v for n, v in before.items() if after.get(n) != v} == {}
    assert set(after) - set(before) == {"hyperlpr3", "loguru", "onnxruntime-gpu", "tqdm"}
    new_conflicts = pip_check(python) - broken_before
    assert all("requires onnxruntime," in line for line in new_conflicts), new_conflicts
    assert parse_lock(hyperlpr_lock(image)).pins, "the committed lock is as it was"
    (made,) = (drive / ".warmstart" / "v1" / "locks").iterdir()

    # A wiped VM of the same runtime, the network cut: it finds that lock on Drive.
    python2 = drifted_standin(tmp_path / "vm2", image)
    second = run_cli("bootstrap", *flags, "--python", str(python2), "--offline", "--keep-runtime",
                     env=cli_env(WARMSTART_PLATFORM="colab"), offline_net=True)

    assert second.code == 0, second.stderr
    assert second.report["lock"] == str(made) and second.report["replaced"] == {}
    assert canonical(installed(python2))["packaging"] == "26.4"


def fake_image_build(python: Path, name: str, version: str) -> None:
    """A dist-info for one of the image's +cu128 builds (PyTorch's index is out of reach here)."""
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    info = site / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "RECORD").write_text(f"{info.name}/METADATA,,\n{info.name}/RECORD,,\n")


@pytest.mark.parametrize("minor", sorted(IMAGES))
def test_hyperlpr_train_on_colab_keeps_the_images_torch_and_its_cuda(minor, tmp_path):
    python = colab_vm(tmp_path, minor)
    shipped = IMAGES[minor].shipped
    for name in ("torch", "torchvision"):
        fake_image_build(python, name, shipped[name])

    result = on_colab(tmp_path, "status", "--recipe", "hyperlpr-train", "--python", str(python), "--json")

    facts = json.loads(result.stdout)
    assert facts["image"].startswith(IMAGES[minor].name), result.stderr
    assert set(facts["provided"]) == {"torch", "torchvision"}
    assert facts["provided"]["torch"] == {"installed": shipped["torch"], "locked": shipped["torch"].split("+")[0]}
    cuda13 = [n for n in facts["left_to_platform"] if n.startswith("nvidia-")]
    assert cuda13, "PyPI torch's CUDA runtime wheels are left to the image's own build"
    assert not {"torch", "torchvision", *cuda13} & set(facts["missing"])
    assert "ultralytics" in facts["missing"]
    assert os.path.basename(facts["lock"]).startswith("hyperlpr-train-py")
