"""Every setting of a run, in one place: bootstrap's options, declared once, and the WARMSTART_*
environment variables, read here and nowhere else.

The invoke tasks (and so the `warmstart` console script and warmstart.sh, which runs the task),
`%warmstart` and `warmstart.colab.bootstrap` all build `Options` from this declaration by name;
`resolve` then settles, once per run, what the flags leave open against the environment and
the platform profile. Standard library only: warmstart.sh reads it before any dependency is there.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import sys
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from .background import child_within
from .disks import real, remount
from .errors import BadInput, PreconditionUnmet, redact
from .layout import LAYOUT

INSTALLERS = ("auto", "pip", "uv")  # --installer: auto is uv when it is installed, else pip


@dataclass(frozen=True)
class Variable:
    """A WARMSTART_* environment variable: its name and what it does (README lists them)."""

    name: str
    help: str

    def get(self, environ: Mapping[str, str] = os.environ) -> str | None:
        return environ.get(self.name) or None

    def on(self, environ: Mapping[str, str] = os.environ) -> bool:
        """A switch: 1 (true, yes, on) turns it on; unset, empty or 0 (false, no, off) leaves it
        off; anything else is bad input, not silently off (WARMSTART_WAIT=ture)."""
        value = environ.get(self.name, "")
        word = value.strip().lower()
        if word in ("1", "true", "yes", "on"):
            return True
        if word in ("", "0", "false", "no", "off"):
            return False
        raise BadInput(f"{self.name} must be 1 (on) or 0 (off), got {value!r}")


DRIVE = Variable("WARMSTART_DRIVE", "the Drive root, as --drive")
PYTHON = Variable("WARMSTART_PYTHON", "the interpreter that receives the packages, as --python "
                                      "(warmstart's launcher sets it to the notebook's)")
WAIT = Variable("WARMSTART_WAIT", "1: as --wait")
CACHE = Variable("WARMSTART_CACHE", "the team cache, as --cache")
CACHE_READ_ONLY = Variable("WARMSTART_CACHE_READ_ONLY", "1: as --cache-read-only")
RECIPES_FOLDER = Variable("WARMSTART_RECIPES", "a folder of your own recipes (default: the Drive root's "
                                               "recipe folder)")
LOCK_TIMEOUT = Variable("WARMSTART_LOCK_TIMEOUT", "seconds to wait for another run on the same environment, "
                                                  "for another warmstart.sh restoring the tools, or for the last "
                                                  "run's Drive writes before this run changes the environment "
                                                  "(default 600)")
PLATFORM = Variable("WARMSTART_PLATFORM", "the platform profile (envs/NAME.toml) instead of the detected one")
MOUNT_POINT = Variable("WARMSTART_MOUNT_POINT", "where Drive is mounted, when not at the platform's place")
ALLOW_HTTP = Variable("WARMSTART_ALLOW_HTTP", "1: allow a plain-http package index")
ASSET_MIRROR = Variable("WARMSTART_ASSET_MIRROR", "a URL whose files stand in for the recipes' asset URLs "
                                                  "(same file names, same sha256)")
WORKER_TEAM = Variable("WARMSTART_WORKER_TEAM", "internal: the team cache's URL, handed to the Drive worker "
                                                "in its environment only (never on disk)")
TEAM_TIMEOUT = Variable("WARMSTART_TEAM_TIMEOUT", "seconds any call to the team cache may take before the "
                                                "run goes on without it (default 20)")
DRIVE_TIMEOUT = Variable("WARMSTART_DRIVE_TIMEOUT", "seconds Drive may take to answer the run's first look at it "
                                                  "(else exit 3) or one read (else the run reads nothing more "
                                                  "from it) and a write of its own that takes nothing more (else "
                                                  "Drive is down for the run); "
                                                  "the Drive worker may go twice as long writing nothing (else "
                                                  "it leaves its job to the next run; default 60)")
HANDED_READ = Variable("WARMSTART_HANDED_READ", "internal: the snapshot's read warmstart.sh began, handed to "
                                                "the bootstrap it starts (two pipes, by file descriptor)")
HANDED_INDEX = Variable("WARMSTART_HANDED_INDEX", "internal: uv from the index that warmstart.sh began, handed to "
                                                  "the bootstrap it starts (two pipes, by file descriptor)")
COMPILE_LATER = Variable("WARMSTART_COMPILE_LATER", "internal: set by warmstart.sh for its own process: on a "
                                                    "VM's first import warmstart compiles what it imports, the "
                                                    "rest when asked (read in warmstart/__init__.py)")
LAUNCHER = Variable("WARMSTART_LAUNCHER", "internal: how warmstart.sh's `invoke` launcher was run, set by it "
                                          "(and by warmstart.sh for the bootstrap it starts): the commands a run "
                                          "prints begin with it")
FAULT = Variable("WARMSTART_FAULT", "tests only: kill the run at this named point (NAME:term: send it SIGTERM there)")

VARIABLES = (DRIVE, PYTHON, WAIT, CACHE, CACHE_READ_ONLY, RECIPES_FOLDER, LOCK_TIMEOUT, PLATFORM, MOUNT_POINT,
             ALLOW_HTTP, ASSET_MIRROR, TEAM_TIMEOUT, DRIVE_TIMEOUT, WORKER_TEAM, HANDED_READ,
             HANDED_INDEX, COMPILE_LATER, LAUNCHER, FAULT)


def _opt(help: str, default: Any = None) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Options:
    """bootstrap's options as the user gave them (None: not given; `resolve` fills those in)."""

    recipe: str = field(metadata={"help": "recipe name (recipes/NAME.toml, or the Drive recipe folder) "
                                          "or a .toml path"})
    drive: str | None = _opt("Drive root (default: WARMSTART_DRIVE, else the platform profile's folder)")
    python: str | None = _opt("interpreter whose environment receives the packages: a path or a command "
                              "on PATH (default: WARMSTART_PYTHON, else this one)")
    offline: bool = _opt("never contact a package index; install from the Drive cache only", False)
    allow_no_gpu: bool = _opt("go on with a warning when the recipe needs a GPU and there is none", False)
    allow_unfit_gpu: bool = _opt("go on with a warning when the GPU is below the recipe's limits", False)
    dry_run: bool = _opt("run the checks that change nothing and print the plan", False)
    installer: str = _opt("pip or uv (default: uv when it is installed, else pip)", "auto")
    packages_only: bool = _opt("install the lock only; leave the recipe's assets and checks alone", False)
    wait: bool = _opt("write the Drive cache and the snapshot before returning, not in the background "
                      "(WARMSTART_WAIT=1 does the same)", False)
    cache: str | None = _opt("the team cache behind Drive: s3://bucket/prefix, gs://bucket/prefix, another "
                             "fsspec URL, or a shared folder (default: WARMSTART_CACHE)")
    cache_read_only: bool = _opt("read the team cache, never write it (WARMSTART_CACHE_READ_ONLY=1 does the same)",
                                 False)
    keep_runtime: bool = _opt("refuse, rather than replace, any version of a distribution the environment "
                              "already has (a runtime's own packages stay exactly as they are)", False)
    # Set by the in-kernel API, not a flag: the distributions whose modules the running kernel has
    # imported. A `!invoke` subprocess cannot know them and uses the platform's preloaded list.
    kernel_imported: Container[str] | None = None

    def __post_init__(self) -> None:
        required_recipe(self.recipe)
        if self.installer not in INSTALLERS:  # said before any step runs, as every bad flag is
            raise BadInput(f"--installer must be {', '.join(INSTALLERS[:-1])} or {INSTALLERS[-1]}, "
                           f"got {self.installer!r}")

    @classmethod
    def flags(cls) -> dict[str, str]:
        """`--flag-name` -> its help, for every option a user can pass."""
        return {f.name.replace("_", "-"): f.metadata["help"] for f in _flag_fields()}


# The options `status` takes: those that say which environment and which Drive it looks at.
STATUS_OPTIONS = ("recipe", "drive", "python", "cache", "packages_only")


def _flag_fields(names: tuple[str, ...] = ()) -> list[Any]:
    return [f for f in fields(Options) if "help" in f.metadata and (not names or f.name in names)]


def required_recipe(recipe: str | None) -> str:
    if not recipe:
        from .invocation import command_line  # (it reads this module's LAUNCHER)

        raise BadInput(f"--recipe NAME is needed (see `{command_line('recipes')}` for the names)")
    return recipe


def empty_flag(flag: str) -> str:
    """What is wrong with `flag` given as "": read as left out, --python "" would have installed
    into warmstart's own interpreter."""
    return f"{flag} is empty (an unset variable in the command?): give its value, or leave {flag} out"


def given(option: str | None, flag: str) -> str | None:
    """The value of `flag` as given (None: left out); BadInput when it is empty."""
    if option == "":
        raise BadInput(empty_flag(flag))
    return option


def _given(flag: str) -> Callable[[str], str]:
    """An argparse type: the value as given, unless it is empty."""
    def check(value: str) -> str:
        if not value:
            raise argparse.ArgumentTypeError(empty_flag(flag))
        return value
    return check


def task_signature(*names: str, **extra: Any) -> inspect.Signature:
    """An invoke task's signature: the context, then the options `names` (all when none are
    named) with their declared defaults, then `extra` (task-only flags and their defaults).
    invoke reads flags from the signature, so the task body takes them as **flags."""
    param = inspect.Parameter
    params = [param("c", param.POSITIONAL_OR_KEYWORD)]
    for f in _flag_fields(names):
        default = None if f.default is MISSING else f.default  # --recipe: missing is said in one line
        params.append(param(f.name, param.KEYWORD_ONLY, default=default))
    params += [param(name, param.KEYWORD_ONLY, default=value) for name, value in extra.items()]
    return inspect.Signature(params)


def add_arguments(parser: argparse.ArgumentParser, names: tuple[str, ...] = (), skip: tuple[str, ...] = ()) -> None:
    """Options' flags `names` (all when none are named) on an argparse parser (the `%warmstart`
    magic), less those in `skip`."""
    for f in _flag_fields(names):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            parser.add_argument(flag, action="store_true", help=f.metadata["help"])
        elif f.name == "installer":
            parser.add_argument(flag, choices=INSTALLERS, default="auto", help=f.metadata["help"])
        else:
            parser.add_argument(flag, required=f.name == "recipe", type=_given(flag), help=f.metadata["help"])


def parse_command_line(args: list[str], prog: str = "warmstart.sh") -> argparse.Namespace:
    """warmstart.sh's command line, RECIPE [bootstrap options], parsed against the declaration
    (before warmstart's own dependencies are there: argparse is standard library). A flag that
    is not one of bootstrap's is exit 2 here, before anything is set up."""
    parser = argparse.ArgumentParser(prog=prog, usage=f"{prog} RECIPE [bootstrap options]")  # the recipe first
    parser.add_argument("recipe", help=_flag_fields(("recipe",))[0].metadata["help"])
    add_arguments(parser, skip=("recipe",))
    parser.add_argument("--json", action="store_true", help="print the final report as one JSON object on stdout")
    return parser.parse_args(args)


class Platform(Protocol):
    """What resolving needs of a platform profile (warmstart.profiles.Profile)."""

    def default_drive(self, environ: Mapping[str, str] = ...) -> Path: ...


def user_path(value: str, given_as: str) -> Path:
    """A folder or file the user named (`given_as`: the flag or variable), with a leading `~` or
    `~user` made that home folder; BadInput when there is no such user here (pathlib raises a
    RuntimeError, which would end the run as a bug)."""
    try:
        return Path(value).expanduser()
    except RuntimeError:
        raise BadInput(f"{given_as} {value!r} begins with the home folder of a user this machine does not "
                       "have; give the full path") from None


def drive_root(option: str | None, platform: Platform, environ: Mapping[str, str] = os.environ) -> Path:
    """The Drive root, for every entry point: --drive, else WARMSTART_DRIVE, else the platform's
    folder (on Colab the mounted MyDrive, wherever the checkout lies), once it has answered the
    run's first look at it."""
    chosen = given(option, "--drive") or DRIVE.get(environ)
    given_as = "--drive" if option else DRIVE.name
    if chosen and "://" in chosen:  # as --recipe takes it; said by its scheme alone: the rest may hold credentials
        raise BadInput(f"{given_as} {chosen.partition('://')[0]}://... is a URL, and Drive is a folder (on Colab "
                       "the mounted Drive, elsewhere any local folder): give its path; a store the team shares "
                       "goes to --cache")
    named = user_path(chosen, given_as) if chosen else platform.default_drive(environ)
    answers(named, drive_timeout(environ))
    return real(named) if chosen else named


def looked_in_time(paths: Sequence[Path], seconds: float) -> bool:
    """Whether a stat of each of `paths` returns within `seconds`. On a FUSE or network mount that
    stopped answering a stat never returns, and a process waiting on one cannot even be killed
    until the mount answers or goes: so the look is a child's (coreutils stat), left waiting when
    it takes too long. True where there is no stat to run: the run's own looks are bounded as
    reads (store.py)."""
    try:
        child_within(seconds, ["stat", "-L", "--", *map(str, paths)])
    except TimeoutError:
        return False
    except OSError:
        pass
    return True


def answers(drive: Path, seconds: float) -> None:
    """PreconditionUnmet unless a stat of `drive` and of its cache folders returns within
    `seconds` (looked_in_time): the run ends with the way out instead of hanging unexplained. The
    folders below count: the kernel may answer for the root from what it has cached, while every
    name below it goes to the mount (missing ones too)."""
    if not looked_in_time((drive, drive / LAYOUT.parent, drive / LAYOUT), seconds):
        raise PreconditionUnmet(f"Drive does not answer: a look at {drive} waited {seconds:g} s; on Colab, "
                                f"{remount(drive)} (or set {DRIVE_TIMEOUT.name} to wait longer)")


def target_python(option: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """The interpreter that receives the packages: --python, else WARMSTART_PYTHON, else this one."""
    return given(option, "--python") or PYTHON.get(environ) or sys.executable


# The object stores warmstart has a backend for (warmstart.team), by protocol: the extra that
# installs it. Each URL begins with a bucket: without one, the store's first folder (v1) would be
# taken for it.
OBJECT_STORES = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}
# What --cache may name, said where it names something else.
STORE_SHAPES = "give a folder or a shared store (s3://BUCKET/PREFIX, gs://BUCKET/PREFIX)"
# Where an object store's credentials come from: its backend's own chain.
_CREDENTIALS = {"s3": "in AWS's variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or a profile in ~/.aws",
                "gcs": "as Google application default credentials (on Colab: "
                       "google.colab.auth.authenticate_user())"}
# fsspec URLs that take no cache, and why.
_WEB = "is a web server, which a cache cannot be kept on (it lists no sizes and takes no writes)"
_NO_CACHE_THERE = {"memory": "is held in one process's memory and gone when it ends", "http": _WEB, "https": _WEB}


def team_location(option: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The team cache: --cache, else WARMSTART_CACHE; None for none. BadInput for an object
    store's URL that names no bucket (`s3://`, `s3:///team`), and for fsspec's in-memory store,
    which lives in one process (the Drive worker's writes to it would be lost as it ends), and for
    a web server's (fsspec's http://), which lists a folder as the links of its page, without
    sizes, and takes no write."""
    location = given(option, "--cache") or CACHE.get(environ)
    scheme, _, rest = (location or "").partition("://")
    given_as = "--cache" if option else CACHE.name
    host, slash, path = rest.partition("/")
    userinfo, _, bucket = host.rpartition("@")
    if scheme in OBJECT_STORES and not bucket:
        raise BadInput(f"{given_as} {scheme}://... names no bucket: give it as {scheme}://BUCKET/PREFIX")
    if scheme in OBJECT_STORES and userinfo:  # s3fs and gcsfs would take it for the bucket's name
        raise BadInput(f"{given_as} {scheme}://***@{bucket}{slash}{path}: an object store's URL takes no "
                       f"credentials; give it as {scheme}://{bucket}{slash}{path}, and the credentials "
                       f"{_CREDENTIALS[OBJECT_STORES[scheme]]}")
    if scheme in _NO_CACHE_THERE:
        raise BadInput(f"{given_as} {scheme}://... {_NO_CACHE_THERE[scheme]}: {STORE_SHAPES}")
    if location and (not rest or scheme == "file"):
        # A folder, by its full path: the Drive worker works in / (a relative one named nothing
        # there, and every Drive write of the run stopped with it). Its links are not resolved
        # here: a look at a network mount that stopped answering would never return (team.py's is bounded).
        return os.path.abspath(user_path(location.removeprefix("file://"), given_as))
    return location


def team_as_given(cache: str | None) -> str | None:
    """The team cache (--cache, as team_location gives it) for a command line a run prints; None
    where its URL holds credentials, which are never printed (the line would name another
    store). WARMSTART_CACHE reaches a pasted line as it reached the run."""
    return cache if cache and redact(cache) == cache else None


def lock_timeout(environ: Mapping[str, str] = os.environ) -> float:
    """How long a run waits for another one holding its target (or the tools)."""
    return _seconds(LOCK_TIMEOUT, 600.0, environ)


def team_timeout(environ: Mapping[str, str] = os.environ) -> float:
    """However the team store's backend retries, no call to it may wait longer than this for an
    answer; the first that does ends the store's part in the run (one warning)."""
    return _seconds(TEAM_TIMEOUT, 20.0, environ)


def drive_timeout(environ: Mapping[str, str] = os.environ) -> float:
    """No read from Drive may wait longer than this for its data: a FUSE read from a Drive that
    stopped answering never returns. The first that does ends Drive's part in the run. Drive
    fetches a file it has not cached before its first byte, so this is far above what a read
    takes on a slow day. The Drive worker gives up once it wrote nothing for twice as long."""
    return _seconds(DRIVE_TIMEOUT, 60.0, environ)


def _seconds(variable: Variable, default: float, environ: Mapping[str, str]) -> float:
    raw = variable.get(environ)
    try:
        seconds = float(raw) if raw else default
    except ValueError:
        raise BadInput(f"{variable.name} must be a number of seconds, got {raw!r}") from None
    if not 0 < seconds < math.inf:
        raise BadInput(f"{variable.name} must be a number of seconds above 0, got {raw!r}")
    return seconds


@dataclass(frozen=True)
class Settings:
    """A run's options with everything they leave open settled: what the rest of warmstart reads."""

    options: Options  # as given: what a printed command repeats
    drive: Path
    python: str
    wait: bool
    team: str | None  # the team cache's location
    team_read_only: bool
    lock_timeout: float


def resolve(options: Options, platform: Platform, environ: Mapping[str, str] = os.environ) -> Settings:
    """The one place a run's options meet the environment and the platform."""
    team = team_location(options.cache, environ)
    if options.cache_read_only and not team:  # the variable alone may be a team's default; the flag is meant
        raise BadInput(f"--cache-read-only reads a team cache, and this run has none: give it with --cache URL "
                       f"(or {CACHE.name}), or leave --cache-read-only out")
    return Settings(
        options=options,
        drive=drive_root(options.drive, platform, environ),
        python=target_python(options.python, environ),
        wait=options.wait or WAIT.on(environ),
        team=team,
        team_read_only=options.cache_read_only or CACHE_READ_ONLY.on(environ),
        lock_timeout=lock_timeout(environ),
    )
