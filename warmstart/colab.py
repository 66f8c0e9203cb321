"""The in-kernel path: one notebook cell that mounts Drive, bootstraps, and moves the notebook.

    from google.colab import drive; drive.mount('/content/drive')
    import sys; sys.path.append('/content/drive/MyDrive/warmstart')
    import warmstart.colab; warmstart.colab.bootstrap('hyperlpr')

Only code running in the notebook kernel can mount Drive (google.colab asks the browser for
consent through the kernel) and change the notebook's working directory; a `!invoke`
subprocess can do neither. This module does both around the same bootstrap. It imports only
the standard library until warmstart's own tools are restored (warmstart.tools) and appended to
sys.path after the kernel's own packages, so a fresh kernel needs nothing installed.
"""

from __future__ import annotations

import importlib.util
import os
import reprlib
import sys
from dataclasses import fields, replace
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

from . import PROJECT_ROOT, tools
from .config import reading_ahead
from .console import shown
from .disks import is_mount_point
from .errors import BadInput, PreconditionUnmet, failure
from .invocation import require_working_folder
from .profiles import Profile, select_profile
from .settings import MOUNT_POINT, STATUS_OPTIONS, Options, drive_root

last_report: dict[str, Any] | None = None  # the most recent bootstrap's report


class BootstrapFailed(RuntimeError):
    """Raised in the notebook when a bootstrap fails; carries the exit code and the report."""

    def __init__(self, report: dict[str, Any]) -> None:
        super().__init__(report.get("error", "bootstrap failed"))
        self.exit_code = report.get("exit_code", 1)
        self.report = report

    def _render_traceback_(self) -> list[str]:
        """What IPython shows for it in the notebook, in place of a traceback through warmstart:
        the error itself is the line above, on stderr."""
        return [f"BootstrapFailed: exit code {self.exit_code} (the error above); "
                "the report is in warmstart.colab.last_report"]


class KernelImports:
    """`name in imports`: a module this kernel has imported belongs to the distribution `name`.
    Asked only of the distributions a run replaces: mapping every module of Colab's 700
    distributions to its owner (importlib.metadata.packages_distributions) reads every RECORD,
    most of a second."""

    def __init__(self) -> None:
        self.modules = frozenset(module.partition(".")[0] for module in list(sys.modules))

    def __contains__(self, name: object) -> bool:
        try:
            dist = metadata.distribution(str(name))
        except metadata.PackageNotFoundError:
            return False
        top_level = (dist.read_text("top_level.txt") or "").split() or {
            # as packages_distributions infers them, from RECORD only without top_level.txt: the
            # first part of each file's path, a module's stem
            PurePosixPath(f).parts[0].removesuffix(".py") for f in dist.files or ()
            if not str(f).startswith(("..", "/")) and ".dist-info" not in str(f)}
        return not self.modules.isdisjoint(top_level)


def mount_drive(mount_point: Path) -> None:
    """Mount Drive at mount_point unless it is mounted already; never write into it first."""
    if is_mount_point(mount_point):
        return
    if mount_point.is_dir() and any(mount_point.iterdir()):
        raise PreconditionUnmet(
            f"{mount_point} is not mounted but already holds files, so Drive cannot be mounted "
            "there; move them away (they were written before the mount) and run again"
        )
    from google.colab import drive  # only inside a Colab notebook kernel

    try:
        drive.mount(str(mount_point))
    except Exception as exc:  # Colab's: the consent dismissed (MessageError), Drive timing out (ValueError)
        raise PreconditionUnmet(f"Drive could not be mounted at {mount_point}: {exc}; run the cell again (and "
                                "allow access to Drive when Colab asks)") from None


def restart_runtime() -> None:
    """Restart the Colab runtime (the kernel process ends and Colab starts a fresh one)."""
    os.kill(os.getpid(), 9)


# What warmstart imports in the kernel (invoke only serves `!invoke`): Colab's image has them all.
_RUNTIME_MODULES = ("packaging", "requests", "tqdm", "pynvml", "zstandard")


def _with_tools(drive: Path, profile: Profile, offline: bool) -> None:
    """warmstart's own dependencies: the kernel's where it has them, else from warmstart's private
    folder (restored from Drive), appended to sys.path so the kernel's own always win."""
    if all(importlib.util.find_spec(name) for name in _RUNTIME_MODULES):
        return
    site = str(tools.tools_site(tools.ensure(drive, profile, offline=offline)))
    if site not in sys.path:
        sys.path.append(site)


def _options(call: str, recipe: str, flags: dict[str, Any], takes: list[str], also: str = "") -> Options:
    """The options of an in-kernel call, for this kernel's Python; a flag the call does not take is bad input."""
    if unknown := sorted(set(flags) - set(takes)):
        raise BadInput(f"warmstart.colab.{call}() takes no {', '.join(map(repr, unknown))}; "
                       f"it takes: {', '.join(takes)}{also}")
    declared = {f.name: f for f in fields(Options)}
    return Options(recipe=_taken(call, "recipe", recipe), python=sys.executable, kernel_imported=KernelImports(),
                   **{name: _taken(call, name, value, switch=declared[name].type == "bool",
                                   optional=declared[name].default is None) for name, value in flags.items()})


def _taken(call: str, name: str, value: Any, *, switch: bool = False, optional: bool = False) -> Any:
    """A keyword's value as its option takes it, else BadInput naming the keyword: a switch True or
    False (offline="no" would be true), any other a str or a path (a notebook builds paths with
    pathlib; on a command line all are strings), or None where the option may be left out (as
    `%warmstart` gives the flags its line leaves out)."""
    if isinstance(value, os.PathLike) and not switch:
        value = os.fspath(value)
    if isinstance(value, str) and "\0" in value:  # what no command line can hold: the OS refuses it in a path
        raise BadInput(f"warmstart.colab.{call}({name}={reprlib.repr(value)}): {name} cannot hold a NUL character")
    if isinstance(value, bool if switch else str) or (value is None and optional):
        return value
    raise BadInput(f"warmstart.colab.{call}({name}={reprlib.repr(value)}): {name} takes "
                   f"{'True or False' if switch else 'a str or a pathlib.Path'}")


def _failed(recipe: str, exc: BaseException) -> dict[str, Any]:
    """Its one error line, said; the report of a call that ended with it."""
    failed = failure(exc)
    print(f"warmstart: error: {shown(failed.message)}", file=sys.stderr)
    return {"ok": False, "recipe": recipe, "error": failed.message, "exit_code": failed.exit_code}


def bootstrap(recipe: str, *, restart: bool = False, mount_point: str | None = None, root: Path = PROJECT_ROOT,
              **flags: Any) -> dict[str, Any]:
    """Mount Drive if needed, bootstrap `recipe` into this kernel's Python, `cd` to its workdir.

    Takes every option of `invoke bootstrap` by name (`drive=`, `offline=True`, ..., see
    `warmstart.settings.Options`), but --python (the kernel's own) and --json. Returns the report.
    With restart=True, restarts the runtime when the install replaced a package the kernel had
    already imported (otherwise it says so and leaves it to you). mount_point: where to mount
    Drive when not at the platform's usual place (later `!invoke` calls then need `--drive` or
    WARMSTART_DRIVE too)."""
    global last_report
    try:
        require_working_folder()  # before Drive's mount, which would fail there in its own words
        takes = sorted(name.replace("-", "_") for name in Options.flags() if name not in ("recipe", "python"))
        options = _options("bootstrap", recipe, flags, takes, also=", restart, mount_point")
        restart = _taken("bootstrap", "restart", restart, switch=True)
        mount_point = _taken("bootstrap", "mount_point", mount_point, optional=True)
        environ = {**os.environ, MOUNT_POINT.name: mount_point} if mount_point else os.environ
        profile = select_profile(root, environ)
        mount = profile.mount(environ)
        if mount and not options.drive and not options.dry_run:
            mount_drive(mount)
        drive = drive_root(options.drive, profile, environ)  # as every entry point resolves it
        if mount_point and not options.drive:  # a mount point of the user's choosing lives in this call only
            options = replace(options, drive=str(drive))
        _with_tools(drive, profile, options.offline)
    except (Exception, KeyboardInterrupt) as exc:
        last_report = _failed(recipe, exc)
        raise BootstrapFailed(last_report) from None

    # warmstart's own dependencies are importable only now (_with_tools)
    from .bootstrap import bootstrap as run_bootstrap
    from .cli import run_reported
    from .report import Report

    def act(report: Report) -> None:
        plan = run_bootstrap(options, root, report)
        if not options.dry_run:
            os.chdir(plan.workdir)
            report.say(f"working directory: {plan.workdir}")

    with reading_ahead(root, options.recipe):
        report = run_reported(act, options.recipe, as_json=False)
    outcome = last_report = report.as_json()
    if report.exit_code:
        raise BootstrapFailed(outcome)
    if outcome.get("restart_needed"):
        if restart:
            restart_runtime()
        # with its import: after `%warmstart` alone a cell has no name `warmstart`
        report.say("or run `import warmstart.colab; warmstart.colab.restart_runtime()` to restart it now")
    return outcome


def status(recipe: str, *, root: Path = PROJECT_ROOT, **flags: Any) -> dict[str, Any]:
    """`invoke status` from the notebook, where no `invoke` may be (warmstart.sh writes it): what
    a bootstrap of `recipe` into this kernel's Python would find and do, changing nothing (Drive
    is not mounted for it). Takes the bootstrap's `drive=`, `cache=` and `packages_only=`. Prints
    its lines and returns its facts, as `invoke status --json` prints them: `complete` is True
    once the environment matches and nothing is left to write to Drive ("safe to shut down"). A
    failure says its one line and returns `ok` False, its `error` and `exit_code`."""
    try:
        require_working_folder()
        options = _options("status", recipe, flags, [n for n in STATUS_OPTIONS if n not in ("recipe", "python")])
        profile = select_profile(root)
        _with_tools(drive_root(options.drive, profile), profile, options.offline)
    except (Exception, KeyboardInterrupt) as exc:
        return _failed(recipe, exc)

    from .status import looked

    report, facts = looked(lambda: options, options.recipe, root)
    return report.as_json() if report.exit_code else facts
