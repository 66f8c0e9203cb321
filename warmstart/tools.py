"""warmstart's own tools on a wiped VM, kept apart from the notebook's packages (stdlib only).

    warmstart.sh RECIPE [bootstrap options]     (runs main() with the notebook's python3)

warmstart needs invoke, requests, packaging, ... Installing them into the notebook's interpreter
would replace what the kernel has imported, so they live in a private virtualenv under
`~/.cache/warmstart/tools/<pyXY>/`, installed from the `warmstart` recipe's hashed lock (the
Colab lock on Colab) out of the Drive wheel cache, or from the index the first time, filling the
cache. They count as in place only when the virtualenv's marker names the sha256 of that lock.

An `invoke` launcher beside the notebook's `python3` (never over a foreign one) runs invoke from
there with this checkout as the tasks' search root, and the notebook's interpreter as the
target, so `!invoke bootstrap --recipe NAME` works from any folder afterwards.
"""

from __future__ import annotations

import os
import platform
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from .errors import BadInput
from .options import value_of
from .pipconfig import pip_env
from .store import DriveStore
from .transfer import (
    atomic_write,
    atomic_write_text,
    is_mount_point,
    not_writable,
    own_cache,
    private_cache,
    sha256_of,
    shown,
    write_private,
)

CHECKOUT = Path(__file__).resolve().parent.parent
MARKER = ".warmstart-tools"  # in the virtualenv, names the lock it was built from: written last
LAUNCHER_TAG = "# warmstart launcher"  # the line that marks an `invoke` launcher as warmstart's


class ToolsError(Exception):
    """One line for the user, with the exit code to leave with (2 bad input, 3 precondition, 1 other)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def say(message: str) -> None:
    print(f"warmstart.sh: {shown(message)}", file=sys.stderr, flush=True)


def python_tag() -> str:
    return f"py{sys.version_info.major}{sys.version_info.minor}"


def on_colab(environ=os.environ) -> bool:
    """As envs/colab.toml detects Colab, unless WARMSTART_PLATFORM names another platform."""
    wanted = environ.get("WARMSTART_PLATFORM")
    return wanted == "colab" if wanted else bool(environ.get("COLAB_RELEASE_TAG") or environ.get("COLAB_GPU"))


def tools_lock(environ=os.environ) -> Path:
    name = f"warmstart-{python_tag()}-manylinux_{platform.machine().lower()}.txt"
    if on_colab(environ):
        # warmstart's tools at Colab's own versions (the same bytes the kernel has): the lock of
        # the newest Colab image for this Python (requirements/colab-*/; runtimes that share a
        # Python differ little in what the tools need, and the tools live in their own folder)
        for folder in sorted((CHECKOUT / "requirements").glob("colab-*"), reverse=True):
            if (folder / name).is_file():
                return folder / name
    bare = CHECKOUT / "requirements" / name
    if not bare.is_file():
        raise ToolsError(f"no lock for warmstart's own tools at {bare} (Python {python_tag()}); "
                         "make one with: invoke lock --recipe warmstart", code=2)
    return bare


def tools_dir(environ=os.environ) -> Path:
    return own_cache(environ) / "tools" / python_tag()


def tools_python(folder: Path) -> Path:
    return folder / "bin" / "python"


def tools_site(folder: Path) -> Path:
    return folder / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def lock_digest(lock: Path) -> str:
    return sha256_of(lock)


def in_place(folder: Path, lock: Path) -> bool:
    try:
        return (folder / MARKER).read_text().strip() == lock_digest(lock) and tools_python(folder).exists()
    except OSError:
        return False


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    """The notebook interpreter's pip with only what we pass: no pip.conf, constraints or find-links."""
    try:
        env = pip_env()
    except BadInput as exc:
        raise ToolsError(str(exc), code=2) from None
    return subprocess.run([sys.executable, "-m", "pip", *args], env=env, capture_output=True, text=True)


def _cache_wheels(store: DriveStore, downloaded: Path) -> None:
    """Into the Drive cache, each whole or not at all. A file of the same name that differs is
    damaged (pip just refused it against the lock's hashes): it is set aside."""
    for wheel in sorted(downloaded.glob("*.whl")):
        if store.has("wheels", wheel.name) and sha256_of(store.path("wheels", wheel.name)) != sha256_of(wheel):
            store.set_aside(store.path("wheels", wheel.name))
        if not store.put("wheels", wheel.name, wheel):
            raise OSError(store.warnings[-1])


def restore(folder: Path, lock: Path, store: DriveStore, offline: bool) -> str:
    """Build the tools' virtualenv from the lock; returns where the wheels came from."""
    wheels = store.root / "wheels"
    if folder.exists():
        shutil.rmtree(folder)  # ours (under warmstart's cache folder), and not whole
    folder.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    install = ["--python", str(tools_python(folder)), "install", "--quiet", "--no-deps",
               "--require-hashes", "--no-index", "-r", str(lock)]
    if wheels.is_dir() and _pip(*install, "--find-links", str(wheels)).returncode == 0:
        source = f"restored warmstart's dependencies from {wheels}"
    elif offline:
        raise ToolsError(f"--offline, but {wheels} lacks warmstart's own wheels for {python_tag()}; "
                         "run once without --offline", code=3)
    else:
        with tempfile.TemporaryDirectory(prefix="warmstart-tools-") as tmp:
            got = _pip("download", "--quiet", "--no-deps", "--only-binary=:all:", "--require-hashes",
                       "-r", str(lock), "-d", tmp)
            if got.returncode != 0:
                raise ToolsError("could not download warmstart's own dependencies: "
                                 + (got.stderr.strip().splitlines() or ["pip failed"])[-1])
            done = _pip(*install, "--find-links", tmp)
            if done.returncode != 0:
                raise ToolsError("could not install warmstart's own dependencies: "
                                 + (done.stderr.strip().splitlines() or ["pip failed"])[-1])
            try:
                _cache_wheels(store, Path(tmp))
                source = f"installed warmstart's dependencies and cached them in {wheels}"
            except OSError as exc:  # a full or failing Drive costs the next VM a download, no more
                source = f"installed warmstart's dependencies; caching them in {wheels} failed ({exc.strerror or exc})"
    atomic_write_text(folder / MARKER, lock_digest(lock) + "\n")  # last: the folder is whole
    return source


def _write_script(path: Path, text: str) -> None:
    with atomic_write(path, "w") as fh:
        fh.write(text)
        os.chmod(fh.name, 0o755)


def write_launcher(folder: Path, checkout: Path = CHECKOUT) -> Path:
    """`invoke` beside the notebook's python3 when that place is free (or already ours); else
    only the one inside the tools folder. Returns the command to type.

    Paths are data: each is single-quoted for the shell (a Drive folder may be named `$(...)`,
    hold a quote or a newline), and no path is written into the script's comment line."""
    text = (f"#!/bin/sh\n{LAUNCHER_TAG}: runs warmstart's invoke with the tasks of its checkout\n"
            f"notebook_python={shlex.quote(sys.executable)}\n"
            'export WARMSTART_PYTHON="${WARMSTART_PYTHON:-$notebook_python}" PYTHONDONTWRITEBYTECODE=1\n'
            f"exec {shlex.quote(str(tools_python(folder)))} -m invoke --search-root {shlex.quote(str(checkout))} "
            '"$@"\n')
    own = folder / "invoke"
    _write_script(own, text)
    public = Path(sysconfig.get_path("scripts")) / "invoke"
    try:
        # Only a file warmstart wrote is replaced: a link (dangling or not) or another invoke is
        # somebody else's.
        if public.is_symlink() or (public.exists() and LAUNCHER_TAG not in public.read_text(errors="replace")):
            return own
        _write_script(public, text)
    except OSError:
        return own
    on_path = shutil.which("invoke") == str(public)
    return Path("invoke") if on_path else public


def ensure(drive: Path, offline: bool = False) -> Path:
    """The tools' virtualenv, restored when missing or built from another lock; returns it."""
    lock, folder = tools_lock(), tools_dir()
    if in_place(folder, lock):
        say(f"warmstart's dependencies are in place ({folder})")
    else:
        say(restore(folder, lock, DriveStore(drive), offline))
    return folder


COLAB_MOUNT = "/content/drive"  # envs/colab.toml's mount_point and drive
COLAB_DRIVE = "MyDrive"


def drive_root(args: list[str], environ=os.environ) -> Path:
    """The Drive root: --drive, else WARMSTART_DRIVE; else on Colab always the mounted Drive
    (MyDrive), wherever the checkout lies (a clone in /content is on the VM's disk, which the
    wipe erases); elsewhere the folder holding the checkout."""
    chosen = value_of(args, "--drive") or environ.get("WARMSTART_DRIVE")
    mount = Path(environ.get("WARMSTART_MOUNT_POINT") or COLAB_MOUNT)
    if chosen:
        drive = Path(chosen).expanduser().resolve()
        if on_colab(environ) and not drive.is_relative_to(mount.resolve()):
            say(f"warning: the Drive root {drive} is not on the mounted Drive ({mount}): what is cached there "
                "does not survive a wipe of this VM")
        return drive
    if on_colab(environ):
        if not is_mount_point(mount):
            raise ToolsError(f"Google Drive is not mounted at {mount}, and the cache must live there to survive a "
                             f"wipe: run this in a notebook cell first: from google.colab import drive; "
                             f"drive.mount('{mount}')", code=3)
        return mount / COLAB_DRIVE
    return CHECKOUT.parent


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        say("usage: warmstart.sh RECIPE [bootstrap options]")
        return 2
    recipe, args = argv[0], argv[1:]
    try:
        private_cache()  # warmstart's own folder (its tools, logs, jobs): its user's alone
        drive = drive_root(args)
        if problem := not_writable(drive):
            raise ToolsError(problem, code=3)
        folder = ensure(drive, offline="--offline" in args)
        command = write_launcher(folder)
    except ToolsError as exc:
        say(str(exc))
        return exc.code
    except (OSError, subprocess.CalledProcessError) as exc:  # a read-only HOME, a full disk
        say(f"cannot set up warmstart's own tools in {tools_dir()}: {getattr(exc, 'strerror', None) or exc}")
        return 1
    env = dict(os.environ, WARMSTART_DRIVE=str(drive), WARMSTART_PYTHON=os.environ.get("WARMSTART_PYTHON")
               or sys.executable, PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run([str(tools_python(folder)), "-m", "invoke", "--search-root", str(CHECKOUT),
                           "bootstrap", "--recipe", recipe, *args], env=env)
    if done.returncode == 0:  # the line to use from now on, once it has worked
        line = shlex.join([str(command), "bootstrap", "--recipe", recipe])
        say(f"from now on, in any folder of this VM: {'!' if on_colab() else ''}{line}")
    return done.returncode


def run(argv: list[str]) -> int:
    """main(), with a bug reported as the rest of warmstart does: exit 70 and a log, no traceback."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    except Exception as exc:  # a bug in warmstart
        import traceback

        log = tools_dir().parent / "logs" / f"warmstart-sh-{os.getpid()}.log"
        try:
            write_private(log, traceback.format_exc())
            where = f"please report it with {log}"
        except OSError:
            where = "its log could not be written"
        say(f"internal error: {exc!r}; this is a bug in warmstart: {where}")
        return 70


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
