"""Shared test fixtures: real wheels, a real PEP 503 index on 127.0.0.1, real virtualenvs, and
the warmstart CLI run as a user runs it (`invoke bootstrap ...` in a subprocess)."""

from __future__ import annotations

import atexit
import base64
import contextlib
import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_HYPERLPR = REPO.parent / "shared" / "hyperlpr"

HAVE_MODELS = (SHARED_HYPERLPR / "models" / "20230229" / "onnx").is_dir()
MISSING_MODEL = "rpv3_mdict_160_r3.onnx"  # not in ../shared/hyperlpr (see its README)


def standin_recognizer(path: Path) -> Path:
    """An ONNX model in the place of HyperLPR3's recognizer (absent from ../shared): its input
    and output are the real one's (1x3x48x160 in; 40 steps of 77 token scores out), and it reads
    every plate as the same seven characters. Built with the `onnx` package, the same bytes each time."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    steps, tokens, plate = 40, 77, [12, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0, 7]  # "A" "0" .. "5", blanks between
    scores = np.full((1, steps, tokens), 0.01, dtype=np.float32)
    for step, token in enumerate(plate):
        scores[0, step, token] = 0.9
    scores[0, len(plate):, 0] = 0.9  # the rest: the CTC blank
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["mean"], keepdims=0),
         helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
         helper.make_node("Add", ["scores", "nothing"], ["y"])],
        "standin_recognizer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 48, 160])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, steps, tokens])],
        [numpy_helper.from_array(scores, "scores"), numpy_helper.from_array(np.zeros((), np.float32), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="warmstart-tests")
    model.ir_version = 8  # onnxruntime 1.19 and later read it
    path.write_bytes(model.SerializeToString())
    return path


@functools.cache
def hyperlpr_mirror() -> Path:
    """What the hyperlpr recipe's assets fetch upstream, served in tests from 127.0.0.1
    (WARMSTART_ASSET_MIRROR): ../shared's models and photo, and the stand-in recognizer."""
    folder = SCRATCH / "hyperlpr-mirror"
    folder.mkdir()
    for model in (SHARED_HYPERLPR / "models" / "20230229" / "onnx").glob("*.onnx"):
        shutil.copy(model, folder)
    shutil.copy(SHARED_HYPERLPR / "images" / "test_img.jpg", folder)
    standin_recognizer(folder / MISSING_MODEL)
    return folder


def hyperlpr_variant(project: Path) -> Path:
    """The shipped hyperlpr recipe in a copy of the project, with the stand-in recognizer's
    sha256 in place of the real one's (see hyperlpr_mirror); where ../shared/hyperlpr is absent,
    without the assets and the checks that need them (its patch stays)."""
    if not (project / "recipes").exists():
        shutil.copytree(REPO / "recipes", project / "recipes")
        shutil.copytree(REPO / "requirements", project / "requirements")
    recipe = project / "recipes" / "hyperlpr.toml"
    head, *blocks = re.split(r"\n(?=(?:#[^\n]*\n)*\[\[)", recipe.read_text())
    if HAVE_MODELS:
        standin = hashlib.sha256((hyperlpr_mirror() / MISSING_MODEL).read_bytes()).hexdigest()
        blocks = [re.sub(r'sha256 = "[0-9a-f]+"', f'sha256 = "{standin}"', b) if MISSING_MODEL in b else b
                  for b in blocks]
    else:
        blocks = [b for b in blocks if "[[patches]]" in b]
    recipe.write_text("\n".join([head, *blocks]))
    return recipe


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(dest: Path, name: str, version: str, requires: tuple[str, ...] = (),
                script: bool = False, extra: dict[str, bytes] | None = None,
                tag: str = "py3-none-any") -> Path:
    """Write a real, installable wheel (PEP 427) with a correct RECORD; `script` adds a console
    script named after the project (the installer writes it into bin/); `extra` adds files
    (shared objects, say) under the given paths, and `tag` names the wheel's platform."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires
    )
    files = {
        f"{dist}/__init__.py": f"__version__ = {version!r}\n\ndef main():\n    print({name!r}, __version__)\n".encode(),
        **(extra or {}),
        f"{info}/METADATA": metadata.encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: warmstart-tests\n"
        + f"Root-Is-Purelib: {'true' if tag.endswith('-any') else 'false'}\nTag: {tag}\n".encode(),
    }
    if script:
        files[f"{info}/entry_points.txt"] = f"[console_scripts]\n{name} = {dist}:main\n".encode()
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in files.items())
    files[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    wheel = dest / f"{dist}-{version}-{tag}.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return wheel


# The demo world: `alpha` needs `beta` and the CPU-only `cpu-only`, which the demo recipe
# excludes in favour of `gpu-build` (the shape of hyperlpr3 -> onnxruntime).
DEMO_WHEELS = [
    ("alpha", "1.0", ("beta>=1.5", "cpu-only")),
    ("beta", "1.0", ()),
    ("beta", "1.6", ()),  # a runtime's own beta: alpha accepts it (test_live_lock.py)
    ("beta", "2.0", ()),
    ("cpu-only", "1.0", ()),
    ("gpu-build", "1.0", ()),
]
SCRIPTED = {"gpu-build"}  # installs a console script
LOCKED = {"alpha": "1.0", "beta": "2.0", "gpu-build": "1.0"}  # what the demo recipe's lock pins


@dataclass
class Index:
    url: str
    files: Path


def write_simple_index(root: Path) -> None:
    """The PEP 503 pages of the wheels (and source distributions) in root/files/, under root/simple/."""
    simple = root / "simple"
    projects: dict[str, list[Path]] = {}
    for wheel in sorted([*(root / "files").glob("*.whl"), *(root / "files").glob("*.tar.gz")]):
        projects.setdefault(wheel.name.split("-")[0].replace("_", "-"), []).append(wheel)
    for project, wheels in projects.items():
        links = "".join(
            f'<a href="../../files/{w.name}#sha256={hashlib.sha256(w.read_bytes()).hexdigest()}">'
            f"{w.name}</a>\n" for w in wheels
        )
        (simple / project).mkdir(parents=True, exist_ok=True)
        (simple / project / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    delay = 0.0  # seconds before each answer

    def log_message(self, *args):
        pass

    def send_head(self):
        time.sleep(self.delay)
        return super().send_head()


def dead_url() -> str:
    """An index that cannot be reached: a port nothing listens on."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/simple"


def serve_folder(folder: Path, delay: float = 0.0) -> tuple[str, http.server.ThreadingHTTPServer]:
    """Serve a folder over HTTP on 127.0.0.1 from a daemon thread, each answer `delay` seconds
    late (an index far away); returns its URL and server."""
    handler = type("Files", (_QuietFiles,), {"delay": delay})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", server


@pytest.fixture(scope="session")
def index(tmp_path_factory) -> Index:
    """A PEP 503 "simple" index of test-built wheels, served over HTTP on 127.0.0.1."""
    root = tmp_path_factory.mktemp("index")
    (root / "files").mkdir()
    for name, version, requires in DEMO_WHEELS:
        build_wheel(root / "files", name, version, requires, script=name in SCRIPTED)
    write_simple_index(root)

    url, server = serve_folder(root)
    yield Index(f"{url}/simple", root / "files")
    server.shutdown()


# One scratch folder for the session, removed when it ends: warmstart's local caches (partial
# downloads, uv, verified RECORDs) go there, not to ~/.cache, and so do the temporary folders of
# the runs the tests start (TMPDIR), with whatever a run killed on purpose leaves behind.
SCRATCH = Path(tempfile.mkdtemp(prefix="warmstart-tests-"))
CACHE_HOME = str(SCRATCH / "cache")


@atexit.register
def _remove_scratch() -> None:
    """The scratch folder, once no Drive worker a test's run left in the background (without
    WARMSTART_WAIT) is at work there: one that went on wrote into it after it was removed, and a
    folder of its own stayed behind. One still at it after half a minute is stopped."""
    deadline = time.monotonic() + 30
    for job in Path(CACHE_HOME, "warmstart", "drivework").glob("*/*"):
        while _worker_alive(job) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _worker_alive(job):
            with contextlib.suppress(OSError, ValueError):
                os.killpg(int((job / PID).read_text()), signal.SIGKILL)  # its own session (drivework.start)
    shutil.rmtree(SCRATCH, ignore_errors=True)


RUN_TMP = SCRATCH / "tmp"
RUN_TMP.mkdir()
# ... and so do those of warmstart called in this process, and of the children it starts, where
# a test names no cache folder of its own: none of them writes to the ~/.cache of whoever runs the tests.
os.environ["XDG_CACHE_HOME"] = CACHE_HOME


def cli_env(index_url: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "WARMSTART_"))}
    # WARMSTART_WAIT: most tests read Drive right after a run, so its Drive writes are done
    # before it returns; test_drivework.py drops it to test them in the background.
    env.update({"WARMSTART_PLATFORM": "local", "PIP_CONFIG_FILE": os.devnull,
                "XDG_CACHE_HOME": CACHE_HOME, "TMPDIR": str(RUN_TMP), "WARMSTART_WAIT": "1", **extra})
    if index_url:
        env["PIP_INDEX_URL"] = index_url
    return env


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def report(self) -> dict:
        return json.loads(self.stdout)


def cli_command(*args: str) -> list[str]:
    """`invoke <args>` with this repository's tasks.py, as a command line."""
    return [sys.executable, "-m", "invoke", "--search-root", str(REPO), *args]


def launcher_command(*args: str, checkout: Path = REPO) -> list[str]:
    """`invoke <args>` as the launcher that warmstart.sh writes runs it (tools.LAUNCH: a bootstrap
    line without invoke's program), with this interpreter and `checkout`'s tasks."""
    from warmstart.tools import LAUNCH

    return [sys.executable, "-P", "-c", LAUNCH, str(checkout), *args]


def _typed(program: str) -> str:
    # By its path, not by the file it is: a virtualenv's python is a link to its base interpreter,
    # which PATH may find first by the same name (python3 on PATH being that interpreter), and
    # which would run without the virtualenv's packages.
    found = shutil.which(os.path.basename(program))
    return os.path.basename(program) if found and os.path.abspath(found) == os.path.abspath(program) else program


# How the commands a run prints begin under cli_command in the checkout: `python -m invoke`, the
# interpreter by its name where PATH finds this one by it, else by its path.
INVOKE = f"{_typed(sys.executable)} -m invoke"


def run_cli(*args: str, env: dict[str, str], offline_net: bool = False, cwd: Path | None = None) -> Result:
    """Run `invoke <args>` with this repository's tasks.py; `offline_net` cuts the network."""
    cmd = cli_command(*args)
    if offline_net:
        cmd = [*NETNS, "--", *cmd]
    # Its own session: a fault-injection test may SIGKILL the run's whole process group.
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=cwd or REPO, timeout=900,
                          start_new_session=True)
    return Result(done.returncode, done.stdout, done.stderr)


def bootstrap(recipe: Path, drive: Path, python: Path, *flags: str, env: dict[str, str],
              fault: str | None = None, offline_net: bool = False) -> Result:
    """`invoke bootstrap --recipe R --drive D --python P --json FLAGS`: the one way tests run it.
    `fault` kills the run at that point (warmstart.faults); `offline_net` cuts the network."""
    env = dict(env, WARMSTART_FAULT=fault) if fault else env
    return run_cli("bootstrap", "--recipe", str(recipe), "--drive", str(drive), "--python", str(python),
                   "--json", *flags, env=env, offline_net=offline_net)


def _namespace(flag: str, probe: str) -> list[str] | None:
    """`unshare FLAG` as root, else with the user mapped to root in a user namespace (no root
    needed where the kernel allows user namespaces); None where neither works here."""
    if not shutil.which("unshare"):
        return None
    for cmd in (["unshare", flag], ["unshare", "--map-root-user", flag]):
        if subprocess.run([*cmd, "--", "sh", "-c", probe], capture_output=True).returncode == 0:
            return cmd
    return None


# Prefixes that run a command with the network cut, or in a private mount namespace.
NETNS = _namespace("--net", "true")
MOUNTNS = _namespace("--mount", "mount -t tmpfs tmpfs /mnt")
# Both at once (a wiped VM with Drive mounted and no network).
MOUNT_NETNS = [*MOUNTNS, "--net"] if MOUNTNS and NETNS else None


def on_a_small_disk(folder: Path, command: list[str], size: str = "4k") -> list[str]:
    """`command` run where `folder` is a small disk: a tmpfs of `size` in a private mount
    namespace, a write past it failing with ENOSPC. Of one page (4k), the first small file fits
    (tempfile's probe of TMPDIR: a full one, it would pass over) and the next does not."""
    assert MOUNTNS is not None
    mount = f'mount -t tmpfs -o size={size} tmpfs "$0" && exec "$@"'
    return [*MOUNTNS, "--", "sh", "-c", mount, str(folder), *command]


def a_target_on_a_small_disk(disk: Path, prefix: Path, size: str, free: int | None, command: list[str]) -> list[str]:
    """`command` run where `disk` is a tmpfs of `size` in a private mount namespace holding a bare
    virtualenv at `prefix` (a target environment) and, with `free`, a filler file that leaves it
    only that many bytes. Its stdout ends with `left: ...`, the prefix as the namespace sees it
    (outside, the tmpfs is not mounted)."""
    assert MOUNTNS is not None
    fill = (f'(dd if=/dev/zero of="{disk}/filler" bs=4k 2>/dev/null; truncate -s -{free} "{disk}/filler") && '
            if free is not None else "")
    script = (f'mount -t tmpfs -o size={size} tmpfs "{disk}" && "{sys.executable}" -m venv --without-pip "{prefix}" '
              f'&& {fill}"$@"; code=$?; echo "left: $(ls -A "{prefix}")"; exit $code')
    return [*MOUNTNS, "--", "sh", "-c", script, "sh", *command]


# Core tests (offline restores, Drive mounts) need these; where they are missing the test skips
# saying why, and in CI (CI=true) fails instead: a green build never hides an untested restore.
needs_netns = pytest.mark.needs_netns
needs_mountns = pytest.mark.needs_mountns


def pytest_runtest_setup(item):
    if item.get_closest_marker("needs_netns") and NETNS is None:
        skip_or_fail("needs `unshare --net` (root, or user namespaces for `unshare -rn`)")
    if item.get_closest_marker("needs_mountns") and MOUNTNS is None:
        skip_or_fail("needs `unshare --mount` and mount (root, or user namespaces for `unshare -rm`)")


def fuse_usable() -> bool:
    try:
        import fuse  # noqa: F401  (fusepy loads libfuse2 on import)
    except (ImportError, OSError):
        return False
    return Path("/dev/fuse").exists()


needs_fuse = pytest.mark.skipif(not fuse_usable(), reason="needs fusepy, libfuse2 (apt install libfuse2) and /dev/fuse")


@contextmanager
def slow_drive(backing: Path, mount: Path, open_delay_ms: float, mib_per_s: float,
               fail_writes: str | None = None, hang_after: int | None = None,
               until: Path | None = None, hang_metadata: bool = False,
               hang_from_listing: bool = False, hang_writes_in: str | None = None,
               hang_from: Path | str | None = None, subtype: str | None = None) -> Iterator[Path]:
    """`backing` seen through bench/slowfs.py at `mount`, a real FUSE file system that delays
    every open and caps throughput as Drive does (or fails every write with an errno, or never
    answers a read past `hang_after` bytes of a file, or any stat below the mount point and any
    listing with `hang_metadata`, the same from the first listing on with `hang_from_listing`, any
    write to a file below its folder `hang_writes_in`, or anything once `hang_from` exists; or not
    before `until` exists: each a path or a glob pattern), of file system type fuse.`subtype`."""
    mount.mkdir(exist_ok=True)
    fs = subprocess.Popen([sys.executable, str(REPO / "bench" / "slowfs.py"), str(backing), str(mount),
                           str(open_delay_ms), str(mib_per_s), *([fail_writes] if fail_writes else []),
                           *(["--hang-after", str(hang_after)] if hang_after is not None else []),
                           *(["--hang-metadata"] if hang_metadata else []),
                           *(["--hang-from-listing"] if hang_from_listing else []),
                           *(["--hang-writes-in", hang_writes_in] if hang_writes_in else []),
                           *(["--hang-from", str(hang_from)] if hang_from is not None else []),
                           *(["--until", str(until)] if until is not None else []),
                           *(["--subtype", subtype] if subtype else [])])
    try:
        for _ in range(200):
            if os.path.ismount(mount):
                break
            time.sleep(0.05)
        assert os.path.ismount(mount), "the FUSE layer did not mount"
        yield mount
    finally:
        for _ in range(100):  # busy while a read this process left waiting (a daemon's) ends
            # (nothing here may look at the mount: a stat waits on the layer, which may be stuck)
            if b"busy" not in subprocess.run(["umount", str(mount)], capture_output=True).stderr:
                break
            time.sleep(0.05)
        try:
            fs.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a read still sleeping out its throttled turn: a stand-in
            fs.kill()
            fs.wait()


def run_cli_on_hung_mount(*args: str, env: dict[str, str], answer: Path, timeout: float = 60) -> Result:
    """`invoke <args>` where a slow_drive layer hangs until `answer` exists: given `timeout`
    seconds (a run that waits on the layer unbounded: for ever), then the layer answers (a process
    left waiting on it can only be killed once it does) and a run still running is killed."""
    run = subprocess.Popen(cli_command(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = run.communicate(timeout=timeout)
    finally:
        answer.touch()
        if run.poll() is None:
            run.kill()
            run.wait()
    return Result(run.returncode, out, err)


def make_venv(path: Path, base: Path | str = sys.executable) -> Path:
    """A bare virtualenv of `base` (no pip of its own: warmstart drives pip from outside)."""
    subprocess.run([str(base), "-m", "venv", "--without-pip", str(path)], check=True)
    return path / "bin" / "python"


def in_a_removed_folder(folder: Path, command: list[str]) -> list[str]:
    """`command`, run from `folder` once it is removed, as from a notebook whose folder was deleted
    (or lay on a Drive that was unmounted since: getcwd fails alike); the shell's PWD still names it.
    The same process runs it (exec): its pid is the one a test signals."""
    folder.mkdir(parents=True)
    return ["bash", "-c", 'cd "$0" && rmdir "$0" && exec "$@"', str(folder), *command]


def system_python(folder: Path) -> Path:
    """A stand-in for an operating system's python3 (Debian's, Ubuntu's; a CUDA container's): the
    interpreter running the tests, copied as a real CPython whose prefix is `folder` (its standard
    library linked in), not a virtualenv, with PEP 668's marker that says its system's package
    manager owns its packages. What installers put there stays in `folder`."""
    base = Path(os.path.realpath(sys._base_executable))
    stdlib = Path(sysconfig.get_path("stdlib", vars={"installed_base": sys.base_prefix, "base": sys.base_prefix}))
    (folder / "bin").mkdir(parents=True)
    lib = folder / "lib" / stdlib.name
    lib.mkdir(parents=True)
    for entry in stdlib.iterdir():
        if entry.name not in ("site-packages", "dist-packages"):
            (lib / entry.name).symlink_to(entry)
    (lib / "EXTERNALLY-MANAGED").write_text("[externally-managed]\nError = use a virtualenv\n")
    python = folder / "bin" / base.name
    shutil.copy2(base, python)
    return python


def installed(python: Path) -> dict[str, str]:
    out = subprocess.run(
        [str(python), "-c", "import json; from importlib import metadata as m; "
         "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"],
        capture_output=True, text=True, check=True, cwd="/",  # no checkout on sys.path
    ).stdout
    return json.loads(out.splitlines()[-1])  # what it printed as it started (a .pth file) comes first


def locked_part_of(python: Path) -> dict[str, str]:
    """The demo lock's packages as installed in `python`'s environment (LOCKED when all are)."""
    have = installed(python)
    return {k: have[k] for k in LOCKED if k in have}


DEMO_RECIPE = """\
name = "demo"
description = "alpha on the GPU build, never the CPU-only one"
python = ">=3.8"

[gpu]
required = false

[requirements]
in = "requirements/demo.in"
exclude = ["cpu-only"]

[drive]
workdir = "Demo"
"""


@pytest.fixture(scope="session")
def locked_demo(tmp_path_factory, index) -> Path:
    """A project holding the demo recipe, locked once with the real `invoke lock`."""
    root = tmp_path_factory.mktemp("demo-project")
    (root / "recipes").mkdir()
    (root / "requirements").mkdir()
    (root / "recipes" / "demo.toml").write_text(DEMO_RECIPE)
    (root / "requirements" / "demo.in").write_text("alpha\ngpu-build\n")
    result = run_cli("lock", "--recipe", str(root / "recipes" / "demo.toml"), env=cli_env(index.url))
    assert result.code == 0, result.stderr
    return root


@pytest.fixture
def drive(tmp_path) -> Path:
    """An empty folder standing in for the Drive root."""
    path = tmp_path / "drive"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def demo_wheel_cache(tmp_path_factory, locked_demo, index) -> Path:
    """A Drive folder holding the demo's wheel cache, filled once per session by a real cold
    bootstrap (its snapshot dropped: a snapshot fits only the prefix it was made of)."""
    root = tmp_path_factory.mktemp("demo-filled")
    drive = root / "drive"
    drive.mkdir()
    filled = bootstrap(locked_demo / "recipes" / "demo.toml", drive, make_venv(root / "venv"), env=cli_env(index.url))
    assert filled.code == 0, filled.stderr
    shutil.rmtree(drive / ".warmstart" / "v1" / "snapshots")
    return drive


@pytest.fixture
def filled_drive(tmp_path, demo_wheel_cache) -> Path:
    """A copy of the session's filled Drive folder (wheels only), free to damage: for tests
    that start where a first VM left Drive, without each filling it again."""
    return Path(shutil.copytree(demo_wheel_cache, tmp_path / "drive"))


@pytest.fixture
def demo(tmp_path, locked_demo) -> Path:
    """A fresh copy of the locked demo project, free to edit; returns its recipe path."""
    root = tmp_path / "project"
    shutil.copytree(locked_demo, root)
    return root / "recipes" / "demo.toml"


@pytest.fixture
def no_real_nvml():
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return
    pynvml.nvmlShutdown()
    pytest.skip("this machine has a working NVIDIA driver, so 'no library' cannot be staged")


@pytest.fixture(scope="session")
def fake_nvml_dir(tmp_path_factory) -> Path:
    """A folder holding the fake `libnvidia-ml.so.1`, compiled from tests/fake_nvml with gcc."""
    if not shutil.which("gcc"):
        pytest.skip("gcc is needed to build the fake NVML library")
    out = tmp_path_factory.mktemp("fake-nvml")
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o",
                    str(out / "libnvidia-ml.so.1"), str(REPO / "tests" / "fake_nvml" / "fake_nvml.c")],
                   check=True)
    return out


T4 = "Tesla T4|15360|7.5|none"


def nvml_env(base: dict[str, str], lib_dir: Path, devices: str = T4, **settings: str) -> dict[str, str]:
    """`base` with the fake NVML library first on the loader path and its answers set."""
    env = dict(base, LD_LIBRARY_PATH=str(lib_dir), FAKE_NVML_DEVICES=devices)
    env.update({f"FAKE_NVML_{k.upper()}": v for k, v in settings.items()})
    return env


def skip_or_fail(reason: str) -> None:
    """Skip where this machine lacks something; in CI (CI=true) fail instead, so a green build
    never hides a core test that did not run."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run this test: {reason}")
    pytest.skip(reason)


# What a stand-in in a child runs to wait for the signal a test sends it: short sleeps. A signal
# that lands between Python's check for one and the start of a long sleep is handled only once that
# sleep is over (seen once in CI: a 60 s sleep outlived the test's 30 s wait); here within 0.1 s.
WAIT_FOR_A_SIGNAL = "for _ in range(600): time.sleep(0.1)"


def with_ctrl_c(command: list[str]) -> list[str]:
    """`command`, with Ctrl-C (SIGINT) delivered to it as a terminal or a notebook delivers it. A
    test run in the background of a non-interactive shell (CI started that way) begins with SIGINT
    ignored, which every child inherits, and Python then leaves it ignored: this execs `command`
    with its default restored (the same process: its pid is the one a test signals)."""
    return [sys.executable, "-c", "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
            "os.execvp(sys.argv[1], sys.argv[1:])", *command]


def proc_stat(pid: int) -> list[str] | None:
    """Fields 3 on of /proc/PID/stat (state, ppid, ...; the command name before them may hold
    spaces), or None for a process gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def process_running(pid: int) -> bool:
    """A process of that pid is there, and no zombie waiting to be reaped."""
    fields = proc_stat(pid)
    return bool(fields) and fields[0] != "Z"


T = TypeVar("T")


def wait_until(condition: Callable[[], T], seconds: float, failure: str | Callable[[], str],
               every: float = 0.01) -> T:
    """What `condition` returns once it is true, asked every `every` seconds; after `seconds` the
    test fails with `failure` (or what it returns then). For what a process or thread does on its
    own time."""
    deadline = time.monotonic() + seconds
    while not (outcome := condition()):
        if time.monotonic() >= deadline:
            pytest.fail(failure if isinstance(failure, str) else failure())
        time.sleep(every)
    return outcome


# --- the Colab stand-in: Colab's published package lists, the pyenv interpreter of its Python ---

import standin
from standin import pyenv_python

from warmstart.drivework import PID, _worker_alive
from warmstart.images import Image, images_of

# The stand-ins, one per Python Colab offers: latest (3.13) and the pinned 2026.07 (3.12). The other
# 3.12 runtime, 2026.04, is told apart from 2026.07 by what a VM has (test_platform_locks.py).
ALL_COLAB_IMAGES = images_of("colab", REPO / "envs")  # by name
STANDIN_IMAGES = ("colab-latest", "colab-2026.07")
COLAB_IMAGES = {image.python_minor: image for name, image in ALL_COLAB_IMAGES.items() if name in STANDIN_IMAGES}
# Image packages that depend on the recipes' closures, installed at the image's versions too.
DEPENDENTS = ("pandas", "google-api-core", "requests-oauthlib", "opencv-python")


def colab_vm(tmp_path: Path, minor: str, with_pip: bool = False) -> Path:
    """A fresh stand-in VM's interpreter (a virtualenv of the pyenv Python `minor`; Colab's
    python3 has pip, which `with_pip` gives it)."""
    base = pyenv_python(minor)
    if base is None:
        skip_or_fail(f"no pyenv Python {minor} (Colab's runtime Python) on this machine")
    if MOUNTNS is None:
        skip_or_fail("needs `unshare --mount` (root, or user namespaces) to mount the Drive stand-in")
    venv = tmp_path / f"colab-{minor}"
    subprocess.run([str(base), "-m", "venv", *([] if with_pip else ["--without-pip"]), str(venv)], check=True)
    return venv / "bin" / "python"


def install_image_versions(python: Path, names: set[str], image: Image, tmp_path: Path) -> None:
    """The image's versions of `names`, and what they need, at the image's versions too."""
    standin.install_image_versions(python, names, image, tmp_path, Path(CACHE_HOME) / "uv")


