"""warmstart's command line: thin invoke tasks over the `warmstart` package. The same tasks are
`invoke ...` in a checkout (tasks.py) and the `warmstart ...` console script of an install.

    invoke bootstrap --recipe hyperlpr [--drive DIR] [--python PATH] [--offline]
                     [--allow-no-gpu] [--allow-unfit-gpu] [--dry-run] [--json]
                     [--installer pip|uv] [--packages-only] [--wait]
                     [--cache URL [--cache-read-only]]
    invoke status --recipe hyperlpr [--drive DIR] [--python PATH] [--cache URL] [--json]
    invoke lock --recipe hyperlpr [--python-version 3.12 ...] [--platform TAG]
                [--platform-profile colab | --image colab-2026.04] [--upgrade]
    invoke lock --check
    invoke image --name colab-latest --freeze FILE --python 3.13.15 --source REPO@COMMIT
    invoke recipes [--drive DIR] [--json]
    invoke assets --recipe hyperlpr [--drive DIR] [--json]
    invoke cache [--drive DIR | --cache URL] [--verify] [--prune [--dry-run]] [--json]
    invoke gpu [--json]
"""

from __future__ import annotations

import atexit
import inspect
import json as jsonlib
import math
import os
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from invoke import Collection, Exit, Program, Task, task

from . import PROJECT_ROOT, __version__
from .console import counted, flushed, output_closed, shown, silence, write_line
from .errors import OUTPUT_CLOSED, BadInput, PreconditionUnmet, WarmstartError
from .invocation import command_line
from .launch import run_bootstrap
from .layout import RECIPES
from .profiles import Profile, require_drive, select_profile
from .settings import (
    PLATFORM,
    STATUS_OPTIONS,
    Options,
    drive_root,
    required_recipe,
    task_signature,
    team_location,
)

if TYPE_CHECKING:
    from .maintenance import Entry
    from .store import Store

# Each task imports the rest of warmstart itself, so that none waits for what only the others need
# (and bootstrap begins its snapshot's read before: warmstart.early).

ROOT = PROJECT_ROOT  # recipes/, requirements/ and envs/: the checkout's, or the installed package's

DRIVE_HELP = Options.flags()["drive"]
JSON_HELP = "print one JSON object on stdout instead of a table"


def command(**kwargs: Any) -> Callable[[Callable[..., Any]], Task]:
    """@task with every flag spelled out: no automatic short flags (`-p` would be --python for one
    task and --prune for another) and no positional arguments (`bootstrap --help` would be a
    recipe named "--help")."""
    return task(auto_shortflags=False, positional=[], **kwargs)


def _print(text: str, keep_lines: bool = False, file: TextIO | None = None) -> None:
    """print (to stdout, or `file`), with credentials hidden and control characters escaped (text
    from recipes, stores and wheels: a description may hold terminal escape sequences)."""
    write_line(shown(text, keep_lines), file or sys.stdout)


def _exit(code: int, last: str | None = None) -> None:
    """Print `last` (when given), then exit with `code` once stdout is written out (flushed)."""
    if code := flushed(code, last):
        raise Exit(code=code)


def _listing(body: Callable[[dict[str, Any], Callable[[str], None]], None], as_json: bool) -> None:
    """Run a listing task's `body(found, say)`: `say` prints a line of its table (with --json,
    nothing), and with --json `found` is printed as one JSON object on stdout with the run's
    `error` and `exit_code`, however it ended (as `status --json`). Errors: one line on stderr."""
    from .cli import run_reported
    from .report import redacted

    found: dict[str, Any] = {}
    report = run_reported(lambda _report: body(found, (lambda _line: None) if as_json else _print), "",
                          as_json=False)
    _exit(report.exit_code, last=jsonlib.dumps(redacted(
        {**found, "error": report.error, "exit_code": report.exit_code})) if as_json else None)


def _unread(name: str, path: Path, error: str) -> dict[str, Any]:
    """A recipe `invoke recipes --json` lists but cannot read: its name, file and why."""
    return {"name": name, "path": str(path), "error": error, "description": None, "python": None, "gpu": None}


def _text(value: object) -> str | None:
    """A recipe's limit in a JSON listing: its text, or None when it sets none."""
    return str(value) if value else None


def _drive(option: str | None, profile: Profile | None = None) -> Path:
    return drive_root(option, profile or select_profile(ROOT))


def takes(signature: inspect.Signature) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A task body that takes declared options as **flags: invoke reads its flags from `signature`."""
    def decorate(body: Callable[..., Any]) -> Callable[..., Any]:
        body.__signature__ = signature  # type: ignore[attr-defined]
        return body
    return decorate


@command(help={**Options.flags(), "json": "print the final report as one JSON object on stdout"})
@takes(task_signature(json=False))
def bootstrap(c, json=False, **flags):
    """Install a recipe's locked environment, restoring wheels and assets from the Drive cache."""
    _exit(run_bootstrap(flags, ROOT, as_json=json))


@command(help={**{flag: text for flag, text in Options.flags().items() if flag.replace("-", "_") in STATUS_OPTIONS},
               "json": "print one JSON object on stdout",
               "packages-only": "as bootstrap --packages-only did: the recipe's assets and checks do not count"})
@takes(task_signature(*STATUS_OPTIONS, json=False))
def status(c, json=False, **flags):
    """Show what bootstrap would find and do here, changing nothing; exit 1 until it has nothing to do.

    Nothing to do: the environment matches the recipe, and no earlier run's Drive writes are
    pending ("safe to shut down")."""
    from .status import looked

    report, facts = looked(lambda: Options(**flags), flags.get("recipe"), ROOT, lines=not json)
    _exit(report.exit_code or facts.get("exit_code", 1),
          last=jsonlib.dumps(facts or report.as_json()) if json else None)


@command(
    iterable=["python_version", "upgrade_package"],
    help={
        "recipe": "recipe name or path (all recipes with --check)",
        "python-version": "lock for this Python (X.Y; repeat for more); default: this interpreter, "
                          "or with --platform-profile every Python the platform has an image for",
        "platform": "platform tag of the locks: manylinux_x86_64 or manylinux_aarch64 (default: this machine's)",
        "platform-profile": "compile against each published image of this platform (envs/images/), e.g. colab",
        "image": "compile against this one image (envs/images/NAME.toml), e.g. colab-2026.04",
        "upgrade": "re-resolve every pin to the newest version (an image's versions stay preferred)",
        "upgrade-package": "re-resolve only this package (repeat for more)",
        "check": "exit 1 when any lock's inputs changed since it was compiled, or its platform "
                 "cannot provide the CUDA libraries its wheels need",
        "drive": "where to find recipes by name besides recipes/: the Drive root's recipe folder (as bootstrap's "
                 "--drive; WARMSTART_RECIPES wins)",
    },
)
def lock(c, recipe=None, python_version=None, platform=None, platform_profile=None, image=None, upgrade=False,
         upgrade_package=None, check=False, drive=None):
    """Compile a recipe's requirements into hashed locks (pip-tools here, uv for other Pythons)."""
    from . import compiling, extras  # compiling: pip-tools and pip's own modules (0.15 s)
    from . import lock as locking
    from .bootstrap import find_recipe
    from .cli import run_plain
    from .images import image_named
    from .locktext import given_as_file
    from .recipe import each_recipe, recipe_files

    def say(line: str) -> None:
        _print(f"warmstart: {line}", file=sys.stderr)

    def drive_recipes() -> Path | None:
        """Recipes named, not given as files, are found where bootstrap finds them (in Drive's
        recipe folder too); a file needs no look at Drive, which may not answer."""
        return None if recipe and given_as_file(recipe) else _drive(drive)

    def check_all() -> None:
        # --check reads every lock of the recipe: a flag that would narrow it or compile would be
        # passed over unsaid (`--check --image colab-2026.07` checked the other images' too)
        given = {"--python-version": python_version, "--platform": platform, "--platform-profile": platform_profile,
                 "--image": image, "--upgrade": upgrade, "--upgrade-package": upgrade_package}
        if ignored := [flag for flag, value in given.items() if value]:
            raise BadInput(f"--check checks every lock of {'the recipe' if recipe else 'every recipe'}, for every "
                           f"Python, platform and image, and compiles none: leave out {', '.join(ignored)}")
        by_name = drive_recipes()
        found = {recipe: [recipe]} if recipe else recipe_files(ROOT, by_name)
        unreadable: list[str] = []
        # each file of a name defined twice too (a copy of a shipped recipe on Drive): its locks are its own
        lines = [line for _name, loaded in each_recipe(found, ROOT, by_name, None if recipe else unreadable)
                 for line in compiling.check(loaded, ROOT)]
        problems = lines + unreadable
        fault = BadInput if unreadable else WarmstartError  # exit 2 where a recipe is bad input, else 1
        if len(problems) > 1:  # a line each (a new image makes every recipe's lock for it stale), then the end
            for line in problems:
                say(line)
            parts = [f"{counted(len(lines), 'lock')} to make or remove"] if lines else []
            parts += [f"{counted(len(unreadable), 'recipe')} that cannot be read"] if unreadable else []
            raise fault(f"{' and '.join(parts)}, each named above")
        if problems:
            raise fault(problems[0])
        _print(f"warmstart: every lock of {', '.join(sorted(found))} matches its inputs, and its platforms "
              "provide the CUDA libraries its wheels need")

    def compile_all() -> None:
        if not recipe:
            raise BadInput(f"--recipe NAME is needed (see `{command_line('recipes')}` for the names; "
                           f"`{command_line('lock', '--check')}` checks every recipe's locks)")
        for version in python_version or ():  # it names the lock file (py312): a minor version only
            if not re.fullmatch(r"3\.[0-9]{1,2}", version):
                raise BadInput(f"--python-version takes a minor version of Python 3, as 3.12, got {version!r}")
        loaded = find_recipe(recipe, ROOT, drive_recipes(), select_profile(ROOT), bootstrapping=False)
        compiling.require_pinned(loaded, upgrade_package or ())
        # said before any download, whatever the ELF cache holds: a cold cache would need it
        extras.require("lock", "elftools", "invoke lock (it reads the CUDA libraries of the wheels it locks)")
        current = locking.LockTarget.current()
        images = ([image_named(image, ROOT / "envs")] if image else
                  list(select_profile(ROOT, {PLATFORM.name: platform_profile}, "--platform-profile").images().values())
                  if platform_profile else None)
        if images == []:
            raise BadInput(f"the platform profile {platform_profile!r} publishes no images to lock against: its VMs "
                           "use the bare lock, which `invoke lock` without --platform-profile makes")
        for target in compiling.lock_targets(loaded, platform or current.platform, python_version or [],
                                             current.python_version, images, say):
            path = compiling.compile_lock(loaded, target, upgrade=upgrade,
                                        upgrade_packages=tuple(upgrade_package or ()), say=say, root=ROOT)
            _print(f"warmstart: wrote {path} ({counted(len(locking.parse_lock(path).pins), 'pin')})")

    _exit(run_plain(check_all if check else compile_all))


@command(help={
    "name": "the image's name, e.g. colab-latest (its files: envs/images/NAME.toml and NAME.freeze.txt)",
    "profile": "the platform profile it belongs to (default: colab)",
    "freeze": "the image's published `pip freeze` (Colab: pip-freeze.gpu.txt of googlecolab/backend-info)",
    "python": "the image's Python version, e.g. 3.13.15 (Colab: os-info-gpu.txt)",
    "source": "where the freeze comes from: repository@commit (date)",
    "cuda": "the CUDA library list in envs/images/ its system provides (default: cuda-12.8.txt)",
})
def image(c, name, freeze, python, source, profile="colab", cuda="cuda-12.8.txt"):
    """Add or refresh a platform image when the platform moves on; then re-lock for it."""
    from .cli import run_plain
    from .images import write_image
    from .recipe import known_recipes

    def run() -> None:
        given = {"--name": name, "--freeze": freeze, "--python": python, "--source": source}
        if missing := [flag for flag, value in given.items() if not value]:
            raise BadInput(f"invoke image needs {', '.join(missing)} (see `{command_line('--help', 'image')}`)")
        select_profile(ROOT, {PLATFORM.name: profile}, "--profile")  # one that exists: its locks' platform
        path = write_image(ROOT / "envs", name, profile, Path(freeze), python, source, cuda or None)
        recipes = " ".join(map(shlex.quote, sorted(known_recipes(ROOT, None))))
        relock = command_line("lock", "--recipe")
        _print(f"warmstart: wrote {path}; now make its locks: `for r in {recipes}; do {relock} \"$r\" "
               f"--image {shlex.quote(name)}; done`, then `{command_line('lock', '--check')}`")

    _exit(run_plain(run))


@command(help={"drive": DRIVE_HELP, "json": JSON_HELP})
def recipes(c, drive=None, json=False):
    """List the known recipes: the project's and those in the Drive recipe folder."""
    from .locktext import recipe_dirs
    from .recipe import defined_twice, load_recipe, recipe_files

    def show(found: dict[str, Any], say: Callable[[str], None]) -> None:
        broken = []  # one recipe that cannot be read (a teammate's, on Drive) hides none of the others
        listed = found["recipes"] = []
        found["warnings"] = warnings = []
        profile = select_profile(ROOT)
        drive_root = _drive(drive, profile)
        if drive_root / RECIPES in recipe_dirs(ROOT, drive_root) and not drive_root.is_dir():
            try:  # as bootstrap says it (Drive not mounted, not there), where it would look for the user's own
                require_drive(drive_root, profile, recipe=None)
            except WarmstartError as exc:
                warnings.append(f"{exc}; the recipes in its {RECIPES} folder are not listed")
                _print(f"warmstart: warning: {shown(warnings[-1])}", file=sys.stderr)
        for name, paths in sorted(recipe_files(ROOT, drive_root).items()):
            if len(paths) > 1:
                broken.append(str(defined_twice(name, paths)))
                for path in paths:
                    say(f"{name:<16} defined twice (see below)  ({path})")
                    listed.append(_unread(name, path, broken[-1]))
                continue
            try:
                loaded = load_recipe(str(path := paths[0]), ROOT)
            except BadInput as exc:
                broken.append(str(exc))
                say(f"{name:<16} cannot be read (see below)  ({path})")
                listed.append(_unread(name, path, str(exc)))
                continue
            gpu = loaded.gpu
            needs = "GPU" + "".join(f" {v}" for v in (
                f"{gpu.min_memory_gib} GiB" if gpu.min_memory_gib else "",
                f"sm {gpu.min_compute_capability}" if gpu.min_compute_capability else "",
                f"CUDA {gpu.min_cuda}" if gpu.min_cuda else "") if v) if gpu.required else "no GPU needed"
            say(f"{name:<16} Python {loaded.python or 'any'}; {needs}")
            say(f"{'':<16} {loaded.description}  ({path})")
            listed.append({"name": name, "path": str(path), "error": None, "description": loaded.description,
                           "python": _text(loaded.python),
                           "gpu": {"required": gpu.required, "min_memory_gib": gpu.min_memory_gib,
                                   "min_compute_capability": _text(gpu.min_compute_capability),
                                   "min_cuda": _text(gpu.min_cuda)}})
        if broken:
            raise BadInput("; ".join(broken))

    _listing(show, json)


@command(help={"drive": DRIVE_HELP, "verify": "hash every cached file; set damaged ones aside (exit 1)",
               "prune": "remove what no current lock here names and no run has used for --older-than days",
               "older-than": "days without use before --prune removes a file (default 30)",
               "dry-run": "with --prune: only list",
               "cache": "show, verify or prune this team cache instead of Drive's (default: WARMSTART_CACHE)",
               "json": JSON_HELP})
def cache(c, drive=None, verify=False, prune=False, dry_run=False, older_than=None, cache=None, json=False):
    """Show the Drive cache (or the team cache) per recipe; check it (--verify) or prune it (--prune [--dry-run])."""
    from . import maintenance
    from .store import DriveStore
    from .team import open_team

    def run(found: dict[str, Any], say: Callable[[str], None]) -> None:
        # bad input before any output
        if not prune and (given := [flag for flag, value in (("--dry-run", dry_run), ("--older-than", older_than))
                                    if value not in (False, None)]):
            raise BadInput(f"{' and '.join(given)} go{'es' if len(given) == 1 else ''} only with --prune: add "
                           "--prune to prune the cache (with --dry-run, to list what it would remove)")
        days = _days(older_than) if prune and older_than is not None else maintenance.RETENTION_DAYS
        drive_root = _drive(drive)
        team = team_location(cache)
        if not team and not drive_root.is_dir():
            raise PreconditionUnmet(f"Drive root {drive_root} does not exist: no cache to show; pass --drive "
                                    "with the folder bootstrap used (or mount Drive)")
        store = (team and open_team(team, drive=drive_root, read_only=False)) or DriveStore(drive_root)
        if isinstance(store, DriveStore):  # as bootstrap refuses it
            store.require_own_folders()
        _print(f"warmstart: the cache at {store}", file=sys.stderr)
        found["cache"] = str(store)
        # a teammate's broken recipe in the Drive's folder hides nothing of the cache, but what it
        # names cannot be told: nothing is pruned while it cannot be read
        unreadable: list[str] = []
        entries = maintenance.inventory(store, ROOT, drive_root, unreadable)
        if why := store.unread():
            which = "the team cache" if team else "the Drive cache at"
            raise PreconditionUnmet(f"{which} {store} cannot be listed: {why}")
        _show_cache(entries, found, say)
        for line in unreadable:
            _print(f"warmstart: warning: {line}", file=sys.stderr)
        if verify:
            _verify_cache(store, entries, found, say)
        if unreadable:
            it = "it" if len(unreadable) == 1 else "they"
            raise BadInput(f"{counted(len(unreadable), 'recipe')} above cannot be read, so what {it} "
                           f"name{'s' if it == 'it' else ''} is listed as named by none"
                           + (f"; nothing is pruned until {it} can be read" if prune else ""))
        if prune:
            _prune_cache(store, entries, days, dry_run, found, say)

    _listing(run, json)


def _days(older_than: str) -> float:
    """--older-than: days, 0 or more (0: every file counts as idle; -5 would too, unsaid)."""
    try:
        days = float(older_than)
    except ValueError:
        days = math.nan
    if not (math.isfinite(days) and days >= 0):
        raise BadInput(f"--older-than must be a number of days, 0 or more, got {older_than!r}")
    return days


def _show_cache(entries: list[Entry], found: dict[str, Any], say: Callable[[str], None]) -> None:
    """`invoke cache`: what each recipe holds, the files never read, and the locks made on a VM."""
    from .maintenance import FOREIGN, UNNAMED, sizes

    notes = {"not a file": "is not a regular file: never read",
             "unreadable index": "is an unreadable snapshot index: --prune removes it",
             FOREIGN: "is not named as warmstart names its files there: never read, never removed"}
    for entry in entries:
        if entry.kind in notes:
            _print(f"warmstart: warning: {entry.path} {notes[entry.kind]}", file=sys.stderr)
    per_owner, total = sizes(entries), sum(e.size for e in entries)
    for owner, (size, shared) in per_owner.items():
        say(f"{size / 2**20:10.1f} MiB  {owner}"
            + (f" ({shared / 2**20:.1f} MiB of it shared with other recipes)" if shared else ""))
    say(f"{total / 2**20:10.1f} MiB  in all")
    for entry in entries:
        if entry.kind == "lock":  # resolved on a VM whose runtime no committed lock fits
            owners = ", ".join(sorted(entry.owners)) or "no recipe here"
            say(f"lock made for a runtime: {entry.path.name} ({owners})")
    found.update(bytes=total, unnamed_bytes=per_owner.pop(UNNAMED, (0, 0))[0],
                 recipes={owner: {"bytes": size, "shared_bytes": shared}
                          for owner, (size, shared) in per_owner.items()},
                 files=[{"path": str(e.path), "kind": e.kind, "bytes": e.size, "recipes": sorted(e.owners)}
                        for e in entries])


def _verify_cache(store: Store, entries: list[Entry], found: dict[str, Any], say: Callable[[str], None]) -> None:
    """`invoke cache --verify`: every file hashed, each damaged one set aside (then exit 1)."""
    from .maintenance import verify

    verify(store, entries)
    for entry, listed in zip(entries, found["files"], strict=True):
        listed["verified"] = None if entry.status == "unchecked" else entry.status
        if entry.status != "unchecked":
            say(f"{entry.status:<10} {entry.kind:<8} {entry.path.name}")
    damaged = [e for e in entries if e.status.startswith("damaged")]
    if damaged:
        one = len(damaged) == 1
        raise WarmstartError(f"{counted(len(damaged), 'damaged file')} in {store} {'was' if one else 'were'} set "
                             f"aside; the next online bootstrap fetches {'it' if one else 'them'} again")


def _prune_cache(store: Store, entries: list[Entry], days: float, dry_run: bool, found: dict[str, Any],
                 say: Callable[[str], None]) -> None:
    """`invoke cache --prune [--dry-run]`: what no lock here names and no run used for `days`."""
    from .maintenance import prunable

    when, records = store.last_used()
    if why := store.unread():  # without every record, a file another run used would look idle
        raise PreconditionUnmet(f"the usage records in {store} cannot all be read, so nothing is pruned: {why}")
    doomed = prunable(entries, when, days)
    for entry in doomed:
        say(f"{'would remove' if dry_run else 'remove'} {entry.kind} {entry.path.name}")
    found["prune"] = {"older_than_days": days, "dry_run": dry_run,
                      "prunable": [{"path": str(e.path), "kind": e.kind, "bytes": e.size} for e in doomed],
                      "freed_bytes": 0}
    if not doomed:
        say(f"nothing to prune: every file was used within {days:g} days, or a lock here names it")
    elif not dry_run:
        found["prune"]["freed_bytes"] = freed = store.remove(e.file for e in doomed)
        say(f"freed {freed / 2**20:.1f} MiB")
    if not dry_run:
        kept = {e.file.key for e in entries if e not in doomed}
        store.compact_usage(when, records, kept)


@command(help={"recipe": "recipe name or path", "drive": DRIVE_HELP, "json": JSON_HELP})
def assets(c, recipe=None, drive=None, json=False):
    """List a recipe's assets: in place, cached on Drive, or missing, and what is in the way of one
    (then exit 2, as the bootstrap would)."""
    from .assets import KIND, asset_table
    from .bootstrap import find_recipe
    from .store import DriveStore
    from .tiered import TieredStore

    def show(found: dict[str, Any], say: Callable[[str], None]) -> None:
        profile = select_profile(ROOT)
        drive_root = _drive(drive, profile)
        loaded = find_recipe(required_recipe(recipe), ROOT, drive_root, profile, bootstrapping=False)
        if not drive_root.is_dir():  # as the bootstrap says it: Drive not mounted, not there, a file
            require_drive(drive_root, profile, recipe=None)
        store = DriveStore(drive_root)
        store.require_own_folders((KIND,))  # as bootstrap refuses it: every asset would say "missing"
        rows = asset_table(loaded.assets, TieredStore(store), drive_root / loaded.workdir)
        found.update(recipe=loaded.name, recipe_path=str(loaded.path), assets=[
            {"name": name, "state": state, "destination": str(dest), "in_the_way": in_the_way or None}
            for state, name, dest, in_the_way in rows])
        for state, name, dest, in_the_way in rows:
            say(f"{state:<9} {name}  ->  {dest}")
            if in_the_way:
                say(f"          ! {in_the_way}")
        if not rows:
            say(f"{loaded.path} declares no assets")
        # as the bootstrap refuses to run then (exit 2): a script that asks first learns the same
        if blocked := sum(bool(in_the_way) for *_, in_the_way in rows):
            raise BadInput(f"{counted(blocked, 'asset')} above cannot be placed: something of yours is in "
                           f"{'its' if blocked == 1 else 'their'} way (`!` lines); a bootstrap of "
                           f"{loaded.name} stops there until it is moved")

    _listing(show, json)


@command(help={"json": JSON_HELP})
def gpu(c, json=False):
    """Show the NVIDIA GPUs NVML sees; exit 3 when there is none."""
    from .gpu import probe_gpus

    report = probe_gpus()
    code = 0 if report.available else PreconditionUnmet.exit_code
    table = None
    if json:  # its `error` is why there is no usable GPU, the reason for exit 3
        table = jsonlib.dumps({**report.as_json(), "exit_code": code})
    elif report.available:
        table = shown(report.table(), keep_lines=True)
    else:
        _print(f"warmstart: {report.describe()}", file=sys.stderr)
    _exit(code, last=table)


namespace = Collection(bootstrap, status, lock, image, recipes, cache, assets, gpu)
# The `warmstart` console script: the same tasks, without a tasks.py to look for.
program = Program(namespace=namespace, version=__version__, name="warmstart", binary="warmstart")


def _reader_left(exc: BaseException) -> bool:
    """Whether `exc` is invoke's own output (--list, --help) whose reader left (`| head`); then
    nothing more goes to stdout, and the run ends as _exit ends it, OUTPUT_CLOSED."""
    if not output_closed(exc):
        return False
    silence(sys.stdout)
    return True


def main() -> None:
    try:
        try:
            program.run()
        finally:  # written out here, not by the interpreter's flush at exit (see _exit)
            if sys.stdout is not None:
                sys.stdout.flush()
    except BrokenPipeError as exc:
        if not _reader_left(exc):
            raise
        sys.exit(OUTPUT_CLOSED)


def quiet_when_the_reader_leaves() -> None:
    """For `invoke` in a checkout (tasks.py), where invoke's script runs the program, not main:
    `invoke --list | head` ends as `warmstart --list | head` does, not with invoke's traceback
    (unbuffered output meets the closed pipe in invoke's print) or the interpreter's ignored
    BrokenPipeError at exit (buffered output meets it in the last flush, exit 120). Each is the
    last word on its exception, so it ends the process itself: there is nothing left to do."""
    earlier = sys.excepthook

    def hook(kind: type[BaseException], exc: BaseException, trace: Any) -> None:
        if _reader_left(exc):
            os._exit(OUTPUT_CLOSED)  # sys.exit raised in a hook is an error of its own
        earlier(kind, exc, trace)

    def flush() -> None:  # before the interpreter's own flush (a task's output is flushed by _exit)
        try:
            if sys.stdout is not None:
                sys.stdout.flush()
        except BrokenPipeError as exc:
            hook(type(exc), exc, exc.__traceback__)

    sys.excepthook = hook
    atexit.register(flush)
