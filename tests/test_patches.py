"""Recipe patches on real wheels built here, installed by the real installers into real
virtualenvs: applied and recorded, a no-op that stays one, undone when the recipe drops them,
carried by the snapshot into a wiped VM offline, refused (exit 2, nothing changed) where the
files are not the ones RECORD names or a diff reaches outside the distribution, finished after a
run killed halfway, and removed whole by `pip uninstall`."""

from __future__ import annotations

import csv
import difflib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import bootstrap, cli_env, make_venv, needs_netns, run_cli

from warmstart.patches import MARKER
from warmstart.target import record_hash

ORIGINAL = "__version__ = '1.0'\n\ndef main():\n    print('alpha', __version__)\n"  # conftest.build_wheel
PATCHED = ORIGINAL.replace("print('alpha',", "print('alpha, patched',")


def diff(path: str, old: str, new: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), f"a/{path}", f"b/{path}"))


def with_patch(recipe: Path, text: str, distribution: str = "alpha") -> Path:
    """The demo recipe with one [[patches]] entry whose diff holds `text`."""
    (recipe.parent / "patches").mkdir(exist_ok=True)
    (recipe.parent / "patches" / "alpha.diff").write_text(text)
    recipe.write_text(recipe.read_text().split("\n[[patches]]")[0]
                      + f'\n[[patches]]\ndistribution = "{distribution}"\ndiff = "recipes/patches/alpha.diff"\n')
    return recipe


def without_patch(recipe: Path) -> Path:
    recipe.write_text(recipe.read_text().split("\n[[patches]]")[0])
    return recipe


def site(python: Path) -> Path:
    return next(python.parent.parent.glob("lib/python*/site-packages"))


def record(python: Path) -> dict[str, list[str]]:
    with open(site(python) / "alpha-1.0.dist-info" / "RECORD", newline="") as fh:
        return {row[0]: row[1:] for row in csv.reader(fh) if row}


def module(python: Path) -> Path:
    return site(python) / "alpha" / "__init__.py"


def status(recipe: Path, drive: Path, python: Path, env) -> dict:
    done = run_cli("status", "--recipe", str(recipe), "--drive", str(drive), "--python", str(python), "--json",
                   env=env)
    return done.report | {"exit": done.code}


def test_a_patch_is_applied_recorded_and_a_rerun_is_a_no_op(demo, drive, tmp_path, index):
    env = cli_env(index.url)
    python = make_venv(tmp_path / "venv")
    with_patch(demo, diff("alpha/__init__.py", ORIGINAL, PATCHED))

    first = bootstrap(demo, drive, python, "--packages-only", env=env)  # patches are part of the environment

    assert first.code == 0, first.stderr
    assert module(python).read_text() == PATCHED
    rows = record(python)
    assert rows["alpha/__init__.py"] == [record_hash(PATCHED.encode()), str(len(PATCHED))]
    marker = site(python) / "alpha-1.0.dist-info" / MARKER
    assert rows[f"alpha-1.0.dist-info/{MARKER}"] == [record_hash(marker.read_bytes()), str(marker.stat().st_size)]
    assert first.report["patches"] == [{"distribution": "alpha", "version": "1.0", "state": "applied",
                                        "patches": ["recipes/patches/alpha.diff"], "changed": True}]
    assert "patch alpha 1.0: recipes/patches/alpha.diff: to apply" in first.stderr  # said in the plan
    assert "patches   ok" in first.stderr and "alpha patched" in first.stderr
    ran = subprocess.run([str(python), "-c", "import alpha; alpha.main()"], capture_output=True, text=True)
    assert ran.stdout == "alpha, patched 1.0\n"

    again = bootstrap(demo, drive, python, "--packages-only", env=env)
    assert again.code == 0, again.stderr
    assert again.report["changed"] is False
    assert again.report["patches"] == [{"distribution": "alpha", "version": "1.0", "state": "applied",
                                        "patches": ["recipes/patches/alpha.diff"]}]
    seen = status(demo, drive, python, env)
    assert seen["exit"] == 0 and seen["matches"] and seen["action"] == "no-op"
    assert seen["patches"][0]["state"] == "applied"


def test_dropping_the_patch_restores_the_original_files_and_record(demo, drive, tmp_path, index):
    env = cli_env(index.url)
    python = make_venv(tmp_path / "venv")
    assert bootstrap(demo, drive, python, env=env).code == 0
    untouched = (site(python) / "alpha-1.0.dist-info" / "RECORD").read_bytes()
    assert bootstrap(with_patch(demo, diff("alpha/__init__.py", ORIGINAL, PATCHED)), drive, python,
                     env=env).code == 0
    assert module(python).read_text() == PATCHED

    without_patch(demo)
    seen = status(demo, drive, python, env)
    assert seen["exit"] == 1 and seen["patches"][0]["state"] == "to remove"
    assert seen["action"] == "apply the recipe's patches"
    undone = bootstrap(demo, drive, python, env=env)

    assert undone.code == 0, undone.stderr
    assert undone.report["patches"] == [{"distribution": "alpha", "version": "1.0", "patches": [],
                                         "state": "removed", "changed": True}]
    assert module(python).read_text() == ORIGINAL
    assert (site(python) / "alpha-1.0.dist-info" / "RECORD").read_bytes() == untouched
    assert not (site(python) / "alpha-1.0.dist-info" / MARKER).exists()
    assert bootstrap(demo, drive, python, env=env).report["changed"] is False


@pytest.mark.parametrize("edit", ["a file edited by hand", "a version the diff was not made for"])
def test_files_not_as_record_names_them_are_refused_and_nothing_changes(demo, drive, tmp_path, index, edit):
    env = cli_env(index.url)
    python = make_venv(tmp_path / "venv")
    assert bootstrap(demo, drive, python, env=env).code == 0
    info = site(python) / "alpha-1.0.dist-info"
    if edit == "a file edited by hand":
        module(python).write_text(ORIGINAL + "# mine\n")
        with_patch(demo, diff("alpha/__init__.py", ORIGINAL, PATCHED))
        expected = "differs from its RECORD"
    else:
        other = ORIGINAL.replace("1.0", "0.9")
        with_patch(demo, diff("alpha/__init__.py", other, other.replace("print('alpha',", "print('x',")))
        expected = "does not apply to alpha 1.0"
    before = {p: p.read_bytes() for p in [*info.iterdir(), module(python)]}

    refused = bootstrap(demo, drive, python, env=env)

    assert refused.code == 2, refused.stderr
    error = [line for line in refused.stderr.splitlines() if line.startswith("warmstart: error")]
    assert len(error) == 1 and expected in error[0] and "recipes/patches/alpha.diff" in error[0], refused.stderr
    assert "Traceback" not in refused.stderr
    assert {p: p.read_bytes() for p in [*info.iterdir(), module(python)]} == before


@pytest.mark.parametrize(("path", "where", "expected"), [
    ("beta/__init__.py", "run", "did not install (it is not in its RECORD)"),
    ("../../escape.py", "recipe", "is not a change to an existing file inside the distribution"),
    ("/etc/profile", "recipe", "is not a change to an existing file inside the distribution"),
    ("alpha/new.py", "recipe", "is not a change to an existing file inside the distribution"),
])
def test_a_patch_reaching_outside_its_distribution_is_refused(demo, drive, tmp_path, index, path, where, expected):
    env = cli_env(index.url)
    python = make_venv(tmp_path / "venv")
    assert bootstrap(demo, drive, python, env=env).code == 0
    text = diff(path, ORIGINAL, PATCHED)
    if path == "alpha/new.py":  # a file the diff would create
        text = diff(path, "", PATCHED).replace(f"--- a/{path}", "--- /dev/null")
    with_patch(demo, text)
    files = sorted(p for p in site(python).rglob("*"))

    refused = bootstrap(demo, drive, python, env=env)

    assert refused.code == 2, refused.stderr
    assert expected in refused.stderr and "recipes/patches/alpha.diff" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert sorted(p for p in site(python).rglob("*")) == files
    assert module(python).read_text() == ORIGINAL
    assert where == "run" or "lock " not in refused.stderr, "a bad diff is refused as the recipe is read"


def test_a_run_killed_halfway_through_patching_is_finished_by_the_next(demo, drive, tmp_path, index):
    env = cli_env(index.url)
    python = make_venv(tmp_path / "venv")
    assert bootstrap(demo, drive, python, env=env).code == 0
    with_patch(demo, diff("alpha/__init__.py", ORIGINAL, PATCHED))

    killed = bootstrap(demo, drive, python, env=env, fault="patch")
    assert killed.code == -9
    assert module(python).read_text() == PATCHED  # the file went first, RECORD not yet
    assert record(python)["alpha/__init__.py"][0] != record_hash(PATCHED.encode())

    again = bootstrap(demo, drive, python, env=env)
    assert again.code == 0, again.stderr
    assert record(python)["alpha/__init__.py"] == [record_hash(PATCHED.encode()), str(len(PATCHED))]
    assert bootstrap(demo, drive, python, env=env).report["changed"] is False


@needs_netns
def test_a_wiped_vm_gets_the_patched_files_from_the_snapshot_offline(demo, drive, tmp_path, index):
    env = cli_env(index.url)
    with_patch(demo, diff("alpha/__init__.py", ORIGINAL, PATCHED))
    assert bootstrap(demo, drive, make_venv(tmp_path / "venv"), env=env).code == 0
    shutil.rmtree(tmp_path / "venv")  # the VM is wiped (the same prefix, as on Colab); Drive survives

    wiped = make_venv(tmp_path / "venv")
    restored = bootstrap(demo, drive, wiped, "--offline", env=env, offline_net=True)

    assert restored.code == 0, restored.stderr
    assert restored.report["snapshot"]["used"] is True
    assert module(wiped).read_text() == PATCHED
    # Nothing left to patch: the snapshot held the patched files, their RECORD and the marker.
    assert restored.report["patches"][0]["changed"] is False
    assert "already as the recipe asks" in restored.stderr


def test_pip_uninstall_removes_a_patched_distribution_whole(demo, drive, tmp_path, index):
    env = cli_env(index.url)
    python = make_venv(tmp_path / "venv")
    assert bootstrap(with_patch(demo, diff("alpha/__init__.py", ORIGINAL, PATCHED)), drive, python,
                     env=env).code == 0

    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "uninstall", "--yes", "alpha"],
                          capture_output=True, text=True)

    assert done.returncode == 0, done.stderr
    assert not (site(python) / "alpha").exists() and not (site(python) / "alpha-1.0.dist-info").exists()
    # The next run installs it again, and patches it again.
    assert bootstrap(demo, drive, python, env=env).code == 0
    assert module(python).read_text() == PATCHED
