"""warmstart as an installed tool: a real wheel built from this checkout, installed (not editable)
into a fresh virtualenv from the package index, run as the `warmstart` console script from a
folder that has no tasks.py. It must find its recipes, locks and platform profiles in the package.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import packaging
import pytest
from conftest import CACHE_HOME

from warmstart import PROJECT_ROOT
from warmstart.pipconfig import pip_env
from warmstart.uv import find_uv

pytestmark = pytest.mark.registry


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The `warmstart` command of a fresh virtualenv holding the wheel and its dependencies."""
    root = tmp_path_factory.mktemp("installed")
    env = pip_env() | {"XDG_CACHE_HOME": CACHE_HOME}
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(root / "dist"),
                            str(PROJECT_ROOT)], env=env, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    (wheel,) = (root / "dist").glob("warmstart-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for shipped in ("envs/colab.toml", "envs/images/colab-latest.toml", "recipes/hyperlpr.toml",
                    "requirements/hyperlpr.in", "requirements/colab-latest/hyperlpr-py313-manylinux_x86_64.txt"):
        assert f"warmstart/_shipped/{shipped}" in names, shipped
    uv = str(find_uv())
    venv = root / "venv"
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], env=env, check=True)
    done = subprocess.run([uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), str(wheel)],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return venv / "bin" / "warmstart"


def run(command: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(command), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_console_script_lists_the_same_tasks_as_invoke(installed, tmp_path):
    listed = run(installed, "--list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    for name in ("bootstrap", "status", "lock", "image", "recipes", "cache", "assets", "gpu"):
        assert f"  {name} " in listed.stdout or listed.stdout.rstrip().endswith(f"  {name}"), name


def test_the_installed_tool_finds_its_recipes_and_profiles_in_the_package(installed, tmp_path):
    recipes = run(installed, "recipes", "--drive", str(tmp_path / "drive"), cwd=tmp_path)
    assert recipes.returncode == 0, recipes.stderr
    assert "hyperlpr " in recipes.stdout and "/warmstart/_shipped/recipes/hyperlpr.toml" in recipes.stdout
    checked = run(installed, "lock", "--check", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr + checked.stdout


def test_flags_have_no_automatic_short_forms(installed, tmp_path):
    for task, flag in (("bootstrap", "--python"), ("cache", "--prune"), ("bootstrap", "--dry-run")):
        shown = run(installed, task, "--help", cwd=tmp_path)
        assert shown.returncode == 0 and flag in shown.stdout
        assert "-p," not in shown.stdout and "-r," not in shown.stdout and "-d," not in shown.stdout, shown.stdout


def test_the_wheel_is_ready_to_publish_and_names_extras_that_install(installed, tmp_path):
    """Its version is warmstart.__version__, its licence travels with it, and a missing extra is
    named by a command that installs it here (warmstart itself is not on the package index)."""
    python = installed.parent / "python"
    code = ("from importlib import metadata; from warmstart import __version__, extras; "
            "print(metadata.version('warmstart') == __version__, "
            "any(f.name == 'LICENSE' for f in metadata.files('warmstart'))); print(extras.install_command('gcs'))")
    done = subprocess.run([str(python), "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["True True", f"{python} -m pip install 'gcsfs>=2024.6'"]


def test_in_an_interpreter_without_pip_the_named_command_still_installs_the_extra(tmp_path):
    """warmstart's tools on Colab live in a virtualenv without pip: the command a missing extra
    names uses the notebook's pip (WARMSTART_PYTHON) aimed at it, and works pasted."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "tools")], check=True)
    tools = tmp_path / "tools" / "bin" / "python"
    lib = tmp_path / "lib"  # warmstart's one import-time dependency here, without bringing pip along
    shutil.copytree(Path(packaging.__file__).parent, lib / "packaging")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WARMSTART_", "PIP_"))} | {
        "PYTHONPATH": f"{PROJECT_ROOT}:{lib}", "WARMSTART_PYTHON": sys.executable, "PIP_CONFIG_FILE": os.devnull}
    named = subprocess.run([str(tools), "-c", "from warmstart import extras; print(extras.install_command('lock'))"],
                           env=env, capture_output=True, text=True)
    assert named.returncode == 0, named.stderr
    command = named.stdout.strip()
    assert command == f"{sys.executable} -m pip --python {tools} install 'pyelftools>=0.31'"

    pasted = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True)

    assert pasted.returncode == 0, pasted.stderr
    assert subprocess.run([str(tools), "-c", "import elftools"], env=env).returncode == 0


def test_a_target_without_pip_where_warmstart_has_neither_pip_nor_uv_is_said_with_the_way_out(tmp_path):
    """warmstart's own tools on a VM carry no pip and no uv (Colab ships uv; off Colab there may be
    none): pip is then the target's own, and a target without it ended the run with "pip failed
    to install the locked packages (exit 1)". An interpreter without site-packages (-S), given
    packaging as warmstart's tools have it, stands in for warmstart's; the target is a real
    virtualenv without pip (in a folder whose name needs quoting), and the pip run is real."""
    target = tmp_path / "my venv" / "bin" / "python"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "my venv")], check=True)
    tools = tmp_path / "tools"  # packaging, and no pip beside it
    shutil.copytree(Path(packaging.__file__).parent, tools / "packaging")
    code = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[3]]; from pathlib import Path\n"
            "from warmstart import installer\n"
            "from warmstart.errors import PreconditionUnmet\n"
            "try:\n"
            "    installer.run_pip(Path(sys.argv[2]), ['install', 'alpha'], 'install the locked packages')\n"
            "except PreconditionUnmet as exc:\n"
            "    print(exc)\n")
    done = subprocess.run([sys.executable, "-S", "-c", code, str(PROJECT_ROOT), str(target), str(tools)],
                          capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "PATH"} | {"PATH": "/usr/bin:/bin"})

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{target} has no pip, and uv is not installed where warmstart runs: "), done.stdout
    give_pip = re.search(r"or give the target pip with `([^`]+)`$", done.stdout.strip())[1]
    assert subprocess.run(["sh", "-c", give_pip]).returncode == 0, "the command works pasted into a shell"
    assert subprocess.run([str(target), "-m", "pip", "--version"], capture_output=True).returncode == 0


def test_the_console_script_runs_a_bootstrap_line_itself_and_gives_invoke_any_other(installed, tmp_path):
    """warmstart.launch: `warmstart bootstrap ...` runs the task at once; a line the task's flags do
    not take is invoke's, in its words and with its exit code."""
    target = tmp_path / "target"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(target)], check=True)
    (tmp_path / "drive").mkdir()

    planned = run(installed, "bootstrap", "--recipe", "hyperlpr", "--drive", str(tmp_path / "drive"), "--python",
                  str(target / "bin" / "python"), "--allow-no-gpu", "--dry-run", "--json", cwd=tmp_path)
    misspelt = run(installed, "bootstrap", "--recipe", "hyperlpr", "--dryrun", cwd=tmp_path)

    assert planned.returncode == 0, planned.stderr
    report = json.loads(planned.stdout)
    assert report["dry_run"] is True and report["recipe"] == "hyperlpr" and report["lock"].startswith(
        str(installed.parent.parent))  # the package's own shipped lock
    assert (misspelt.returncode, misspelt.stderr.strip()) == (1, "No idea what '--dryrun' is!")
