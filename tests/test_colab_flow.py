"""The Colab flow end to end, as a user types it, on a stand-in VM for each Colab Python.

A VM here: the pyenv interpreter of the runtime's Python as the notebook's `python3` (a
virtualenv with pip, holding the image's versions of what the recipes use, from Colab's
published package list), an empty HOME, a `/content` folder the `!` cells run in, and uv on
PATH (Colab ships it). Drive is a folder of this machine bind-mounted at the colab profile's
mount point inside the VM's own mount namespace (`unshare -m`), so it outlives the VM, as Drive
does; the warmstart checkout lies on it. There is no notebook frontend: the cells are run by a
shell, and the kernel stand-in for the restart notice is a process named like Colab's.

VM 1 runs `warmstart.sh hyperlpr`, then the literal `invoke bootstrap --recipe hyperlpr` from
/content. Then it is wiped: a new VM in its place (the interpreter at the same path, as on every
Colab VM, and a new HOME) with no network (`unshare -n`), where the same two commands with
--offline restore everything from Drive: warmstart's tools from their wheels, the recipe from
the snapshot VM 1 left.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import (
    COLAB_IMAGES,
    HAVE_MODELS,
    MOUNT_NETNS,
    MOUNTNS,
    NETNS,
    REPO,
    build_wheel,
    cli_env,
    colab_vm,
    hyperlpr_mirror,
    hyperlpr_variant,
    install_image_versions,
    installed,
    needs_netns,
    serve_folder,
    write_simple_index,
)
from packaging.utils import canonicalize_name
from standin import machine_network
from test_fresh_machine import copy_checkout

from warmstart.lock import parse_lock
from warmstart.tools import BOOTSTRAP_IMPORTS
from warmstart.uv import find_uv

RECIPE_ADDS = {"hyperlpr3", "loguru", "onnxruntime-gpu"}


def canonical(python: Path) -> dict[str, str]:
    return {canonicalize_name(k): v for k, v in installed(python).items()}


def colab_lock(minor: str, recipe: str) -> Path:
    """The recipe's committed lock for the Colab image of Python `minor`."""
    return REPO / "requirements" / COLAB_IMAGES[minor].name / f"{recipe}-py{minor.replace('.', '')}-manylinux_x86_64.txt"


def tools_the_image_ships(minor: str) -> int:
    """How many of warmstart's own tools the image ships at the versions their lock pins: those
    warmstart.sh copies from the notebook's interpreter (warmstart.shipped)."""
    shipped = COLAB_IMAGES[minor].shipped
    return sum(shipped.get(pin.name) == pin.version for pin in parse_lock(colab_lock(minor, "warmstart")).pins)


def make_vm(root: Path, minor: str) -> tuple[Path, dict[str, str]]:
    """A wiped VM: the notebook's interpreter with the image's packages, HOME, /content, PATH."""
    python = colab_vm(root, minor, with_pip=True)
    names = set()
    for recipe in ("hyperlpr", "warmstart"):
        names |= {p.name for p in parse_lock(colab_lock(minor, recipe)).pins if p.name in COLAB_IMAGES[minor].shipped}
    install_image_versions(python, names | {"opencv-python"}, COLAB_IMAGES[minor], root)
    for folder in ("home", "content", "bin"):
        (root / folder).mkdir()
    (root / "bin" / "uv").symlink_to(find_uv())
    # WARMSTART_WAIT: each VM here is wiped right after its cells, sooner than a user who follows
    # the advice to keep it up while the Drive cache fills (test_drivework.py has that path).
    env = machine_network() | {"PATH": f"{python.parent}:{root / 'bin'}:/usr/bin:/bin", "HOME": str(root / "home"),
                     "COLAB_RELEASE_TAG": "release-colab-stand-in", "PIP_CONFIG_FILE": os.devnull,
                     "WARMSTART_WAIT": "1"}
    return python, env


def cells(root: Path, backing: Path, env: dict[str, str], lines: list[str], offline: bool = False):
    """Run notebook `!` lines, one after the other, in /content of a VM with Drive mounted."""
    mount = root / "content" / "drive"
    script = "set -e\n" + "\n".join(
        [f"mkdir -p {mount} && mount --bind {backing} {mount}", f"cd {root / 'content'}",
         *(f"echo '>>> {line}' >&2; {line}" for line in lines)])
    cmd = [*(MOUNT_NETNS if offline else MOUNTNS), "--", "bash", "-c", script]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env | {"WARMSTART_MOUNT_POINT": str(mount)}, capture_output=True,
                          text=True, timeout=900)
    return done, time.perf_counter() - start


@pytest.mark.registry
@needs_netns
@pytest.mark.parametrize("minor", sorted(COLAB_IMAGES))
def test_colab_flow_first_vm_then_a_wiped_one_offline(minor, tmp_path):
    backing = tmp_path / "drive-backing"
    checkout = backing / "MyDrive" / "warmstart"
    copy_checkout(checkout)
    hyperlpr_variant(checkout)  # the models this machine has, served from 127.0.0.1 below
    mount = tmp_path / "vm1" / "content" / "drive"
    flags = "--allow-no-gpu" + ("" if HAVE_MODELS else " --packages-only")
    # the two cells, each keeping its --json report
    script = f"bash {mount}/MyDrive/warmstart/warmstart.sh hyperlpr {flags}{{}} --json > {tmp_path}/script-$VM.json"
    typed = f"invoke bootstrap --recipe hyperlpr {flags}{{}} --json > {tmp_path}/report-$VM.json"

    python1, env1 = make_vm(tmp_path / "vm1", minor)
    before = canonical(python1)
    mirror, models = serve_folder(hyperlpr_mirror()) if HAVE_MODELS \
        else ("http://127.0.0.1:9", None)
    first, _ = cells(tmp_path / "vm1", backing, env1 | {"WARMSTART_ASSET_MIRROR": mirror, "VM": "1"},
                     [script.format(""), typed.format("")])
    if models:
        models.shutdown()

    assert first.returncode == 0, first.stderr[-3000:]
    assert f"installed warmstart's dependencies ({tools_the_image_ships(minor)} of them the notebook interpreter's " \
           "own) and cached them in" in first.stderr
    cached = {wheel.name.split("-")[0] for wheel in (backing / "MyDrive" / ".warmstart" / "v1" / "wheels").glob("*.whl")}
    assert {canonicalize_name(name) for name in cached} >= {pin.name for pin in parse_lock(colab_lock(minor, "warmstart")).pins}, \
        "every wheel of the tools' lock is cached: the next VM's image may ship fewer of them"
    script_cell = first.stderr.split(">>> invoke", 1)[0]
    assert script_cell.rstrip().endswith(
        "warmstart.sh: from now on, in any folder of this VM: !invoke bootstrap --recipe hyperlpr"
        + ("" if HAVE_MODELS else " --packages-only") + " --allow-no-gpu")  # the second cell's line
    report = json.loads((tmp_path / "report-1.json").read_text())
    assert report["ok"] and report["image"] == COLAB_IMAGES[minor].name and report["changed"] is False
    after = canonical(python1)
    assert set(after) - set(before) == RECIPE_ADDS, "the notebook gained the recipe's packages only"
    assert {n: v for n, v in before.items() if after[n] != v} == {}, "and lost or replaced nothing"
    assert "restart the runtime" not in first.stderr

    # The VM is wiped: a new one in its place, the interpreter at the same path (part of a
    # snapshot's key) and a new HOME; Drive is the same; no network at all.
    shutil.rmtree(tmp_path / "vm1")
    python2, env2 = make_vm(tmp_path / "vm1", minor)
    before2 = canonical(python2)
    second, seconds = cells(tmp_path / "vm1", backing, env2 | {"VM": "2"},
                            [script.format(" --offline"), typed.format(" --offline")], offline=True)

    assert second.returncode == 0, second.stderr[-3000:]
    assert (f"restored warmstart's dependencies from {mount}/MyDrive/.warmstart/v1/wheels "
            f"({tools_the_image_ships(minor)} of them the notebook interpreter's own)") in second.stderr
    restored = json.loads((tmp_path / "script-2.json").read_text())
    assert restored["snapshot"]["used"] is True, "the wiped VM restores the recipe from VM 1's snapshot"
    assert set(restored["snapshot"]["read"]) == {"Drive"}
    steps = {step["name"]: step["seconds"] for step in restored["steps"]}
    print(f"wiped-VM restore on Python {minor}: {seconds:.1f} s for both cells; the recipe's snapshot "
          f"{steps['snapshot']:.1f} s, its checks {steps.get('checks', 0):.1f} s")
    after2 = canonical(python2)
    assert set(after2) - set(before2) == RECIPE_ADDS, "the snapshot holds what the image lacks"
    assert {n: v for n, v in before2.items() if after2[n] != v} == {}, "and replaced nothing of the image's"
    assert json.loads((tmp_path / "report-2.json").read_text())["ok"]
    code = "import onnxruntime, hyperlpr3" if HAVE_MODELS else "import onnxruntime, loguru"
    works = subprocess.run([*NETNS, "--", str(python2), "-c", code], env=env2, capture_output=True,
                           text=True)
    assert works.returncode == 0, works.stderr
    assert subprocess.run([str(python2), "-c", "import invoke"], capture_output=True).returncode != 0, \
        "warmstart's own tools stay out of the notebook's interpreter"
    assert not list(backing.rglob("__pycache__")), "no bytecode may be written to Drive"
    # The tools are installed without bytecode (warmstart.sh's step, before the bootstrap that
    # unpacks the snapshot); a child compiled the bootstrap's while it started, into the tools' folder.
    tools = tmp_path / "vm1" / "home" / ".cache" / "warmstart" / "tools" / f"py{minor.replace('.', '')}"
    site = next(tools.glob("lib/python3.*/site-packages"))
    assert list(site.glob("tqdm/contrib/__pycache__/concurrent.*.pyc")), \
        "compiled ahead (no bootstrap imports it: the child compiles the whole of each package)"
    compiled = {p.name for p in site.iterdir()
                if p.is_dir() and p.name != "__pycache__" and next(p.rglob("*.pyc"), None)}
    compiled |= {pyc.name.split(".")[0] for pyc in site.glob("__pycache__/*.pyc")}
    assert compiled == set(BOOTSTRAP_IMPORTS), \
        "what was compiled ahead is all the runs imported of the tools (pip-tools: only `invoke lock`)"
    assert "invoke" not in compiled, "both bootstrap lines ran without invoke (warmstart.launch)"


# --- the restart notice ----------------------------------------------------------------------

KERNEL = '''
"""A stand-in for Colab's kernel process (named like it): it imports numpy, then runs `!` lines."""
import json, subprocess, sys
import numpy
for line in json.loads(sys.argv[1]):
    done = subprocess.run(line, shell=True, capture_output=True, text=True)
    print(json.dumps({"code": done.returncode, "stdout": done.stdout, "stderr": done.stderr}))
'''


@pytest.fixture
def numpy_world(tmp_path):
    """An index with a numpy 1.0 and 2.0 (test-built), a recipe locking numpy 2.0, and a
    notebook interpreter that has numpy 1.0."""
    root = tmp_path / "index"
    (root / "files").mkdir(parents=True)
    for version in ("1.0", "2.0"):
        build_wheel(root / "files", "numpy", version)
    write_simple_index(root)
    url, server = serve_folder(root)
    project = tmp_path / "project"
    (project / "recipes").mkdir(parents=True)
    (project / "requirements").mkdir()
    (project / "requirements" / "np.in").write_text("numpy==2.0\n")
    recipe = project / "recipes" / "np.toml"
    recipe.write_text('name = "np"\n[requirements]\nin = "requirements/np.in"\n'
                      '[[checks]]\nname = "fails when asked"\nrun = "test ! -e $HOME/fail"\n')
    env = cli_env(f"{url}/simple", WARMSTART_PLATFORM="colab", HOME=str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    invoke = [sys.executable, "-m", "invoke", "--search-root", str(REPO)]
    assert subprocess.run([*invoke, "lock", "--recipe", str(recipe)], env=env, capture_output=True).returncode == 0
    python = tmp_path / "nb" / "bin" / "python"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(python.parent.parent)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                    "--index-url", f"{url}/simple", "numpy==1.0"], check=True, env=env)
    (tmp_path / "colab_kernel_launcher.py").write_text(textwrap.dedent(KERNEL))
    bang = " ".join(shlex.quote(a) for a in invoke)
    line = f"{bang} {{}} --recipe {recipe} --drive {tmp_path / 'drive'} --python {python}"
    yield tmp_path, python, env, line
    server.shutdown()


def kernel(tmp_path: Path, python: Path, env: dict[str, str], lines: list[str]) -> list[dict]:
    """One kernel process (it imports numpy first), running `!` lines in order."""
    done = subprocess.run([str(python), str(tmp_path / "colab_kernel_launcher.py"), json.dumps(lines)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return [json.loads(out) for out in done.stdout.splitlines()]


def test_restart_notice_until_the_kernel_restarts_also_after_a_failed_run(numpy_world):
    tmp_path, python, env, line = numpy_world
    (tmp_path / "drive").mkdir()
    (tmp_path / "home" / "fail").touch()  # the recipe's check fails after numpy was replaced
    NOTICE = "running kernel imported the old versions of numpy 1.0 -> 2.0"

    failed, again, status = kernel(tmp_path, python, env, [
        line.format("bootstrap"), line.format("bootstrap"), line.format("status")])

    assert failed["code"] == 1 and "checks failed" in failed["stderr"]
    assert failed["stderr"].count(NOTICE) == 1, "a run that replaced numpy and then failed says so"
    assert "nothing to do" in again["stderr"] and again["stderr"].count(NOTICE) == 1, \
        "the next run, with nothing to install, repeats it"
    assert "restart   the runtime: the running kernel imported old versions of numpy" in status["stdout"]

    (tmp_path / "home" / "fail").unlink()
    (after_restart,) = kernel(tmp_path, python, env, [line.format("bootstrap")])  # a new kernel process

    assert after_restart["code"] == 0, after_restart["stderr"]
    assert "restart the runtime" not in after_restart["stderr"], "a restarted kernel has the new numpy"


# --- the in-kernel path on a fresh VM ----------------------------------------------------------

STANDIN = Path(__file__).parent / "colab_standin"


@pytest.mark.registry
def test_readme_first_cell_on_a_fresh_vm_with_drive_not_yet_mounted(tmp_path):
    """The README's cell, verbatim but for the paths: Drive is not mounted and warmstart lives on
    it. The kernel has Colab's packages but for zstandard, which warmstart's own folder supplies."""
    minor = max(COLAB_IMAGES)
    backing = tmp_path / "drive-backing"
    copy_checkout(backing / "MyDrive" / "warmstart")
    python, env = make_vm(tmp_path / "vm", minor)
    subprocess.run([str(python), "-m", "pip", "uninstall", "--quiet", "--yes", "zstandard"], check=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "google-colab-standin.pth").write_text(str(STANDIN))  # the frontend cannot exist here
    before = canonical(python)
    mount = tmp_path / "vm" / "content" / "drive"
    mount.mkdir()
    cell = textwrap.dedent(f"""
        from google.colab import drive; drive.mount('{mount}')
        import sys; sys.path.append('{mount}/MyDrive/warmstart')
        import warmstart.colab; warmstart.colab.bootstrap('hyperlpr', allow_no_gpu=True, packages_only=True)
        import json, os; print(json.dumps({{"cwd": os.getcwd(), "report": warmstart.colab.last_report}}))
    """)

    done = subprocess.run([*MOUNTNS, "--", str(python), "-c", cell], cwd=tmp_path / "vm" / "content",
                          env=env | {"WARMSTART_MOUNT_POINT": str(mount), "FAKE_DRIVE_BACKING": str(backing),
                                     "FAKE_COLAB_LOG": str(tmp_path / "colab.log")},
                          capture_output=True, text=True, timeout=900)

    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["report"]["ok"] and out["report"]["image"] == COLAB_IMAGES[minor].name
    assert out["cwd"] == str(mount / "MyDrive" / "HyperLPR")
    assert (f"installed warmstart's dependencies ({tools_the_image_ships(minor) - 1} of them the notebook "
            "interpreter's own) and cached them in") in done.stderr, "zstandard came from its wheel"
    assert set(canonical(python)) - set(before) == RECIPE_ADDS, "the kernel's interpreter gained the recipe only"
    assert not list((backing / "MyDrive" / "warmstart").rglob("*.pyc")), "no bytecode may be written to Drive"


def test_imported_from_drive_warmstart_keeps_its_bytecode_in_its_cache_folder_not_there(tmp_path):
    """The kernel (no PYTHONDONTWRITEBYTECODE) imports warmstart from its checkout on Drive: none of
    its modules leaves bytecode there; the kernel's own modules elsewhere still get theirs. Its
    bytecode goes to warmstart's cache folder on local disk instead, every module's at the first
    import (their sources read at once), so the next run, even under PYTHONDONTWRITEBYTECODE (as
    recipe checks and Drive's background writes run), compiles none of it; an edited module is
    compiled anew."""
    mount = tmp_path / "content" / "drive"
    checkout = mount / "MyDrive" / "warmstart"
    copy_checkout(checkout)
    own = tmp_path / "notebook"
    own.mkdir()
    (own / "mine.py").write_text("X = 1\n")
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"} | {"XDG_CACHE_HOME": str(cache)}
    # first on sys.path (the README appends): this interpreter has warmstart installed itself
    code = (f"import sys; sys.path[:0] = [{str(checkout)!r}, {str(own)!r}]; "
            "import warmstart.colab, warmstart.bootstrap, warmstart.status, mine; print(warmstart.__file__)")

    def run(*flags: str, **extra: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, *flags, "-c", code], env=env | {"WARMSTART_MOUNT_POINT": str(mount)} | extra,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done

    def compiled_without_writing_bytecode() -> list[str]:
        """PYTHONDONTWRITEBYTECODE; `-v` names each module compiled from
        its source (one loaded from bytecode is named by its .pyc)."""
        return [line for line in run("-v", PYTHONDONTWRITEBYTECODE="1").stderr.splitlines()
                if line.startswith("# code object from ") and line.endswith(".py") and str(checkout) in line]

    assert run().stdout.strip() == str(checkout / "warmstart" / "__init__.py")
    assert not list(checkout.rglob("*.pyc"))
    assert list(own.glob("__pycache__/mine.*.pyc")), "only warmstart's own imports are spared"
    kept = cache / "warmstart" / "pycache" / checkout.relative_to("/") / "warmstart" / "__pycache__"
    # all of them at once, the first time: those this run never imported (magic, tools) too
    assert {pyc.name.split(".")[0] for pyc in kept.glob("*.pyc")} == \
        {source.stem for source in (checkout / "warmstart").glob("*.py")}
    assert (cache / "warmstart").stat().st_mode & 0o777 == 0o700, "its user's alone, as warmstart.home says"

    compiled = compiled_without_writing_bytecode()
    assert compiled == [f"# code object from {checkout / 'warmstart' / '__init__.py'}"], compiled
    bootstrap = checkout / "warmstart" / "bootstrap.py"
    bootstrap.write_text(bootstrap.read_text() + "\n# edited\n")
    os.utime(bootstrap, (time.time() + 10, time.time() + 10))
    compiled = compiled_without_writing_bytecode()
    assert f"# code object from {bootstrap}" in compiled and len(compiled) == 2, compiled
    assert not list(checkout.rglob("*.pyc"))

    # a cache folder that cannot be made (XDG_CACHE_HOME a file): imported all the same, compiled
    not_a_folder = tmp_path / "not-a-folder"
    not_a_folder.write_text("")
    assert run(XDG_CACHE_HOME=str(not_a_folder)).stdout.strip() == str(checkout / "warmstart" / "__init__.py")
    assert not list(checkout.rglob("*.pyc"))

    elsewhere = subprocess.run([sys.executable, "-c", code], env=env | {"WARMSTART_MOUNT_POINT": str(tmp_path / "x")},
                               capture_output=True, text=True, timeout=120)
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert list(checkout.glob("warmstart/__pycache__/bootstrap.*.pyc")), "off Drive, bytecode as usual"


def test_warmstart_sh_compiles_what_it_imports_then_the_rest_once_asked(tmp_path):
    """warmstart.sh's process imports 17 of warmstart's modules before it begins the snapshot's
    read: only those are compiled on the way (from the sources read ahead at once), the others
    when it calls compile_rest, before the bootstrap it starts imports them. Its children are not
    told to wait (the variable is taken out of the environment)."""
    mount = tmp_path / "content" / "drive"
    checkout = mount / "MyDrive" / "warmstart"
    copy_checkout(checkout)
    cache = tmp_path / "cache"
    kept = cache / "warmstart" / "pycache" / checkout.relative_to("/") / "warmstart" / "__pycache__"
    code = (f"import json, os, sys; sys.path[:0] = [{str(checkout)!r}]; from pathlib import Path; "
            "import warmstart.tools, warmstart; "
            f"compiled = lambda: sorted(p.name.split('.')[0] for p in Path({str(kept)!r}).glob('*.pyc')); "
            "before = compiled(); warmstart.compile_rest(); "
            "print(json.dumps([before, compiled(), os.environ.get(warmstart.COMPILE_LATER)]))")
    env = os.environ | {"XDG_CACHE_HOME": str(cache), "WARMSTART_MOUNT_POINT": str(mount),
                        "PYTHONDONTWRITEBYTECODE": "1"}  # as warmstart.sh runs

    done = subprocess.run([sys.executable, "-c", code], env=env | {"WARMSTART_COMPILE_LATER": "1"},
                          capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    before, after, told = json.loads(done.stdout)
    assert {"tools", "early", "headstart"} <= set(before) and not {"bootstrap", "execute", "snapshot"} & set(before)
    assert after == sorted(source.stem for source in (checkout / "warmstart").glob("*.py"))
    assert told is None, "the bootstrap it starts compiles nothing of its own"
    assert not list(checkout.rglob("*.pyc"))


# A bootstrap run by invoke from the checkout in argv[1] (the rest: its flags), each file opened
# under the checkout recorded with the thread that opened it (an audit hook), into argv[2].
OPENS = """
import json, os, sys, threading
checkout, record = sys.argv[1], sys.argv[2]
opened = []
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, os.PathLike)) and os.fspath(args[0]).startswith(checkout):
        opened.append((os.fspath(args[0]), threading.current_thread().name))
sys.addaudithook(hook)
from invoke.main import program
try:
    program.run(["invoke", "--search-root", checkout, *sys.argv[3:]])
finally:
    with open(record, "w") as out:
        json.dump(opened, out)
"""


def test_from_a_checkout_on_drive_a_run_reads_its_data_files_at_once_as_it_begins_each_once(tmp_path):
    """From a checkout on Drive each open waits, and a run reads some 20 of the project's data
    files: they are read each on a thread of its own as the task begins, each once (the images
    and the recipe's `.in` were read twice), and the plan takes them from memory. A checkout
    elsewhere reads each when it is needed, as before. (Drive is a folder under the mount point
    here: the read-ahead threads are what is proved, not Drive's times: bench/README.md has those.)"""
    mount = tmp_path / "content" / "drive"
    checkout = mount / "MyDrive" / "warmstart"
    copy_checkout(checkout)
    (tmp_path / "cache").mkdir()
    env = os.environ | {"XDG_CACHE_HOME": str(tmp_path / "home-cache")}
    data = ("envs", "recipes", "requirements", "warmstart/distinfo.py")
    lock = f"requirements/hyperlpr-py{sys.version_info.major}{sys.version_info.minor}-manylinux_x86_64.txt"

    def opens(mount_point: Path) -> list[tuple[str, str]]:
        record = tmp_path / "opened.json"
        done = subprocess.run([sys.executable, "-c", OPENS, str(checkout), str(record), "bootstrap",
                               "--recipe", "hyperlpr", "--drive", str(tmp_path / "cache"), "--python", sys.executable,
                               "--allow-no-gpu", "--dry-run"],
                              env=env | {"WARMSTART_MOUNT_POINT": str(mount_point)}, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        assert Path(lock).name in done.stderr, "the plan read its lock"
        return [(str(Path(path).relative_to(checkout)), thread) for path, thread in json.loads(record.read_text())
                if any(Path(path).relative_to(checkout).is_relative_to(d) for d in data)]

    opens(mount)  # a VM's first import reads every module's source (the bytecode's compile_ahead)
    on_drive = opens(mount)
    names = [path for path, _ in on_drive]
    assert {"recipes/hyperlpr.toml", "requirements/hyperlpr.in", "envs/local.toml", "warmstart/distinfo.py", lock,
            "envs/images/colab-2026.07.freeze.txt"} <= set(names)
    assert len(names) == len(set(names)), f"each file once: {sorted(on_drive)}"
    assert {thread for _, thread in on_drive} == {"warmstart-read-ahead"}, on_drive

    elsewhere = opens(tmp_path / "not-the-checkouts-mount")
    assert {path for path, thread in elsewhere if thread == "MainThread"} >= {
        "recipes/hyperlpr.toml", "requirements/hyperlpr.in"}, "off Drive, each file is read when needed"
    assert "envs/images/colab-2026.07.freeze.txt" not in {path for path, _ in elsewhere}, \
        "another platform's image lists are not read"


# --- where the cache lives on Colab -------------------------------------------------------------

DRIVE_ROOT = ("import sys; sys.path.insert(0, sys.argv[1]); from warmstart.tools import drive_root; "
              "from warmstart.settings import parse_command_line; from warmstart.tools import platform_profile; "
              "print(drive_root(parse_command_line(['hyperlpr', *sys.argv[2:]]).drive, platform_profile()))")


@pytest.mark.needs_mountns
def test_on_colab_the_cache_lives_on_the_mounted_drive_wherever_the_checkout_is(tmp_path):
    """`!git clone URL` puts the checkout in /content, the VM's own disk, which a wipe erases: the
    cache still goes to the mounted Drive's MyDrive; unmounted, warmstart.sh refuses in one line
    (exit 3) and writes nothing under the mount point; a --drive off the Drive is warned about.
    Drive is a folder bind-mounted in a private mount namespace (Colab's FUSE mount cannot be had)."""
    checkout = tmp_path / "content" / "warmstart"
    copy_checkout(checkout)
    mount, backing = tmp_path / "content" / "drive", tmp_path / "drive-backing"
    (backing / "MyDrive").mkdir(parents=True)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home"), "WARMSTART_PLATFORM": "colab",
           "WARMSTART_MOUNT_POINT": str(mount), "PYTHONDONTWRITEBYTECODE": "1"}

    unmounted = subprocess.run(["bash", str(checkout / "warmstart.sh"), "hyperlpr"], env=env,
                               capture_output=True, text=True, timeout=120)
    assert unmounted.returncode == 3, unmounted.stderr
    assert unmounted.stderr.strip().splitlines()[-1].startswith(f"warmstart.sh: Google Drive is not mounted at {mount}")
    assert "drive.mount(" in unmounted.stderr
    assert not mount.exists() or not any(mount.iterdir()), "nothing under an unmounted mount point"

    probe = shlex.join([sys.executable, "-c", DRIVE_ROOT, str(checkout)])
    script = (f"mkdir -p {mount} && mount --bind {backing} {mount} && {probe} && "
              f"{probe} --drive {tmp_path / 'elsewhere'}")
    mounted = subprocess.run([*MOUNTNS, "--", "bash", "-c", script], env=env, capture_output=True, text=True,
                             timeout=120)
    assert mounted.returncode == 0, mounted.stderr
    assert mounted.stdout.splitlines() == [str(mount / "MyDrive"), str(tmp_path / "elsewhere")]
    assert f"the Drive root {tmp_path / 'elsewhere'} is not on the mounted Drive" in mounted.stderr
