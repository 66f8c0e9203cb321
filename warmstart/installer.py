"""Running pip and uv against the target interpreter, hermetically.

The lock is the whole truth, so neither may add to it; their environments (pipconfig) keep only
pip's index settings, which apply to them as to warmstart's own downloader.
"""

from __future__ import annotations

import importlib.util
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from . import faults
from .background import NEUTRAL_CWD
from .errors import BadInput, PreconditionUnmet, WarmstartError, ended, said_by
from .pipconfig import pip_env, uv_env
from .uv import find_uv


class NotLocked(BadInput):
    """pip or uv refused files whose sha256 the lock does not list (the run adds the command that
    compiles its lock anew: plan.Facts.relock)."""


def pip_command(target: Path) -> list[str]:
    """This interpreter's pip, pointed at the target's environment (pip >= 22.3 `--python`),
    so a target without pip of its own works too; the target's own pip where this interpreter
    has none (warmstart's private tools on a VM carry no pip)."""
    if Path(target) == Path(sys.executable) or importlib.util.find_spec("pip") is None:
        return [str(target), "-m", "pip"]
    return [sys.executable, "-m", "pip", "--python", str(target)]


def _run(cmd: list[str], env: dict[str, str], tool: str, what: str,
         started: Callable[[], bool] | None = None, running: Callable[[subprocess.Popen], None] | None = None) -> None:
    """Run an installer; `started` (a test hook) tells faults when it has begun changing things;
    `running` is handed the child (to stop it from another thread)."""
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=NEUTRAL_CWD)
    if running is not None:
        running(child)
    if started is not None:
        faults.kill_when("install", child, started)
    try:
        _out, err = child.communicate()
    except BaseException:  # Ctrl-C or SIGTERM: the installer stops with us
        child.kill()
        child.wait()
        raise
    if child.returncode != 0:
        said = said_by(tool, err)
        if "THESE PACKAGES DO NOT MATCH THE HASHES" in err or "Hash mismatch" in err:
            raise NotLocked(f"{tool} found files whose sha256 the lock does not list; was the lock edited, or is "
                            "the index serving other files?", detail=said)
        raise WarmstartError(f"{tool} failed to {what} ({ended(child.returncode)})", detail=said)


def run_pip(target: Path, args: Iterable[str], what: str, unset: Iterable[str] = (),
            started: Callable[[], bool] | None = None) -> None:
    command = pip_command(target)
    try:
        _run([*command, *args], pip_env(unset=unset), "pip", what, started)
    except WarmstartError as exc:
        if command[0] == str(target) and any(line.endswith("No module named pip") for line in exc.detail):
            from . import extras  # (packaging: warmstart.sh runs this module before it is there)

            # warmstart's own tools on a VM carry neither pip nor uv: uv is Colab's (and the uv extra's)
            raise PreconditionUnmet(f"{target} has no pip, and uv is not installed where warmstart runs: "
                                    f"{extras.install_command('uv')}, or give the target pip with "
                                    f"`{shlex.join([str(target), '-m', 'ensurepip'])}`") from None
        raise


def download(target: Path, requirements: Path, dest: Path, unset: Iterable[str] = ()) -> None:
    """Fetch the wheels the target needs for `requirements` into `dest`, hashes checked."""
    run_pip(target, ["download", "--quiet", "--no-deps", "--only-binary=:all:",
                     "--require-hashes", "--dest", str(dest), "-r", str(requirements)],
            "download wheels", unset)


def choose(option: str) -> str:
    """`pip` or `uv` for --installer `option` (one of settings.INSTALLERS): uv when it is on the
    machine (Colab ships it), unless told otherwise."""
    if option == "auto":
        return "uv" if find_uv() else "pip"
    if option == "uv" and not find_uv():
        from . import extras  # (packaging: warmstart.sh runs this module before it is there)

        raise PreconditionUnmet(f"--installer uv, but uv is not installed: {extras.install_command('uv')}, "
                                "or use --installer pip")
    return option


def _run_uv(args: list[str], what: str, unset: Iterable[str], started: Callable[[], bool] | None = None,
            running: Callable[[subprocess.Popen], None] | None = None, racing: bool = False) -> None:
    """`racing`: uv races a restore (warmstart.race). It takes only the CPU that leaves (the lowest
    priority), and tries each request once: the restore's read waits while it runs, and uv's own
    retries took 9.7 s to give up on an index that refused every connection."""
    niced = ["nice", "-n", "19"] if racing else []
    env = uv_env(unset=unset) | ({"UV_HTTP_RETRIES": "0"} if racing else {})
    _run([*niced, str(find_uv()), *args], env, "uv", what, started, running)


def install(tool: str, target: Path, requirements: Path, wheels: Sequence[Path],
            unset: Iterable[str] = (), started: Callable[[], bool] | None = None, *, index: bool = False) -> None:
    """Install exactly `requirements` from the local folders `wheels` (and, with `index`, from the
    package index what they lack), hashes checked.

    --no-deps: the lock already lists every dependency, minus the ones the recipe excludes
    (which a dependency may still declare, like hyperlpr3 -> onnxruntime)."""
    links = [arg for folder in wheels for arg in ("--find-links", str(folder))]
    args = [*([] if index else ["--no-index"]), *links, "--no-deps", "--require-hashes", "-r", str(requirements)]
    if tool == "uv":
        _run_uv(["pip", "install", "--quiet", "--python", str(target), *args],
                "install the locked packages", unset, started)
    else:
        run_pip(target, ["install", "--quiet", *args], "install the locked packages", unset, started)


def install_from_index(target: Path, requirements: Path, prefix: Path, unset: Iterable[str] = (),
                       running: Callable[[subprocess.Popen], None] | None = None) -> None:
    """uv installs exactly `requirements` from the package index, hashes checked, under `prefix`
    (laid out as a virtual environment there) for the interpreter `target`: a tree to stage,
    racing a restore (see _run_uv)."""
    _run_uv(["pip", "install", "--quiet", "--python", str(target), "--prefix", str(prefix), "--no-deps",
             "--require-hashes", "-r", str(requirements)],
            "install the locked packages from the index", unset, running=running, racing=True)


def uninstall(tool: str, target: Path, names: Iterable[str], unset: Iterable[str] = ()) -> None:
    """Remove distributions by their RECORD, as an upgrade would."""
    names = list(names)
    if not names:
        return
    if tool == "uv":
        _run_uv(["pip", "uninstall", "--quiet", "--python", str(target), *names],
                "remove replaced packages", unset)
    else:
        run_pip(target, ["uninstall", "--quiet", "--yes", *names], "remove replaced packages", unset)
