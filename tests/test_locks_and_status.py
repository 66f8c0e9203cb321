"""Locks per Python (`invoke lock`, `--check`), lock selection, `invoke status`, `invoke recipes`."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import INVOKE, REPO, cli_env, make_venv, run_cli

from warmstart import PROJECT_ROOT
from warmstart.config import tomllib  # the standard library's, or tomli before 3.11
from warmstart.cudalibs import lock_tags
from warmstart.download import Downloader
from warmstart.images import images_of
from warmstart.lock import existing_locks, parse_lock
from warmstart.pipconfig import IndexSettings
from warmstart.recipe import known_recipes, load_recipe
from warmstart.snapshot import OTHERS_READ

SHIPPED = sorted(known_recipes(PROJECT_ROOT, None))
COLAB_PYTHONS = ("3.11", "3.12", "3.13")


@pytest.fixture
def env(index):
    return cli_env(index.url)


def test_lock_check_reports_a_stale_lock_after_an_in_edit(demo, env):
    assert run_cli("lock", "--check", "--recipe", str(demo), env=env).code == 0
    requirements_in = demo.parent.parent / "requirements" / "demo.in"
    requirements_in.write_text(requirements_in.read_text() + "beta<2\n")

    result = run_cli("lock", "--check", "--recipe", str(demo), env=env)

    assert result.code == 1
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert "demo-py3" in result.stderr and "stale (its inputs changed since it was compiled)" in result.stderr
    assert f"run `{INVOKE} lock --recipe {demo} --python-version {minor}`" in result.stderr


def test_lock_check_names_a_lock_for_a_python_the_recipe_no_longer_admits(demo, env):
    """No VM uses it (bootstrap refuses that Python) and no relock mends it: it is to be removed."""
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    demo.write_text(demo.read_text().replace('python = ">=3.8"', f'python = ">{minor}.99"'))

    result = run_cli("lock", "--check", "--recipe", str(demo), env=env)

    assert result.code == 1, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert f"/demo-py{minor.replace('.', '')}-" in line, line
    assert line.endswith(f".txt: for Python {minor}, which the recipe's python (>{minor}.99) does not admit: no VM "
                         "uses it; remove it"), line


def test_refreshing_an_image_from_the_same_freeze_changes_nothing_and_a_new_one_names_each_relock(tmp_path):
    """`invoke image` run again on the identical freeze keeps the image file byte for byte (its
    comments too), so no lock of it goes stale; a changed freeze makes the image's locks stale,
    and `lock --check` names the exact command for each, Colab locks included. In a copy of the
    checkout: `invoke image` writes into envs/."""
    copy = tmp_path / "checkout"
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(".venv", ".git", "*.egg-info", "drive*", ".hyperlpr-env",
                                                              ".device", "__pycache__", ".mypy_cache", ".ruff_cache"))
    env = cli_env(PYTHONPATH=str(copy))  # warmstart imported from the copy: its envs/, its locks

    def invoke(*args: str):
        return subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(copy), *args], env=env,
                              capture_output=True, text=True, cwd=copy, timeout=300)

    image = copy / "envs" / "images" / "colab-2026.07.toml"
    before = image.read_bytes()
    data = tomllib.loads(before.decode())
    freeze = copy / "envs" / "images" / data["freeze"]
    args = ["image", "--name", data["name"], "--freeze", str(freeze), "--python", data["python"],
            "--source", data["source"]]

    same = invoke(*args)
    assert same.returncode == 0, same.stderr
    assert image.read_bytes() == before, "comments and all"
    assert invoke("lock", "--check").returncode == 0

    changed = tmp_path / "freeze.txt"
    changed.write_text(freeze.read_text().replace("\nrequests==", "\nrequests==0.0.1\n#", 1))
    assert invoke(*args[:3], "--freeze", str(changed), *args[5:]).returncode == 0
    assert image.read_text().startswith(before.decode().split("\nname =")[0]), "the file's comments stay"
    check = invoke("lock", "--check")
    assert check.returncode == 1
    # a line each, then the run's one error line
    *each, last = check.stderr.strip().splitlines()
    stale = copy / "requirements" / "colab-2026.07"
    assert f"warmstart: {stale}/hyperlpr-py312-manylinux_x86_64.txt: stale (its inputs changed since it was " \
           f"compiled): run `{INVOKE} lock --recipe hyperlpr --image colab-2026.07`" in each
    assert f"warmstart: {stale}/warmstart-py312-manylinux_x86_64.txt: stale (its inputs changed since it was " \
           f"compiled): run `{INVOKE} lock --recipe warmstart --image colab-2026.07`" in each
    assert last == f"warmstart: error: {len(each)} locks to make or remove, each named above"
    assert "--image colab-latest`" not in check.stderr and "--image colab-2026.04`" not in check.stderr, \
        "the other images' locks stay fresh"


def test_lock_check_passes_for_the_shipped_recipes():
    result = run_cli("lock", "--check", env=cli_env())
    assert result.code == 0, result.stderr
    assert all(name in result.stdout for name in SHIPPED)


def test_a_lock_for_another_python_is_never_picked(demo, drive, env, tmp_path):
    requirements = demo.parent.parent / "requirements"
    (mine,) = requirements.glob("demo-py3*-*.txt")
    mine.rename(requirements / mine.name.replace(mine.name.split("-")[1], "py399"))

    result = run_cli("bootstrap", "--recipe", str(demo), "--drive", str(drive),
                     "--python", str(make_venv(tmp_path / "v")), env=env)

    assert result.code == 3
    assert "locks exist for: py399 on manylinux" in result.stderr
    # the recipe by its path: it is not one of this checkout's, and the line must work pasted
    assert f"invoke lock --recipe {demo} --python-version 3." in result.stderr


def test_a_lock_names_the_line_that_makes_it_again_for_a_recipe_found_on_drive(demo, drive, env):
    # the user's own recipe in the Drive's recipe folder, found by name with --drive
    shutil.copytree(demo.parent.parent, drive / ".warmstart", dirs_exist_ok=True)
    made = run_cli("lock", "--recipe", "demo", "--drive", str(drive), env=env)
    assert made.code == 0, made.stderr
    (lock,) = (drive / ".warmstart" / "requirements").glob("demo-py3*.txt")
    header = lock.read_text().splitlines()[0]
    named = header.split("`")[1]
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert named == f"invoke lock --recipe {drive}/.warmstart/recipes/demo.toml --python-version {minor}", header
    before = lock.read_text()
    lock.unlink()

    again = run_cli(*shlex.split(named)[1:], env=env)  # as named: no --drive, another working folder

    assert again.code == 0, again.stderr
    assert lock.read_text() == before


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_locks_agree_with_the_recipe(name):
    recipe = load_recipe(name, PROJECT_ROOT)
    locks = existing_locks(recipe)
    bare = {t.python_version for t in locks.values() if t.image is None}
    images = {t.image for t in locks.values() if t.image}
    assert bare == {v for v in COLAB_PYTHONS if v in recipe.python}, "a lock per supported Python"
    assert images == set(images_of("colab", PROJECT_ROOT / "envs")), "a lock per Colab runtime"
    for path in locks:
        names = {p.name for p in parse_lock(path).pins}
        assert not names & set(recipe.exclude), f"{path} holds an excluded package"
        assert all(p.hashes for p in parse_lock(path).pins)


LOCKS = {path: target for n in SHIPPED for path, target in existing_locks(load_recipe(n, PROJECT_ROOT)).items()}


@pytest.mark.registry
@pytest.mark.parametrize("path", [p for p, t in LOCKS.items() if t.python_version != "3.11"],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_cross_python_locks_resolve_against_the_index(path):
    """Every pin of a 3.12 / 3.13 lock has a wheel on PyPI, with a sha256 the lock names, that an
    interpreter of that Python on Colab's glibc accepts: what bootstrap's downloader will pick
    there. The listings are read, not the files (pip would fetch gigabytes to check the hashes)."""
    downloader = Downloader(IndexSettings.from_environ({}))
    pins = parse_lock(path).pins
    jobs, left = downloader.wheel_jobs(pins, lock_tags(LOCKS[path]), Path("unused"))
    assert left == {}, {pin.name: why for pin, why in left.items()}
    assert len(jobs) == len(pins)


# --- status -------------------------------------------------------------------------------

def status(recipe: Path, drive: Path, python: Path, env):
    return run_cli("status", "--recipe", str(recipe), "--drive", str(drive), "--python", str(python),
                   "--json", env=env)


def test_status_on_an_empty_a_matching_and_a_drifted_environment(demo, drive, env, tmp_path, index):
    python = make_venv(tmp_path / "v")

    empty = status(demo, drive, python, env)
    assert empty.code == 1
    assert empty.report["missing"] == ["alpha", "beta", "gpu-build"]
    assert empty.report["action"] == "download 3 wheels, then install"
    assert empty.report["cache"]["wheels"] == 0
    wiped = empty.report["cache"]["snapshot"]  # what a wiped VM restores from: not on Drive yet
    assert wiped["found"] is None and wiped["index"].startswith("demo-py") and wiped["index"].endswith(".json")
    assert list(drive.iterdir()) == [], "status changes nothing"

    assert run_cli("bootstrap", "--recipe", str(demo), "--drive", str(drive), "--python", str(python),
                   env=env).code == 0
    matching = status(demo, drive, python, env)
    assert matching.code == 0
    assert matching.report["matches"] is True and matching.report["action"] == "no-op"
    assert matching.report["cache"]["wheels"] == 3 and matching.report["cache"]["wheel_bytes"] > 0
    assert matching.report["cache"]["snapshot"] == {**wiped, "found": "drive"}  # the run packed it (WARMSTART_WAIT)
    packed = drive / ".warmstart" / "v1" / "snapshots" / wiped["index"]
    assert packed.is_file()
    said = run_cli("status", "--recipe", str(demo), "--drive", str(drive), "--python", str(python), env=env)
    assert f"\nsnapshot  {packed.stem} in {drive}: a wiped VM restores from it\n" in said.stdout
    packed.rename(packed.with_name("elsewhere.json"))
    lost = run_cli("status", "--recipe", str(demo), "--drive", str(drive), "--python", str(python), env=env)
    assert lost.code == 0, "what this VM has still matches"
    assert f"\nsnapshot  none for a wiped VM in {drive} yet: it installs from the wheels, then packs one\n" in lost.stdout
    packed.with_name("elsewhere.json").rename(packed)

    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                    "--index-url", index.url, "beta==1.0", "cpu-only==1.0"], check=True, env=env)
    drifted = status(demo, drive, python, env)
    assert drifted.code == 1
    assert drifted.report["different"] == {"beta": {"installed": "1.0", "locked": "2.0"}}
    assert drifted.report["extra"] == ["cpu-only"] and drifted.report["extra_not_shipped"] is None  # no image
    assert drifted.report["action"] == "install from cached wheels"

    human = run_cli("status", "--recipe", str(demo), "--drive", str(drive), "--python", str(python), env=env)
    assert human.code == 1 and "bootstrap would: install from cached wheels" in human.stdout
    assert "\nextra     cpu-only\n" in human.stdout


def test_status_says_what_the_snapshots_on_drive_were_packed_for_when_none_fits(demo, drive, env, tmp_path):
    """A wiped VM restores only a snapshot packed for its prefix, Python and lock. Where Drive
    holds the recipe's for others only, status names what each was packed for: escaped (an index
    on Drive is anyone's text), one that is not an index passed over, at most OTHERS_READ read."""
    first = make_venv(tmp_path / "first")
    assert run_cli("bootstrap", "--recipe", str(demo), "--drive", str(drive), "--python", str(first),
                   env=env).code == 0
    snapshots = drive / ".warmstart" / "v1" / "snapshots"
    [packed] = snapshots.glob("*.json")
    facts = json.loads(packed.read_text())["facts"]
    assert Path(facts["prefix"]).name == "first"
    first_said = {"index": packed.name, "for": f"prefix {facts['prefix']}"}
    second = make_venv(tmp_path / "second")

    said = status(demo, drive, second, env)
    human = run_cli("status", "--recipe", str(demo), "--drive", str(drive), "--python", str(second), env=env)

    assert said.code == 1 and said.report["cache"]["snapshot"]["found"] is None
    assert said.report["cache"]["snapshot"]["elsewhere"] == [first_said]
    assert (f"\nsnapshot  none for a wiped VM in {drive} yet (the one there is for another target: prefix "
            f"{facts['prefix']}): it installs from the wheels, then packs one\n") in human.stdout, human.stdout

    index = json.loads(packed.read_text())
    others = {  # after the first's by name (demo-py3XX-...), in this order
        "demo-py399-0000000000000000.json": {**facts, "python": "3.99", "soabi": "cpython-399", "prefix": "/x\n\x1b[3m"},
        "demo-py399-1111111111111111.json": {**facts, "prefix": str(Path(facts["prefix"]).with_name("second")),
                                             "lock_body_sha256": "0" * 64, "distributions": "alpha==0"},
        "demo-py399-2222222222222222.json": {**facts, "prefix": "/elsewhere"},
        "demo-other-py399-3333333333333333.json": {**facts, "prefix": "/another-recipes"},
    }
    for name, theirs in others.items():
        (snapshots / name).write_text(json.dumps({**index, "facts": theirs}))
    (snapshots / "demo-py399-3333333333333333.json").write_text("[1, 2]")  # JSON, not an index

    said = status(demo, drive, second, env)
    human = run_cli("status", "--recipe", str(demo), "--drive", str(drive), "--python", str(second), env=env)

    assert OTHERS_READ == 3 and said.report["cache"]["snapshot"]["elsewhere"] == [  # the fourth, /elsewhere, not read
        first_said, {"index": "demo-py399-0000000000000000.json", "for": "Python 3.99, prefix /x\\n\\x1b[3m"},
        {"index": "demo-py399-1111111111111111.json", "for": "another lock"}]
    [line] = [line for line in human.stdout.splitlines() if line.startswith("snapshot ")]
    assert "(those there are for other targets: prefix " in line and "prefix /x\\n\\x1b[3m; another lock)" in line
    assert "\x1b" not in human.stdout

    for name in list(others)[:2]:
        (snapshots / name).unlink()
    said = status(demo, drive, second, env)
    assert said.report["cache"]["snapshot"]["elsewhere"] == [  # the one not an index passed over
        first_said, {"index": "demo-py399-2222222222222222.json", "for": "prefix /elsewhere"}]


# --- recipes ------------------------------------------------------------------------------

def test_recipes_on_drive_are_listed_and_found_by_name(locked_demo, env, tmp_path):
    drive = tmp_path / "drive"
    user = drive / ".warmstart"
    shutil.copytree(locked_demo / "recipes", user / "recipes")
    shutil.copytree(locked_demo / "requirements", user / "requirements")

    listed = run_cli("recipes", "--drive", str(drive), env=env)
    assert listed.code == 0
    assert "demo " in listed.stdout and str(user / "recipes" / "demo.toml") in listed.stdout
    assert all(name in listed.stdout for name in SHIPPED)

    result = run_cli("bootstrap", "--recipe", "demo", "--drive", str(drive),
                     "--python", str(make_venv(tmp_path / "v")), env=env)
    assert result.code == 0, result.stderr


def test_recipes_with_drive_not_mounted_says_the_users_own_are_not_listed(env, tmp_path):
    """On Colab before Drive's cell has run, the user's own recipes (on Drive) are missing from the
    list. Before, the shipped recipes alone, exit 0, nothing said; still exit 0, and a warning."""
    mount = tmp_path / "content" / "drive"
    colab = {**env, "WARMSTART_PLATFORM": "colab", "WARMSTART_MOUNT_POINT": str(mount)}

    listed = run_cli("recipes", env=colab)
    as_json = run_cli("recipes", "--json", env=colab)

    assert listed.code == 0 and all(name in listed.stdout for name in SHIPPED)
    [said] = listed.stderr.strip().splitlines()
    assert said.startswith(f"warmstart: warning: Google Drive is not mounted at {mount}; ") and said.endswith(
        "; the recipes in its .warmstart/recipes folder are not listed"), said
    assert as_json.code == 0 and as_json.report["warnings"] == [said.removeprefix("warmstart: warning: ")]
    assert sorted(r["name"] for r in as_json.report["recipes"]) == sorted(SHIPPED)
    assert not mount.exists(), "nothing written under the mount point"


def test_a_recipe_on_drive_is_locked_by_name_as_it_is_listed(locked_demo, env, tmp_path):
    """`invoke recipes` lists the Drive's recipes, so `invoke lock` finds them by the same name,
    and writes the lock beside the recipe's requirements there."""
    drive = tmp_path / "drive"
    user = drive / ".warmstart"
    shutil.copytree(locked_demo / "recipes", user / "recipes")
    (user / "requirements").mkdir()
    shutil.copy(locked_demo / "requirements" / "demo.in", user / "requirements" / "demo.in")

    locked = run_cli("lock", "--recipe", "demo", "--drive", str(drive), env=env)
    assert locked.code == 0, locked.stderr
    assert existing_locks(load_recipe("demo", REPO, drive))
    checked = run_cli("lock", "--check", "--drive", str(drive), env=env)  # every recipe it knows, the Drive's too
    assert checked.code == 0 and "demo" in checked.stdout, checked.stderr
    (user / "requirements" / "demo.in").write_text("alpha\n")
    stale = run_cli("lock", "--check", "--recipe", "demo", "--drive", str(drive), env=env)
    assert stale.code == 1 and f"--recipe {user / 'recipes' / 'demo.toml'} --python-version" in stale.stderr


def test_a_recipe_that_cannot_be_read_hides_none_of_the_others(locked_demo, env, tmp_path):
    drive = tmp_path / "drive"
    recipes = drive / ".warmstart" / "recipes"
    recipes.mkdir(parents=True)
    (recipes / "broken.toml").write_text('name = "broken"\n[requirements]\nin = "requirements/none.in"\n')

    listed = run_cli("recipes", "--drive", str(drive), env=env)

    assert listed.code == 2
    assert all(name in listed.stdout for name in SHIPPED)
    assert f"broken           cannot be read (see below)  ({recipes / 'broken.toml'})" in listed.stdout
    assert listed.stderr.count("\n") == 1 and str(recipes / "broken.toml") in listed.stderr
    # the same as one JSON object on stdout: each recipe, the unreadable one with its error line
    as_json = run_cli("recipes", "--drive", str(drive), "--json", env=env)
    assert as_json.code == 2 and as_json.stderr == listed.stderr
    assert as_json.report["exit_code"] == 2 and f"warmstart: error: {as_json.report['error']}\n" == listed.stderr
    by_name = {r["name"]: r for r in as_json.report["recipes"]}
    assert sorted(by_name) == sorted([*SHIPPED, "broken"])
    assert by_name["broken"] == {"name": "broken", "path": str(recipes / "broken.toml"), "error": as_json.report["error"],
                                 "description": None, "python": None, "gpu": None}
    assert by_name["hyperlpr"]["error"] is None and by_name["hyperlpr"]["gpu"]["required"] is True
    assert by_name["hyperlpr"]["gpu"]["min_compute_capability"] == "6.0"
    assert by_name["warmstart"]["gpu"] == {"required": False, "min_memory_gib": None,
                                           "min_compute_capability": None, "min_cuda": None}
    assert "requirements.in" in listed.stderr

    # lock --check checks every other recipe's locks, then names the one it could not read (exit 2)
    checked = run_cli("lock", "--check", "--drive", str(drive), env=env)
    assert checked.code == 2, checked.stderr
    assert checked.stderr.strip().splitlines() == [f"warmstart: error: {listed.stderr.strip().split(': error: ')[1]}"]
    stale = tmp_path / "stale"
    shutil.copytree(locked_demo, stale)
    (recipes / "demo.toml").write_text((stale / "recipes" / "demo.toml").read_text())
    shutil.copytree(stale / "requirements", drive / ".warmstart" / "requirements")
    (drive / ".warmstart" / "requirements" / "demo.in").write_text("alpha\n")
    both = run_cli("lock", "--check", "--drive", str(drive), env=env)
    assert both.code == 2, both.stderr
    *each, last = both.stderr.strip().splitlines()
    assert len(each) == 2 and "stale" in each[0] and str(recipes / "broken.toml") in each[1], each
    assert last == "warmstart: error: 1 lock to make or remove and 1 recipe that cannot be read, each named above"

    # invoke cache shows the whole cache, then says it; --prune removes nothing, as what it names cannot be told
    (drive / ".warmstart" / "v1" / "wheels").mkdir(parents=True)
    kept = drive / ".warmstart" / "v1" / "wheels" / "old-1.0-py3-none-any.whl"
    kept.write_bytes(b"a wheel no readable recipe names")
    shown = run_cli("cache", "--drive", str(drive), env=env)
    assert shown.code == 2, shown.stderr
    assert "named by no current lock or recipe" in shown.stdout and "in all" in shown.stdout
    warning, error = shown.stderr.strip().splitlines()[1:]
    assert warning.startswith("warmstart: warning: ") and str(recipes / "broken.toml") in warning
    assert error == "warmstart: error: 1 recipe above cannot be read, so what it names is listed as named by none"
    pruned = run_cli("cache", "--drive", str(drive), "--prune", "--older-than", "0", env=env)
    assert pruned.code == 2 and pruned.stderr.endswith("; nothing is pruned until it can be read\n"), pruned.stderr
    assert kept.exists()


def test_a_recipe_name_in_two_folders_is_an_error_naming_both_for_that_name_alone(locked_demo, tmp_path, env):
    """A teammate's copy of a shipped recipe in the shared Drive folder: that name is ambiguous,
    and said so wherever it is asked for; every other recipe runs, and is listed, as before."""
    drive = tmp_path / "drive"
    mine = drive / ".warmstart" / "recipes"
    shutil.copytree(locked_demo / "recipes", mine)
    shutil.copytree(locked_demo / "requirements", drive / ".warmstart" / "requirements")
    shutil.copy(REPO / "recipes" / "hyperlpr.toml", mine / "hyperlpr.toml")
    twice = f"recipe 'hyperlpr' is defined twice: {REPO / 'recipes' / 'hyperlpr.toml'} and {mine / 'hyperlpr.toml'}"

    listed = run_cli("recipes", "--drive", str(drive), env=env)
    asked = run_cli("status", "--recipe", "hyperlpr", "--drive", str(drive), env=env)
    other = run_cli("bootstrap", "--recipe", "demo", "--drive", str(drive),
                    "--python", str(make_venv(tmp_path / "v")), env=env)

    assert listed.code == 2 and listed.stderr.strip() == f"warmstart: error: {twice}; rename or remove one of them"
    assert listed.stdout.count("hyperlpr         defined twice (see below)") == 2
    assert all(name in listed.stdout for name in ("demo ", "hyperlpr-train ", "warmstart "))
    assert asked.code == 2 and twice in asked.stderr
    assert other.code == 0, other.stderr
