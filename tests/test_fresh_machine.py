"""A wiped Colab VM, as closely as this machine can show it.

Drive holds a copy of the warmstart checkout (as MyDrive/warmstart would). VM 1 is a new
virtualenv made from the bare interpreter, with an empty HOME and no pip cache; it runs
`warmstart.sh hyperlpr` online, which installs warmstart's own dependencies and the recipe and
fills the Drive cache. VM 2 is another such machine, with the network cut (`unshare -n`): the
same script restores warmstart's dependencies (into their own folder, not the VM's
interpreter), then the recipe, from Drive alone.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HAVE_MODELS, NETNS, REPO, hyperlpr_mirror, hyperlpr_variant, needs_netns, serve_folder, wait_until
from standin import machine_network

pytestmark = [pytest.mark.registry, needs_netns]


def copy_checkout(dest: Path) -> None:
    """The files a `git clone` would have (tracked and new, not ignored ones like .venv)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)


def new_vm(root: Path) -> tuple[Path, dict[str, str]]:
    """A virtualenv from the bare interpreter (pip only) and an empty home: a wiped VM."""
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(root / "venv")], check=True)
    (root / "home").mkdir()
    env = machine_network() | {"PATH": f"{root / 'venv' / 'bin'}:/usr/bin:/bin", "HOME": str(root / "home"),
           "WARMSTART_PYTHON": str(root / "venv" / "bin" / "python"), "WARMSTART_PLATFORM": "local"}
    return root / "venv" / "bin" / "python", env


def run_script(checkout: Path, env: dict[str, str], *args: str, offline_net: bool = False):
    cmd = ["bash", str(checkout / "warmstart.sh"), "hyperlpr", "--allow-no-gpu", "--json", *args]
    if offline_net:
        cmd = [*NETNS, "--", *cmd]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


def test_wiped_vm_restores_warmstart_and_the_recipe_from_drive_offline(tmp_path):
    drive = tmp_path / "drive"
    checkout = drive / "warmstart"
    copy_checkout(checkout)
    hyperlpr_variant(checkout)  # the models this machine has, served below in place of upstream

    python1, env1 = new_vm(tmp_path / "vm1")
    assert subprocess.run([str(python1), "-c", "import invoke"], capture_output=True).returncode != 0
    mirror, models = serve_folder(hyperlpr_mirror()) if HAVE_MODELS \
        else ("http://127.0.0.1:9", None)
    # Drive stands in as a folder: named as a user off Colab names it (on Colab: the mounted MyDrive),
    # and mounted there as far as warmstart's checkout on it knows (no bytecode beside it)
    on_drive = {"WARMSTART_DRIVE": str(drive), "WARMSTART_MOUNT_POINT": str(drive)}
    cold = run_script(checkout, env1 | on_drive | {"WARMSTART_ASSET_MIRROR": mirror})
    if models:
        models.shutdown()
    assert cold.returncode == 0, cold.stderr
    assert "cached them in" in cold.stderr
    # The `!invoke` line is printed once a bootstrap worked, never after one that failed.
    assert "from now on, in any folder of this VM: " in cold.stderr
    assert "VM: !" not in cold.stderr, "a `!` line is for notebook cells; this is a shell"
    failed = subprocess.run(["bash", str(checkout / "warmstart.sh"), "no-such-recipe"], env=env1 | on_drive,
                            capture_output=True, text=True, timeout=300)
    assert failed.returncode == 2 and "no recipe named 'no-such-recipe'" in failed.stderr, failed.stderr
    assert "from now on" not in failed.stderr
    # The run returned with the environment usable; the user keeps the VM up while Drive fills.
    assert json.loads(cold.stdout)["drive_writes"] == "being written to Drive in the background"
    jobs = tmp_path / "vm1" / "home" / ".cache" / "warmstart" / "drivework"
    wait_until(lambda: not any(jobs.glob("*/*")), 600, "the background Drive writes did not finish", every=0.2)

    python2, env2 = new_vm(tmp_path / "vm2")
    warm = run_script(checkout, env2 | on_drive, "--offline", offline_net=True)

    assert warm.returncode == 0, warm.stderr
    assert "restored warmstart's dependencies from" in warm.stderr
    report = json.loads(warm.stdout)
    assert report["installed"] == json.loads(cold.stdout)["installed"]
    assert report["cache"]["misses"] == 0
    assert report["drive"] == str(drive)
    # `import hyperlpr3` fetches its models unless they are in place: only with ../shared's models.
    modules = "onnxruntime" + (", hyperlpr3" if HAVE_MODELS else "")
    imports = subprocess.run([*NETNS, "--", str(python2), "-c", f"import {modules}"],
                             env=env2, capture_output=True, text=True)
    assert imports.returncode == 0, imports.stderr
    # warmstart's own tools live in their own folder, not in the notebook's interpreter.
    assert subprocess.run([str(python2), "-c", "import invoke"], capture_output=True).returncode != 0
    assert (tmp_path / "vm2" / "home" / ".cache" / "warmstart" / "tools").is_dir()
    assert not list(checkout.rglob("__pycache__")), "no bytecode may be written to Drive"
