"""warmstart's own tools on a wiped VM, kept apart from the notebook's packages (stdlib only).

    warmstart.sh RECIPE [bootstrap options]     (runs main() with the notebook's python3)

warmstart needs invoke, requests, packaging, ... Installing them into the notebook's interpreter
would replace what the kernel has imported, so they live in a private virtualenv under
`~/.cache/warmstart/tools/<pyXY>/`, installed from the `warmstart` recipe's hashed lock (the
Colab lock on Colab) out of the Drive wheel cache, or from the index the first time, filling the
cache; by uv where there is one (Colab ships it), else by the notebook's pip. Those the notebook's
interpreter has at the lock's versions (most of them on Colab) are copied from it instead
(warmstart.shipped). They count as in place only when the virtualenv's marker names the sha256
of that lock.

On a wiped VM it begins the read of the recipe's snapshot archive as it begins (reading on once
the tools' wheels are off Drive), and hands that read on to the bootstrap it starts
(warmstart.early); a child compiles the tools' modules that bootstrap imports as it starts
(compile_ahead).

An `invoke` launcher beside the notebook's `python3` (never over a foreign one) runs invoke from
there with this checkout as the tasks' search root, and the notebook's interpreter as the
target, so `!invoke bootstrap --recipe NAME` works from any folder afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from functools import partial
from pathlib import Path
from typing import Any

from . import compile_rest, config, distinfo, early, flock, headstart, home, prefetch, settings, shipped
from .background import NEUTRAL_CWD
from .console import shown, write_line
from .disks import real
from .errors import BadInput, PreconditionUnmet, WarmstartError, ended, failure, redact
from .home import python_tag
from .invocation import in_cell, in_notebook, require_working_folder
from .locktext import canonical, given_as_file, pins, requirement_lines
from .pipconfig import IndexSettings, breaks_system_packages, pip_env, unreachable, uv_env
from .profiles import Profile, require_drive, select_profile
from .store import DriveStore
from .transfer import WriteFailed, atomic_write, atomic_write_text, copy_hashed, sha256_of
from .uv import find_uv

CHECKOUT = Path(__file__).resolve().parent.parent
MARKER = ".warmstart-tools"  # in the virtualenv, names the lock it was built from: written last
LAUNCHER_TAG = "# warmstart launcher"  # the line that marks an `invoke` launcher as warmstart's


def say(message: str) -> None:
    write_line(f"warmstart.sh: {shown(message)}", sys.stderr, flush=True)


def platform_profile(environ=os.environ) -> Profile:
    """This machine's platform, as every other entry point detects it (envs/*.toml)."""
    return select_profile(CHECKOUT, environ)


def tools_lock(profile: Profile) -> Path:
    name = f"warmstart-{python_tag()}-manylinux_{platform.machine().lower()}.txt"
    if profile.name == "colab":
        # warmstart's tools at Colab's own versions (the same bytes the kernel has): the lock of
        # the newest Colab image for this Python (requirements/colab-*/; runtimes that share a
        # Python differ little in what the tools need, and the tools live in their own folder)
        for folder in sorted((CHECKOUT / "requirements").glob("colab-*"), reverse=True):
            if (folder / name).is_file():
                return folder / name
    bare = CHECKOUT / "requirements" / name
    if not bare.is_file():
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        # the command is for a machine where warmstart is installed: this one has no invoke yet
        raise PreconditionUnmet(
            f"this checkout has no lock for warmstart's own tools for Python {version} ({bare}; it has them for "
            f"{', '.join(_tools_pythons()) or 'none'}): set WARMSTART_PYTHON to one of those, update the checkout, "
            f"or make the lock where warmstart is installed with "
            f"`invoke lock --recipe warmstart --python-version {version}`")
    return bare


def _tools_pythons() -> list[str]:
    """The Python versions (3.12) this checkout has a lock of warmstart's own tools for."""
    found = (re.fullmatch(r"warmstart-py(\d)(\d+)-.+\.txt", lock.name)
             for lock in (CHECKOUT / "requirements").rglob("warmstart-py*.txt"))
    return sorted({f"{m[1]}.{m[2]}" for m in found if m}, key=lambda v: tuple(map(int, v.split("."))))


def tools_dir(environ=os.environ) -> Path:
    return home.tools(python_tag(), environ)


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
    return subprocess.run([sys.executable, "-m", "pip", *args], env=pip_env(), capture_output=True, text=True,
                          cwd=NEUTRAL_CWD)


def _install(folder: Path, lines: list[str], wheels: Path) -> subprocess.CompletedProcess[str]:
    """The requirement `lines` (pins with their hashes) from the wheels in the folder `wheels`
    into the tools' virtualenv, each checked against the lock's sha256 first. uv when there is
    one: on every wiped VM the Colab lock's 18 wheels (filelock among them then) took it 0.2 s (0.5 s from the 60 MiB/s
    Drive stand-in, the copy off Drive included), where pip took 1.6 s (1.8 s); medians of
    bench/tools.py.

    Not compiled here: on a wiped VM this step stands between the snapshot's read and the
    bootstrap that unpacks it, and compiling every module (pip-tools, pyelftools and the rest
    that only `invoke lock` imports among them) took uv 0.5 to 0.8 s more. The launcher's runs
    write the bytecode of what they import instead (tasks.py; a restore's imports: 0.4 s)."""
    if not lines:  # all of them the notebook interpreter's own (_from_image)
        return subprocess.CompletedProcess([], 0, "", "")
    requirements = wheels / "warmstart-tools.txt"
    requirements.write_text("".join(f"{line}\n" for line in lines))
    python = ["--python", str(tools_python(folder))]  # pip's goes before its command
    args = ["--quiet", "--no-deps", "--require-hashes", "--no-index", "--find-links", str(wheels),
            "-r", str(requirements)]
    if uv := find_uv():
        return subprocess.run([str(uv), "pip", "install", *python, *args], env=uv_env(), capture_output=True,
                              text=True)
    return _pip(*python, "install", "--no-compile", *args)


# pip's words for an index out of reach: a warning per retry, each naming the connection's error
# (after `<object at 0x...>: ` its reason), then "No matching distribution" as if none existed.
_RETRIED = re.compile(r"Retrying \(Retry\(.*\)\) after connection broken by '(.*)': /")


def _unreachable(done: subprocess.CompletedProcess[str]) -> str | None:
    """Why pip could not reach the package index, in its last retry's words; None when it did."""
    causes = _RETRIED.findall(done.stderr)
    return re.sub(r"<[^<>]*>: ", "", causes[-1]) if causes and "ERROR: " in done.stderr else None


def _why(done: subprocess.CompletedProcess[str]) -> str:
    """pip's or uv's reason on one line: its first two (uv: the error and its cause; pip: the error
    and the package; the last lines are a hash or a hint)."""
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()][:2]
    why = " ".join(lines) or ended(done.returncode)
    return why if len(why) <= 300 else why[:299] + "…"


def _cache_wheels(store: DriveStore, downloaded: Path) -> None:
    """Into the Drive cache, each whole or not at all. A file of the same name that differs is
    damaged (the installer just refused it against the lock's hashes): it is set aside."""
    for wheel in sorted(downloaded.glob("*.whl")):
        if store.has("wheels", wheel.name) and sha256_of(store.path("wheels", wheel.name)) != sha256_of(wheel):
            store.set_aside(store.path("wheels", wheel.name))
        if not store.put("wheels", wheel.name, wheel):
            raise OSError(store.warnings[-1])


WHEEL_MOST = 64 << 20  # a tool's wheel is a few MB (zstandard's, the largest: 5 MB)


def _off_drive(wheels: Path, names: Iterable[str], into: Path) -> None:
    """The wheels in Drive's cache (`wheels`) of the distributions `names` (canonical), copied
    into `into` on local disk, all at once (Drive waits per file). Read before the snapshot's
    read goes on (warmstart.sh holds it to its first 2 MiB meanwhile), they have Drive's whole
    pace (all 18 of the Colab lock, 7 MB: 0.5 s at 15 MiB/s; the 6 the image lacks, 0.5 MB),
    where the install read them beside the archive, at half of it.
    A file is copied whatever it holds (the installer checks each against the lock's sha256);
    one too large, or unreadable, is left out, and so not found. A local disk that fails the copy
    (full) is WriteFailed, naming the copy: the run would end at its next write there, naming no file."""
    wanted = set(names)

    def copy(wheel: Path) -> None:
        dest = into / wheel.name
        try:
            if wheel.stat().st_size <= WHEEL_MOST:
                with open(dest, "wb") as out:
                    copy_hashed(wheel, out)  # its writes' errors are WriteFailed, its reads' (Drive's) not
        except OSError as exc:
            dest.unlink(missing_ok=True)
            if isinstance(exc, WriteFailed):
                raise

    if wanted:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(copy, [w for w in wheels.glob("*.whl") if canonical(w.name.split("-", 1)[0]) in wanted]))


def _from_image(image: dict[str, Path], site: Path) -> set[str]:
    """Each distribution of `image` (its name: its `.dist-info` folder in the notebook
    interpreter's site folders) copied into the tools' `site` (warmstart.shipped); the names of
    those copied whole. One that is not whole there is said, and left to its wheel."""
    copied = set()
    for name, info in image.items():
        try:
            shipped.copy(info, site)
            copied.add(name)
        except shipped.NotWhole as exc:
            say(f"note: the notebook's own {info.name} is not as installed ({exc}): its wheel instead")
        except WriteFailed:  # the tools' disk (full): its wheel would meet it too
            raise
        except OSError as exc:
            say(f"note: cannot copy the notebook's own {info.name} ({exc.strerror or exc}): its wheel instead")
    return copied


def restore(folder: Path, lock: Path, store: DriveStore, offline: bool,
            then: Callable[[], object] = lambda: None) -> str:
    """Build the tools' virtualenv from the lock; returns where its distributions came from: the
    notebook interpreter's own at the lock's versions (warmstart.shipped), the rest from their
    wheels. `then` is called once those wheels are off Drive (warmstart.sh begins the snapshot's
    read there)."""
    wheels = store.root / "wheels"
    if folder.exists():
        shutil.rmtree(folder)  # ours (under warmstart's cache folder), and not whole
    folder.parent.mkdir(parents=True, exist_ok=True)
    # made while the wheels come off Drive (80 ms alone, up to 0.3 s on a wiped VM's busy CPUs):
    # both stand between the snapshot's read and the bootstrap that unpacks it
    make_venv = [sys.executable, "-m", "venv", "--without-pip", str(folder)]
    venv = subprocess.Popen(make_venv, cwd=NEUTRAL_CWD)
    text = lock.read_text()
    pinned = pins(text)
    image = shipped.find(pinned, shipped.site_folders())
    with tempfile.TemporaryDirectory(prefix="warmstart-tools-") as local:
        try:
            if cached := wheels.is_dir():
                _off_drive(wheels, pinned.keys() - image.keys(), Path(local))
            then()
        finally:
            made = venv.wait()
        if made != 0:  # it said why above (a full disk, say)
            raise WarmstartError(f"cannot set up warmstart's own tools in {folder}: "
                                 f"`{shlex.join(make_venv)}` failed (exit {made}, its reason above); "
                                 "mend what it names (make room on that disk, say) and run again")
        copied = _from_image(image, tools_site(folder))
        if cached and (late := image.keys() - copied):  # not whole in the image: their wheels after all
            _off_drive(wheels, late, Path(local))
        lines = requirement_lines(text, [f"{name}=={version}" for name, version in pinned.items()
                                         if name not in copied])
        if lines is None:
            # the command is for a machine where warmstart is installed, as tools_lock's
            raise BadInput(f"{lock}: a pin without its --hash; update the checkout, or make the lock anew where "
                           "warmstart is installed with `invoke lock --recipe warmstart`")
        restored = _install(folder, lines, Path(local)) if cached or not lines else None
    also = f" ({len(copied)} of them the notebook interpreter's own)" if copied else ""
    if restored is not None and restored.returncode == 0:
        source = (f"restored warmstart's dependencies from {wheels}{also}" if lines
                  else f"restored warmstart's dependencies: all {len(copied)} the notebook interpreter's own")
    elif offline:
        why = ("it has no wheels" if restored is None
               else f"their wheels there could not be installed ({_why(restored)})")
        raise PreconditionUnmet(f"--offline, but warmstart's own dependencies for {python_tag()} cannot come from "
                                f"{wheels}: {why}; run once without --offline")
    else:
        # all of the lock's wheels, into Drive's cache: the next VM's image may ship fewer of them
        with tempfile.TemporaryDirectory(prefix="warmstart-tools-") as tmp:
            got = _pip("download", "--quiet", "--no-deps", "--only-binary=:all:", "--require-hashes",
                       "-r", str(lock), "-d", tmp)
            if got.returncode != 0 and (cause := _unreachable(got)):  # as a bootstrap says it
                index = redact(IndexSettings.from_environ().index_urls[0])
                raise PreconditionUnmet(unreachable(index, cause, " for warmstart's own dependencies"))
            if got.returncode != 0:
                raise WarmstartError(f"could not download warmstart's own dependencies: {_why(got)}")
            done = _install(folder, lines, Path(tmp))
            if done.returncode != 0:
                raise WarmstartError(f"could not install warmstart's own dependencies: {_why(done)}")
            try:
                _cache_wheels(store, Path(tmp))
                source = f"installed warmstart's dependencies{also} and cached them in {wheels}"
            except OSError as exc:  # a full or failing Drive costs the next VM a download, no more
                source = (f"installed warmstart's dependencies{also}; caching them in {wheels} failed "
                          f"({exc.strerror or exc})")
    atomic_write_text(folder / MARKER, lock_digest(lock) + "\n")  # last: the folder is whole
    return source


def _write_script(path: Path, text: str) -> None:
    with atomic_write(path, "w") as fh:
        fh.write(text)
        os.chmod(fh.name, 0o755)


# warmstart.launch from the checkout `root`: `-P` keeps the working folder (the notebook's, which
# may hold a module of any name) off sys.path; warmstart's own __init__ is imported without
# bytecode beside it (a checkout on Drive), what comes after it with the interpreter's setting,
# as tasks.py has it.
LAUNCH = ("import sys; sys.dont_write_bytecode = True; root = sys.argv.pop(1); sys.path.insert(0, root); "
          "import warmstart; sys.dont_write_bytecode = bool(sys.flags.dont_write_bytecode); "
          "from warmstart.launch import launcher; launcher(root, sys.argv[1:])")


def launch_command(folder: Path, checkout: Path = CHECKOUT) -> list[str]:
    """The tools' Python running `invoke ARGS` as warmstart.launch does, with `checkout`'s tasks:
    append ARGS."""
    return [str(tools_python(folder)), "-P", "-c", LAUNCH, str(checkout)]


def write_launcher(folder: Path, checkout: Path = CHECKOUT, public: bool = True) -> Path:
    """`invoke` beside the notebook's python3 when that place is free (or already ours) and
    `public` (the run's target is that python3: warmstart writes in no other environment than its
    target's, nor in one its system's package manager owns); else only the one inside the tools
    folder. Returns the command to type.

    Paths are data: each is single-quoted for the shell (a Drive folder may be named `$(...)`,
    hold a quote or a newline), and no path is written into the script's comment line."""
    text = (f"#!/bin/sh\n{LAUNCHER_TAG}: runs warmstart's invoke with the tasks of its checkout\n"
            f"notebook_python={shlex.quote(sys.executable)}\n"
            'export WARMSTART_PYTHON="${WARMSTART_PYTHON:-$notebook_python}"\n'
            f'export {settings.LAUNCHER.name}="$0"\n'
            f"exec {shlex.join(launch_command(folder, checkout))} \"$@\"\n")
    own = folder / "invoke"
    _write_script(own, text)
    if not public or (distinfo.externally_managed() and not breaks_system_packages()):
        return own  # a python3 its system owns: the bootstrap refuses to install there
    beside = Path(sysconfig.get_path("scripts")) / "invoke"
    try:
        # Only a file warmstart wrote is replaced: a link (dangling or not) or another invoke is
        # somebody else's.
        if beside.is_symlink() or (beside.exists() and LAUNCHER_TAG not in beside.read_text(errors="replace")):
            return own
        _write_script(beside, text)
    except OSError:
        return own
    on_path = shutil.which("invoke") == str(beside)
    return Path("invoke") if on_path else beside


def ensure(drive: Path, profile: Profile, offline: bool = False, then: Callable[[], object] = lambda: None) -> Path:
    """The tools' virtualenv, restored when missing or built from another lock; returns it.
    `then` is called once nothing more of the tools is read from Drive (see restore)."""
    lock, folder = tools_lock(profile), tools_dir()
    with one_at_a_time(folder):
        if in_place(folder, lock):
            then()
            say(f"warmstart's dependencies are in place ({folder})")
            return folder
        say(restore(folder, lock, DriveStore(drive), offline, then))
    # Not beside uv from the index: the bootstrap waits for uv then, and this took its CPU
    # (behind the 15 MiB/s stand-in the cell took 4.38 s against 4.13 s, 8 pairs).
    if not headstart.racing():
        compile_ahead(folder)
    return folder


@contextlib.contextmanager
def one_at_a_time(folder: Path) -> Iterator[None]:
    """Hold the lock of the tools' folder: a second warmstart.sh on the VM (another cell, a
    terminal) would remove the virtualenv the first is installing, or using. It waits, saying
    so once, for up to WARMSTART_LOCK_TIMEOUT, then finds the tools in place."""
    path = folder.with_name(f"{folder.name}.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    waiting = partial(say, f"another warmstart.sh is restoring warmstart's own tools in {folder}: waiting for it")
    with flock.held(path, settings.lock_timeout(), waiting) as taken:
        if not taken:
            raise PreconditionUnmet(f"another warmstart.sh held {path} too long; wait for it, or set "
                                    f"{settings.LOCK_TIMEOUT.name}")
        yield


# The tools a bootstrap imports (by import name), in the order compile_ahead compiles them: the
# reverse of the bootstrap's, which compiles invoke first, so that the two meet. Not the rest
# (pip-tools, build, click, pyelftools): only `invoke lock` imports them.
BOOTSTRAP_IMPORTS = ("zstandard", "tqdm", "pynvml", "unidiff", "packaging")  # not invoke: warmstart.launch
_compiling: list[subprocess.Popen[bytes]] = []
COMPILE_WAIT = 10  # seconds: the whole compile takes about one on 2 CPUs


def compile_ahead(folder: Path) -> None:
    """Compile, in a child at a lower priority, the bytecode of the freshly installed tools a
    bootstrap imports, while warmstart.sh starts it (the install writes none: see _install). On a
    wiped VM the bootstrap compiled them itself before its restore could begin (0.4 s of one CPU;
    pynvml alone, on the GPU step's thread, 0.10 to 0.17 s), while the other CPU did little more
    than relay the snapshot's read. Ended with the run (stop_compiling); bytecode is written
    whole or not at all, by the import system's own atomic write."""
    site = tools_site(folder)
    # each a package (a folder) or a module (a file); one the lock does not install is left out
    paths = [str(path) for name in BOOTSTRAP_IMPORTS for path in (site / name, site / f"{name}.py") if path.exists()]
    try:
        child = subprocess.Popen([str(tools_python(folder)), "-I", "-m", "compileall", "-qq", *paths],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:  # an extra: the bootstrap compiles what it imports itself
        return
    _compiling.append(child)
    with contextlib.suppress(OSError):  # done already
        os.setpriority(os.PRIO_PROCESS, child.pid, 10)  # the bootstrap's own work comes first


def stop_compiling() -> None:
    """End compile_ahead's child with the run: let it finish what it writes (a second or so, after a
    bootstrap that failed early), else stop it (a file it wrote half stays under a temporary name,
    in the tools' own folder)."""
    while _compiling:
        child = _compiling.pop()
        try:
            child.wait(timeout=COMPILE_WAIT)
        except subprocess.TimeoutExpired:
            child.terminate()
            child.wait()


def drive_root(option: str | None, profile: Profile, environ=os.environ) -> Path:
    """The Drive root as every entry point resolves it (warmstart.settings)."""
    drive = settings.drive_root(option, profile, environ)
    mount = profile.mount(environ)
    if mount and not drive.is_relative_to(real(mount)):
        say(f"warning: the Drive root {drive} is not on the mounted Drive ({mount}): what is cached there "
            "does not survive a wipe of this VM")
    return drive


def bootstrap_flags(given: argparse.Namespace) -> dict[str, Any]:
    """warmstart.sh's command line as bootstrap's options, by name (as its task takes them)."""
    declared = {f.name for f in fields(settings.Options)}
    return {name: value for name, value in vars(given).items() if name in declared}


def _bootstrap(argv: list[str], env: dict[str, str]) -> int:
    """Run the bootstrap command `argv`, handing it the snapshot's read and the install from the
    index begun here (if any); its exit status (128 + N, as a shell says it, where signal N ended
    it: it could say nothing then, so this says it; on Colab most often the OOM killer)."""
    handed, uv = early.hand_on(), headstart.hand_on()
    passed = [given for given in (handed, uv) if given is not None]
    try:
        with subprocess.Popen(argv, env=env | {k: v for given in passed for k, v in given.environ.items()},
                              pass_fds=[fd for given in passed for fd in given.fds]) as child:
            for given in passed:  # the bootstrap's now: its ends alone end the read, or stop uv
                given.close_handed()
            code = _waited(child)
    finally:
        if handed:
            handed.stop()  # a read the bootstrap did not take to its end
        headstart.close()  # uv ended, its tree removed unless the bootstrap placed it
    if code < 0:
        say(f"the bootstrap was {ended(code)}")
        return 128 - code
    return code


INTERRUPT_GRACE = 2.0  # seconds the bootstrap has to end on an interrupt before it is passed one


def _waited(child: subprocess.Popen) -> int:
    """The bootstrap `child`'s exit status, waited for through interrupts. A notebook's Ctrl-C
    reaches its whole process group, the bootstrap too, which stops its work, removes what it
    left half done and says so (exit 130); subprocess.run killed it 0.25 s after (and this
    process printed a traceback). An interrupt sent to this process alone (`kill -INT`, SIGTERM)
    is passed on to the bootstrap once it has had INTERRUPT_GRACE to end of its own."""
    interrupted = False
    while True:
        try:
            return child.wait(INTERRUPT_GRACE if interrupted else None)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGINT)
            interrupted = False
        except KeyboardInterrupt:
            interrupted = True


def main(argv: list[str]) -> int:
    """warmstart.sh RECIPE [bootstrap options]: warmstart's own tools, then `invoke bootstrap`."""
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):  # asked for help: argparse's
        say("usage: warmstart.sh RECIPE [bootstrap options]")
        return 2
    try:
        try:
            given = settings.parse_command_line(argv)
        except SystemExit as exc:  # argparse said what is wrong (or --help), with the usage
            return int(exc.code or 0)
        return _set_up_and_bootstrap(given, argv)
    finally:  # the reads and uv begun ahead, the read prefetch.guess began too
        early.drop()
        headstart.close()
        stop_compiling()


def _set_up_and_bootstrap(given: argparse.Namespace, argv: list[str]) -> int:
    try:
        drive, profile, folder, command = _set_up(given)
    except (Exception, KeyboardInterrupt) as exc:
        failed = failure(exc)
        say(failed.message)
        return failed.exit_code
    env = dict(os.environ, **{settings.DRIVE.name: str(drive), settings.PYTHON.name: settings.target_python(None),
                              settings.LAUNCHER.name: str(command)})
    # warmstart.sh's own (this process imports from the checkout): the bootstrap writes the tools'
    # bytecode as the launcher's runs do
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    # the command line as given: the task parses it against the same declaration
    code = _bootstrap([*launch_command(folder), "bootstrap", "--recipe", given.recipe, *argv[1:]], env)
    if code == 0:  # the line to use from now on, once it has worked
        line = _from_now_on(given, drive, command, notebook=in_notebook(profile))
        say(f"from now on, in any folder of this VM: {line}")
    return code


def _from_now_on(given: argparse.Namespace, drive: Path, command: Path, *, notebook: bool) -> str:
    """The bootstrap line for later runs, in any folder: the recipe's file (when it was given by
    its path) and --python by their full paths, and the flags that say which Drive, team cache,
    interpreter, installer and part of the recipe, and what this VM's GPU and runtime allow (a
    run without them would look at another Drive, do more, or stop on this VM's GPU where this
    one went on). Not --offline: a later run may reach the index."""
    def full(path: str) -> str:
        return str(Path(os.path.expanduser(path)).absolute())

    words = [str(command), "bootstrap", "--recipe", full(given.recipe) if given_as_file(given.recipe) else given.recipe]
    if given.drive:
        words += ["--drive", str(drive)]
    if given.python:  # a path, or a command on PATH
        words += ["--python", full(given.python) if os.sep in given.python else given.python]
    cache = settings.team_as_given(settings.team_location(given.cache)) if given.cache else None
    if cache:
        words += ["--cache", cache]
    if given.cache_read_only and (cache or not given.cache):
        words.append("--cache-read-only")
    if given.installer != "auto":
        words += ["--installer", given.installer]
    words += [flag for flag, on in (("--packages-only", given.packages_only), ("--keep-runtime", given.keep_runtime),
                                    ("--allow-no-gpu", given.allow_no_gpu),
                                    ("--allow-unfit-gpu", given.allow_unfit_gpu)) if on]
    return in_cell(words, notebook)


def _set_up(given: argparse.Namespace) -> tuple[Path, Profile, Path, Path]:
    """warmstart's own tools in place for the run `given`, with the snapshot's read (and uv from
    the index, where the read would lose to it) begun beside them: the Drive root, the platform,
    the tools' folder and the `invoke` launcher."""
    # The recipe's file and locks, the platform's profiles: read at once from a checkout on Drive
    # (an open each, 20 ms on the stand-in), so that the online question (headstart.consider)
    # finds the recipe's lock in memory, where it cost 0.1 s of opens before uv could begin.
    require_working_folder()  # pip and uv would fail there, in their words
    with config.reading_ahead(CHECKOUT, given.recipe):
        home.private()  # warmstart's own folder (its tools, logs, jobs): its user's alone
        profile = platform_profile()
        drive = drive_root(given.drive, profile)
        require_drive(drive, profile, recipe=given.recipe)
        # The snapshot's read, begun as this process started (prefetch.guess) or now, goes on
        # while the tools' wheels are read off Drive and installed, and on to the bootstrap:
        # finding the archive (the listing, the open, its index: Drive's waits, not its
        # bandwidth) overlaps the wheels' reads. Online, where the read would lose to the index,
        # uv begins from there at once (headstart), and the tools are installed as uv runs. A
        # read begun only now holds no more than it takes to know Drive's pace until the wheels
        # are off (PACE_AHEAD); the guess's has timed Drive alone before them.
        flags, race = bootstrap_flags(given), partial(headstart.consider, checkout=CHECKOUT, drive=drive)
        asking = early.begin(flags, CHECKOUT, prefetch.PACE_AHEAD, race, profile)
        if asking and not given.offline:
            asking.join(headstart.ASK_WAIT)
        # the rest of warmstart's modules, which the bootstrap imports, while the tools are restored
        compiling = threading.Thread(target=compile_rest, daemon=True)
        compiling.start()
        folder = ensure(drive, profile, offline=given.offline,
                        then=lambda: early.begin(flags, CHECKOUT, prefetch.HANDED_AHEAD, race))
        command = write_launcher(folder, public=settings.target_python(given.python) == sys.executable)
        compiling.join()
        return drive, profile, folder, command


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
