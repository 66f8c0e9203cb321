"""`invoke bootstrap` end to end: real pip, real wheels, a real index on 127.0.0.1, a real
network cut for offline restores. Only Drive itself is stood in for, by a local folder."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    LOCKED,
    NETNS,
    bootstrap,
    build_wheel,
    cli_env,
    dead_url,
    installed,
    launcher_command,
    make_venv,
    needs_netns,
    pyenv_python,
    run_cli,
    system_python,
)

from warmstart.bootstrap import _no_lock
from warmstart.lock import LockTarget, relock_command
from warmstart.recipe import load_recipe


@pytest.fixture
def env(index):
    return cli_env(index.url)


def drop_snapshots(drive: Path) -> None:
    """Leave only the wheel cache, to exercise the wheel path on its own."""
    shutil.rmtree(drive / ".warmstart" / "v1" / "snapshots")


def cached_wheels(drive: Path) -> list[str]:
    return sorted(p.name for p in (drive / ".warmstart" / "v1" / "wheels").iterdir())


def test_cold_install_fills_cache_and_leaves_excluded_out(demo, drive, env, tmp_path):
    python = make_venv(tmp_path / "venv")

    result = bootstrap(demo, drive, python, env=env)

    assert result.code == 0, result.stderr
    report = result.report
    assert report["ok"] is True and report["recipe"] == "demo"
    assert (report["error"], report["exit_code"]) == (None, 0), "there whatever the run ends in"
    assert report["installed"] == LOCKED
    assert report["cache"]["misses"] == 3 and report["cache"]["hits"] == 0
    assert report["cache"]["bytes_written"] > 0
    assert {s["name"] for s in report["steps"]} >= {"gpu", "lock", "download", "install"}
    assert all({"name", "status", "seconds"} <= set(s) for s in report["steps"])
    fetch = next(s for s in report["steps"] if s["name"] == "fetch")
    assert (fetch["status"], fetch["detail"]) == ("skipped", "none of them in the Drive cache yet")
    assert report["total_seconds"] > 0
    have = installed(python)
    assert {k: have[k] for k in LOCKED} == LOCKED
    assert "cpu-only" not in have, "an excluded package was installed"
    assert cached_wheels(drive) == ["alpha-1.0-py3-none-any.whl", "beta-2.0-py3-none-any.whl",
                                    "gpu_build-1.0-py3-none-any.whl"]
    assert (drive / "Demo").is_dir()


def test_an_excluded_package_the_platform_had_sharing_files_is_named_with_a_command_that_works(
        demo, drive, env, tmp_path):
    # The lent GPU machine's image ships the CPU onnxruntime; onnxruntime-gpu installs the same
    # onnxruntime/ files over it. Here the platform's cpu-only carries gpu-build's module file.
    python = make_venv(tmp_path / "venv")
    (tmp_path / "platform").mkdir()
    shared = build_wheel(tmp_path / "platform", "cpu-only", "1.0", extra={"gpu_build/__init__.py": b"cpu = True\n"})
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", str(shared)], check=True)

    result = bootstrap(demo, drive, python, env=env)

    assert result.code == 0, result.stderr
    warning, = [w for w in result.report["warnings"] if "cpu-only" in w]
    assert warning.startswith("cpu-only 1.0, which the recipe excludes, is installed here too and shares 1 file "
                              "(e.g. lib/python"), warning
    assert "/site-packages/gpu_build/__init__.py) with gpu-build 1.0, which this run installed over them" in warning
    assert f"warning: {warning}" in result.stderr
    assert installed(python)["cpu-only"] == "1.0", "warmstart removes nothing it did not install"
    status = run_cli("status", "--recipe", str(demo), "--drive", str(drive), "--python", str(python), env=env)
    assert ("shared    cpu-only 1.0, which the recipe excludes, shares 1 file with gpu-build 1.0: "
            "removing it would delete them\n") in status.stdout, status.stdout
    command = re.search(r"For gpu-build alone: `([^`]+)`, then run this bootstrap again", warning).group(1)
    subprocess.run(shlex.split(command), check=True, capture_output=True)  # as printed
    assert not {"cpu-only", "gpu-build"} & set(installed(python))

    again = bootstrap(demo, drive, python, env=env)

    assert again.code == 0, again.stderr
    assert not [w for w in again.report["warnings"] if "cpu-only" in w]
    status = run_cli("status", "--recipe", str(demo), "--drive", str(drive), "--python", str(python), env=env)
    assert status.code == 0 and "shared " not in status.stdout, status.stdout
    assert installed(python)["gpu-build"] == "1.0" and "cpu-only" not in installed(python)


def test_rerun_when_environment_matches_does_nothing(demo, drive, env, tmp_path):
    python = make_venv(tmp_path / "venv")
    assert bootstrap(demo, drive, python, env=env).code == 0

    again = bootstrap(demo, drive, python, env=env)

    assert again.code == 0, again.stderr
    assert again.report["changed"] is False
    assert "nothing to do" in again.stderr
    assert not {"download", "install"} & {s["name"] for s in again.report["steps"]}
    assert again.report["installed"] == LOCKED


@needs_netns
@pytest.mark.parametrize("source", ["snapshot", "wheels"])
def test_offline_restore_after_wipe_without_network(demo, drive, env, tmp_path, source):
    """A wiped VM (same prefix, as on Colab) restores with the network cut: from the snapshot,
    or with the snapshots gone from the wheels alone."""
    python = make_venv(tmp_path / "venv")
    assert bootstrap(demo, drive, python, env=env).code == 0
    shutil.rmtree(tmp_path / "venv")  # the VM is wiped; Drive survives
    if source == "wheels":
        drop_snapshots(drive)
    python = make_venv(tmp_path / "venv")

    restored = bootstrap(demo, drive, python, "--offline", env=env, offline_net=True)

    assert restored.code == 0, restored.stderr
    cache = restored.report["cache"]
    steps = {s["name"]: s for s in restored.report["steps"]}
    if source == "snapshot":
        assert restored.report["snapshot"]["used"] is True and cache["hits"] == 1
        # the plan says what the steps then do
        assert f"install {len(LOCKED)} from the snapshot " in restored.stderr
        assert steps["install"]["status"] == "skipped"
        assert steps["install"]["detail"] == f"the snapshot restored all {len(LOCKED)}"
    else:
        assert "snapshot" not in restored.report and cache["hits"] == 3
        assert steps["fetch"]["status"] == "ok" and steps["fetch"]["detail"].startswith("3 files, ")
    assert cache["misses"] == 0 and cache["bytes_read"] > 0
    have = installed(python)
    assert {k: have[k] for k in LOCKED} == LOCKED


@needs_netns
def test_an_offline_restore_through_the_launcher_imports_nothing_an_index_needs(demo, drive, env, tmp_path):
    """The command a wiped VM runs (`invoke` as warmstart.sh writes it) starts in the time its
    imports take: the modules that only talking to an index needs (requests, TLS, sockets, an HTML
    page's parser) and invoke's program are not among them. Read from Python's own import log."""
    python = make_venv(tmp_path / "venv")
    assert bootstrap(demo, drive, python, env=env).code == 0
    shutil.rmtree(tmp_path / "venv")
    python = make_venv(tmp_path / "venv")
    line = ["bootstrap", "--recipe", str(demo), "--drive", str(drive), "--python", str(python), "--offline", "--json"]

    done = subprocess.run([*NETNS, "--", *launcher_command(*line)], capture_output=True, text=True,
                          env=dict(env, PYTHONPROFILEIMPORTTIME="1"), timeout=300)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["snapshot"]["used"] is True
    imported = {entry.rsplit("|", 1)[1].strip() for entry in done.stderr.splitlines()
                if entry.startswith("import time:")}
    assert {"warmstart.bootstrap", "warmstart.snapshot", "zstandard"} <= imported  # the log is read
    assert not {name for name in imported
                if name.split(".")[0] in {"requests", "urllib3", "ssl", "socket", "http", "html", "invoke"}}


@needs_netns
def test_offline_names_the_wheel_missing_from_cache(demo, filled_drive, env, tmp_path):
    drive = filled_drive
    (drive / ".warmstart" / "v1" / "wheels" / "beta-2.0-py3-none-any.whl").unlink()
    python = make_venv(tmp_path / "wiped")

    result = bootstrap(demo, drive, python, "--offline", env=env, offline_net=True)

    assert result.code == 3
    assert "beta==2.0" in result.stderr and "alpha" not in result.report["error"]
    assert result.report["ok"] is False
    assert "beta" not in installed(python)


@needs_netns
def test_corrupt_cached_wheel_is_refused_offline_and_replaced_online(demo, filled_drive, env, tmp_path):
    drive = filled_drive
    cached = drive / ".warmstart" / "v1" / "wheels" / "beta-2.0-py3-none-any.whl"
    good = cached.read_bytes()
    cached.write_bytes(good[:-10] + b"0123456789")
    python = make_venv(tmp_path / "wiped")

    offline = bootstrap(demo, drive, python, "--offline", env=env, offline_net=True)
    assert offline.code == 3
    assert "sha256" in offline.stderr and "beta" in offline.stderr
    assert "beta" not in installed(python)

    online = bootstrap(demo, drive, python, env=env)
    assert online.code == 0, online.stderr
    assert online.report["cache"]["misses"] == 1
    assert cached.read_bytes() == good


def test_typo_in_recipe_key_is_bad_input(demo, drive, env, tmp_path):
    demo.write_text(demo.read_text().replace("required = false", "requird = false"))

    result = bootstrap(demo, drive, make_venv(tmp_path / "venv"), env=env)

    assert result.code == 2
    assert "gpu.requird" in result.stderr and str(demo) in result.stderr
    assert "did you mean 'gpu.required'" in result.stderr
    assert result.report["ok"] is False and result.report["exit_code"] == 2


def test_target_python_outside_recipe_specifier(demo, drive, env, tmp_path):
    demo.write_text(demo.read_text().replace('python = ">=3.8"', 'python = "<3.8"'))

    result = bootstrap(demo, drive, make_venv(tmp_path / "venv"), env=env)

    assert result.code == 3
    assert "needs Python <3.8" in result.stderr


def test_a_python_the_recipe_does_not_support_is_refused_before_any_lock_is_looked_for(demo, drive, env, tmp_path):
    """Python 3.10 for a recipe of >=3.11: no lock exists for 3.10, and making one is no answer."""
    older = pyenv_python("3.10")
    if older is None:
        pytest.skip("no pyenv Python 3.10 on this machine")
    demo.write_text(demo.read_text().replace('python = ">=3.8"', 'python = ">=3.11"'))

    result = bootstrap(demo, drive, older, env=env)

    assert result.code == 3, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert "the recipe needs Python >=3.11, but" in error and error.endswith("pass --python with a matching interpreter")
    assert "invoke lock" not in result.stderr


@pytest.mark.parametrize("minor", ["2.7", "3.6"])
def test_a_python_older_than_the_probe_reads_is_said_by_its_version_not_as_one_that_does_not_work(
        minor, demo, drive, env, tmp_path):
    """The probe's code needs 3.7: an older target failed it, said as "cannot run the target
    Python ...: it exited with status 1 (SyntaxError: invalid syntax); pass --python with a working
    interpreter". It is said as a Python the recipe does not support, or, where the recipe
    admits it, as one warmstart does not install into."""
    older = pyenv_python(minor)
    if older is None:
        pytest.skip(f"no pyenv Python {minor} on this machine")
    version = subprocess.run([str(older), "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                             capture_output=True, text=True, check=True).stdout.strip()

    unsupported = bootstrap(demo, drive, older, env=env)
    demo.write_text(demo.read_text().replace('python = ">=3.8"', 'python = ">=2.7"'))
    admitted = bootstrap(demo, drive, older, env=env)

    assert unsupported.code == admitted.code == 3
    assert unsupported.stderr.strip().splitlines()[-1] == (
        f"warmstart: error: {demo}: the recipe needs Python >=3.8, but {older} is {version}; pass --python with a "
        "matching interpreter")
    assert admitted.stderr.strip().splitlines()[-1] == (
        f"warmstart: error: the target Python {older} is {version}, older than warmstart installs into (3.7 and "
        "newer); pass --python with a newer interpreter")


def test_a_python_its_system_manages_is_refused_before_anything_changes_and_the_printed_way_out_works(
        demo, drive, env, tmp_path):
    """Debian's and Ubuntu's python3 (a CUDA container's) carry PEP 668's marker: pip and uv refuse
    to change them. The run got as far as uv, which said so in 12 lines of its own, and ended
    "uv failed to install the locked packages", exit 1; --dry-run and status said it would install.
    Now the plan refuses (exit 3) with the virtualenv to make, and status says a bootstrap stops
    there. The line's command, pasted, makes a virtualenv the bootstrap then fills."""
    system = system_python(tmp_path / "usr")
    home = tmp_path / "home"
    env = env | {"HOME": str(home)}
    venv = home / "venvs" / "demo"
    marker = system.parent.parent / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "EXTERNALLY-MANAGED"
    said = (f"{system} is the system's Python, whose packages its package manager owns ({marker}): pip and uv refuse "
            f"to change them. Make a virtualenv that sees them, `{system} -m venv --system-site-packages --without-pip "
            f"{venv}`, and pass --python {venv / 'bin' / 'python'}; or, in a container that is yours to change, set "
            "PIP_BREAK_SYSTEM_PACKAGES=1")

    refused = bootstrap(demo, drive, system, env=env)
    dry = bootstrap(demo, drive, system, "--dry-run", env=env)
    status = run_cli("status", "--recipe", str(demo), "--drive", str(drive), "--python", str(system), env=env)

    for done in (refused, dry):
        assert done.code == 3, done.stderr
        assert done.stderr.strip().splitlines()[-1] == f"warmstart: error: {said}"
    assert status.code == 1, status.stderr
    assert f"python    {system} ({sys.version.split()[0]}), externally managed ({marker})" in status.stdout
    assert f"bootstrap would: stop: {said}" in status.stdout
    assert installed(system) == {} and not (drive / ".warmstart").exists()

    subprocess.run(said.split("`")[1], shell=True, check=True)
    moved = bootstrap(demo, drive, venv / "bin" / "python", env=env)
    assert moved.code == 0, moved.stderr
    assert installed(venv / "bin" / "python") == LOCKED and installed(system) == {}


@pytest.mark.parametrize("installer", ["pip", "uv"])
def test_pip_break_system_packages_lets_either_installer_change_a_python_its_system_manages(
        installer, demo, drive, env, tmp_path):
    """In a container that is the user's to change, PIP_BREAK_SYSTEM_PACKAGES=1 (as many Dockerfiles
    set it) is their yes, for pip and for uv alike: warmstart dropped it for pip (every other
    PIP_* setting is dropped: they could add to the lock), which then refused; uv never got it."""
    system = system_python(tmp_path / "usr")
    env = env | {"HOME": str(tmp_path / "home")}

    done = bootstrap(demo, drive, system, "--installer", installer, env=env | {"PIP_BREAK_SYSTEM_PACKAGES": "1"})
    unsure = bootstrap(demo, drive, system, "--installer", installer, env=env | {"PIP_BREAK_SYSTEM_PACKAGES": "maybe"})

    assert done.code == 0, done.stderr
    assert installed(system) == LOCKED
    assert unsure.code == 2
    assert unsure.stderr.strip().splitlines()[-1] == \
        "warmstart: error: PIP_BREAK_SYSTEM_PACKAGES must be 1 (on) or 0 (off), got 'maybe'"


def test_stale_lock_is_reported_not_used(demo, drive, env, tmp_path):
    requirements_in = demo.parent.parent / "requirements" / "demo.in"
    requirements_in.write_text("alpha\n")  # gpu-build removed since the lock was compiled

    result = bootstrap(demo, drive, make_venv(tmp_path / "venv"), env=env)

    assert result.code == 2
    # the recipe by its path, as it is outside this checkout: the line works pasted
    assert "stale" in result.stderr and f"invoke lock --recipe {demo} --python-version" in result.stderr


def test_missing_lock_names_file_and_next_step(demo, drive, env, tmp_path):
    for lock in (demo.parent.parent / "requirements").glob("demo-py*.txt"):
        lock.unlink()

    result = bootstrap(demo, drive, make_venv(tmp_path / "venv"), env=env)

    assert result.code == 3
    assert "demo has no lock for Python 3." in result.stderr and ", nor for any other Python; " in result.stderr
    assert "--python with" not in result.stderr  # no interpreter has one
    assert "on manylinux_x86_64 (demo-py3" in result.stderr
    assert f"invoke lock --recipe {demo} --python-version 3." in result.stderr


def test_a_missing_image_lock_is_named_in_its_folder_and_other_interpreters_only_where_they_have_one(demo):
    """On Colab the lock wanted is an image's, in that image's folder beside the `.in`: the line
    names it there (it named the file alone, as if beside the `.in`). Another interpreter is
    offered only where some lock exists."""
    recipe = load_recipe(str(demo), demo.parent.parent)
    target = LockTarget("3.99", "manylinux_x86_64", "colab-next")

    said = _no_lock(recipe, target)

    assert "for the image colab-next (colab-next/demo-py399-manylinux_x86_64.txt); locks exist for: py3" in said
    assert said.endswith("--image colab-next`, or pass --python with an interpreter that has one"), said
    for lock in (demo.parent.parent / "requirements").glob("demo-py*.txt"):
        lock.unlink()
    assert _no_lock(recipe, target).endswith("nor for any other Python; make one with "
                                             f"`{relock_command(recipe, target)}`")


def test_dry_run_changes_nothing(demo, drive, env, tmp_path):
    python = make_venv(tmp_path / "venv")
    before = installed(python)

    result = bootstrap(demo, drive, python, "--dry-run", env=env)

    assert result.code == 0, result.stderr
    assert "download into the cache 3" in result.stderr
    assert installed(python) == before
    assert list(drive.iterdir()) == []


def test_gpu_required_without_nvidia_library(demo, drive, env, tmp_path, no_real_nvml):
    demo.write_text(demo.read_text().replace("required = false", "required = true"))
    python = make_venv(tmp_path / "venv")

    refused = bootstrap(demo, drive, python, env=env)
    assert refused.code == 3
    assert "Runtime > Change runtime type" in refused.stderr and "--allow-no-gpu" in refused.stderr

    allowed = bootstrap(demo, drive, python, "--allow-no-gpu", env=env)
    assert allowed.code == 0, allowed.stderr
    assert [s["status"] for s in allowed.report["steps"] if s["name"] == "gpu"] == ["warning"]
    assert allowed.stderr.count("Runtime > Change runtime type") == 1, "one GPU warning per run"
    assert any("Runtime > Change runtime type" in w for w in allowed.report["warnings"])
    assert refused.stderr.count("Runtime > Change runtime type") == 1, refused.stderr

    # status looks past the GPU, but says that a bootstrap without the flag stops there
    looked = run_cli("status", "--recipe", str(demo), "--drive", str(drive), "--python", str(python), env=env)
    assert looked.code == 0, looked.stderr  # its exit code is the environment's and Drive's
    assert "\nbootstrap would: stop at the GPU check (with --allow-no-gpu: no-op)\n" in looked.stdout


def test_missing_drive_on_colab_says_how_to_mount_and_a_missing_folder_of_the_users_says_so(demo, tmp_path, index):
    """Drive not mounted: the cell that mounts it. A --drive folder elsewhere that does not exist
    is the user's to make: mounting Drive would not make it (it was told to mount all the same)."""
    mount = tmp_path / "content" / "drive"
    env = cli_env(index.url, WARMSTART_PLATFORM="colab", WARMSTART_MOUNT_POINT=str(mount))
    python = make_venv(tmp_path / "venv")

    unmounted = run_cli("bootstrap", "--recipe", str(demo), "--python", str(python), env=env)
    elsewhere = bootstrap(demo, tmp_path / "not-there", python, env=env)

    assert unmounted.code == 3 and f"drive.mount('{mount}')" in unmounted.stderr
    assert elsewhere.code == 3 and "drive.mount" not in elsewhere.stderr
    assert elsewhere.stderr.strip().splitlines()[-1] == (
        f"warmstart: error: Drive root {tmp_path / 'not-there'} does not exist: create it, or pass --drive (or "
        "WARMSTART_DRIVE) a folder that exists")
    assert not (tmp_path / "not-there").exists() and not (tmp_path / "content").exists()


def test_a_recipe_of_the_users_asked_for_on_an_unmounted_drive_says_to_mount_it(tmp_path, index):
    """A recipe of the user's lies in the Drive's recipe folder: asked for by name (or by its
    path there) with Drive not mounted, a run (status, assets and lock alike) said "no recipe named
    'mine' ... known recipes: hyperlpr, ..." (exit 2; lock of the path "file not found"). The cell
    that mounts Drive is the way on (exit 3); with Drive there, a name found nowhere is still said
    as such."""
    mount = tmp_path / "content" / "drive"
    env = cli_env(index.url, WARMSTART_PLATFORM="colab", WARMSTART_MOUNT_POINT=str(mount))
    python = make_venv(tmp_path / "venv")

    mine = str(mount / "MyDrive" / ".warmstart" / "recipes" / "mine.toml")
    for command in (["bootstrap", "--recipe", "mine", "--python", str(python)],
                    ["bootstrap", "--recipe", mine, "--python", str(python)],
                    ["status", "--recipe", "mine", "--python", str(python)],
                    ["assets", "--recipe", "mine"], ["lock", "--recipe", "mine"], ["lock", "--recipe", mine],
                    # a shipped recipe's assets: each was listed "missing", Drive's cache unread
                    ["assets", "--recipe", "hyperlpr"]):
        unmounted = run_cli(*command, env=env)
        assert unmounted.code == 3, (command, unmounted.stderr)
        line = unmounted.stderr.strip().splitlines()[-1]
        mount_cell = (f"warmstart: error: Google Drive is not mounted at {mount}; run this in a notebook cell first: "
                      f"from google.colab import drive; drive.mount('{mount}')")
        assert line.startswith(mount_cell), command
        # the notebook's way to do it all is a bootstrap's: `lock` and `assets` are not asked it
        assert ("warmstart.colab.bootstrap(" in line) == (command[0] in ("bootstrap", "status")), command
    (tmp_path / "drive").mkdir()
    there = run_cli("bootstrap", "--recipe", "mine", "--drive", str(tmp_path / "drive"), "--python", str(python), env=env)
    assert there.code == 2 and "no recipe named 'mine'" in there.stderr, there.stderr
    assert not mount.exists()


def test_drive_from_environment_variable(demo, tmp_path, index):
    env = cli_env(index.url, WARMSTART_DRIVE=str(tmp_path / "from-env"))
    (tmp_path / "from-env").mkdir()

    result = run_cli("bootstrap", "--recipe", str(demo), "--python", str(make_venv(tmp_path / "v")),
                     "--json", env=env)

    assert result.code == 0, result.stderr
    assert result.report["drive"] == str(tmp_path / "from-env")
    assert cached_wheels(tmp_path / "from-env")


def test_with_every_wheel_on_drive_the_install_asks_no_index(demo, filled_drive, tmp_path):
    """uv in the background mode fetches what Drive lacks while it installs; when Drive has every
    wheel (and no snapshot), it must not ask the index at all."""
    drive = filled_drive
    background = {k: v for k, v in cli_env(dead_url()).items() if k != "WARMSTART_WAIT"}

    result = bootstrap(demo, drive, make_venv(tmp_path / "venv"), "--installer", "uv", env=background)

    assert result.code == 0, result.stderr
    assert result.report["installed"] == LOCKED and result.report["cache"]["misses"] == 0
