"""warmstart's command line: thin invoke tasks over the `warmstart` package.

    invoke bootstrap --recipe hyperlpr [--drive DIR] [--python PATH] [--offline]
                     [--allow-no-gpu] [--allow-unfit-gpu] [--dry-run] [--json]
    invoke lock --recipe hyperlpr [--upgrade]
    invoke gpu [--json]
    invoke assets --recipe hyperlpr [--drive DIR]
"""

from __future__ import annotations

import os
import sys
from json import dumps
from pathlib import Path

from invoke import Exit, task

from warmstart import bootstrap as bootstrapping
from warmstart import lock as locking
from warmstart import target
from warmstart.assets import asset_table
from warmstart.cli import run_plain, run_reported
from warmstart.errors import PreconditionUnmet
from warmstart.gpu import probe_gpus
from warmstart.profiles import resolve_drive, select_profile
from warmstart.recipe import load_recipe

ROOT = Path(__file__).resolve().parent


def _exit(code: int) -> None:
    if code:
        raise Exit(code=code)


@task(
    help={
        "recipe": "recipe name (recipes/NAME.toml) or path to a recipe .toml",
        "drive": "Drive root (default: WARMSTART_DRIVE, else the platform profile's folder)",
        "python": "interpreter whose environment receives the packages (default: this one)",
        "offline": "never contact a package index; install from the Drive cache only",
        "allow-no-gpu": "go on with a warning when the recipe needs a GPU and there is none",
        "allow-unfit-gpu": "go on with a warning when the GPU is below the recipe's limits",
        "dry-run": "run the checks that change nothing and print the plan",
        "json": "print the final report as one JSON object on stdout",
    }
)
def bootstrap(c, recipe, drive=None, python=None, offline=False, allow_no_gpu=False,
              allow_unfit_gpu=False, dry_run=False, json=False):
    """Install a recipe's locked environment, restoring wheels from the Drive cache."""
    options = bootstrapping.Options(recipe, drive, python, offline, allow_no_gpu,
                                    allow_unfit_gpu, dry_run)
    _exit(run_reported(lambda report: bootstrapping.bootstrap(options, ROOT, report),
                       recipe, as_json=json).exit_code)


@task(help={"recipe": "recipe name or path", "drive": "Drive root (as for bootstrap)"})
def assets(c, recipe, drive=None):
    """List a recipe's assets: in place, cached on Drive, or missing."""

    def show() -> None:
        loaded = load_recipe(recipe, ROOT)
        drive_root = resolve_drive(drive, select_profile(ROOT), os.environ)
        rows = asset_table(loaded.assets, drive_root, drive_root / loaded.workdir)
        for state, name, dest in rows:
            print(f"{state:<9} {name}  ->  {dest}")
        if not rows:
            print(f"{loaded.path} declares no assets")

    _exit(run_plain(show))


@task(help={"json": "print one JSON object instead of a table"})
def gpu(c, json=False):
    """Show the NVIDIA GPUs NVML sees; exit 3 when there is none."""
    report = probe_gpus()
    if json:
        print(dumps(report.as_json()))
    elif report.available:
        print(report.table())
    else:
        print(f"warmstart: {report.describe()}", file=sys.stderr)
    _exit(0 if report.available else PreconditionUnmet.exit_code)


@task(help={"recipe": "recipe name or path", "upgrade": "re-resolve every pin to the newest version"})
def lock(c, recipe, upgrade=False):
    """Compile the recipe's requirements into a hashed lock for this Python with pip-tools."""

    def compile_it() -> None:
        loaded = load_recipe(recipe, ROOT)
        here = target.probe(None)
        path = locking.compile_lock(loaded, here.tag, target.platform_tag(), upgrade=upgrade)
        print(f"warmstart: wrote {path} ({len(locking.parse_lock(path).pins)} pins)")

    _exit(run_plain(compile_it))
