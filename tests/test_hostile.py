"""Hostile data and remembered failures: RECORD files naming paths outside the environment,
snapshot archives from Drive with foreign owners and setuid bits, a failed check that must not
be forgotten, one run per real environment."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import threading
import tracemalloc
from pathlib import Path

import pytest
import zstandard
from conftest import (
    LOCKED,
    REPO,
    a_target_on_a_small_disk,
    bootstrap,
    cli_command,
    cli_env,
    in_a_removed_folder,
    installed,
    launcher_command,
    make_venv,
    needs_mountns,
    needs_netns,
    on_a_small_disk,
    process_running,
    pyenv_python,
    run_cli,
    skip_or_fail,
    wait_until,
)
from hypothesis import given
from hypothesis import strategies as st

from warmstart.bootstrap import target_lock
from warmstart.checks import OUTPUT_MOST, OUTPUT_READ, checks_at_once
from warmstart.download import Downloader, DownloadFailed, Job
from warmstart.errors import redact
from warmstart.headstart import FOLDER_PREFIX
from warmstart.parts import Source
from warmstart.pipconfig import IndexSettings
from warmstart.settings import parse_command_line
from warmstart.snapshot import _unpack_verified
from warmstart.store import DriveStore
from warmstart.target import remove_broken


def site_of(python: Path) -> Path:
    return Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())


def hostile_dist(site: Path, outside: Path, name: str = "beta", version: str = "1.0") -> Path:
    """A half-installed distribution whose RECORD names files outside its environment."""
    info = site / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (site / name).mkdir()
    (site / name / "__init__.py").write_text("")
    (outside / "link-target").mkdir(exist_ok=True)
    (site / "escape").symlink_to(outside / "link-target")
    for victim in ("relative.txt", "absolute.txt", "link-target/through-link.txt"):
        (outside / victim).write_text("not the environment's")
    depth = len(site.relative_to(outside).parts) if site.is_relative_to(outside) else 8
    (info / "RECORD").write_text("\n".join([
        f"{name}/__init__.py,,", f"{name}/missing.py,,",  # gone: what makes it half-installed
        "../" * depth + "relative.txt,,", f"{outside / 'absolute.txt'},,", "escape/through-link.txt,,",
        f"{info.name}/RECORD,,"]) + "\n")
    return info


def test_record_paths_outside_the_prefix_are_never_removed(tmp_path):
    python = make_venv(tmp_path / "env")
    info = hostile_dist(site_of(python), tmp_path)

    refused = remove_broken([info], tmp_path / "env")

    assert len(refused) == 3
    for victim in ("relative.txt", "absolute.txt", "link-target/through-link.txt"):
        assert (tmp_path / victim).read_text() == "not the environment's"
    assert not info.exists() and not (site_of(python) / "beta" / "__init__.py").exists()


def test_bootstrap_over_a_hostile_half_installed_distribution_keeps_outside_files(demo, drive, tmp_path, index):
    python = make_venv(tmp_path / "env")
    hostile_dist(site_of(python), tmp_path)

    result = run_cli("bootstrap", "--recipe", str(demo), "--drive", str(drive), "--python", str(python),
                     env=cli_env(index.url))

    assert result.code == 0, result.stderr
    assert "left alone 3 paths" in result.stderr
    assert (tmp_path / "absolute.txt").exists() and (tmp_path / "relative.txt").exists()
    assert installed(python)["beta"] == "2.0"


def test_a_snapshot_archive_cannot_give_files_a_foreign_owner_or_special_bits(tmp_path):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, mode in (("bin/tool", 0o4755), ("lib/shared.dat", 0o666), ("lib/group", 0o2775)):
            info = tarfile.TarInfo(name)
            info.mode, info.uid, info.gid, info.size = mode, 4321, 4321, 4
            tf.addfile(info, io.BytesIO(b"data"))
    store = DriveStore(tmp_path)
    archive = store.path("snapshots", "snap.tar.zst")
    archive.parent.mkdir(parents=True)
    archive.write_bytes(zstandard.ZstdCompressor().compress(raw.getvalue()))
    staging = tmp_path / "staging"

    umask = os.umask(0)  # as in some containers
    try:
        _unpack_verified([Source("Drive", store)], archive.name, {"sha256": hashlib.sha256(archive.read_bytes()).hexdigest(),
                                               "size": archive.stat().st_size, "tar_bytes": len(raw.getvalue())},
                         staging)
    finally:
        os.umask(umask)

    for name in ("bin/tool", "lib/shared.dat", "lib/group", "bin", "lib"):
        st = os.lstat(staging / name)
        assert st.st_uid == os.getuid(), f"{name} belongs to whoever restores it"
        assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID | stat.S_IWOTH), oct(st.st_mode)


CHECKED = '\n[[checks]]\nname = "the flag file is there"\nrun = "test -e {flag}"\n'


def test_a_failed_check_is_run_again_until_it_passes(demo, drive, tmp_path, index):
    flag = tmp_path / "ok"
    demo.write_text(demo.read_text() + CHECKED.format(flag=flag))
    python = make_venv(tmp_path / "env")
    args = ("--recipe", str(demo), "--drive", str(drive), "--python", str(python))
    env = cli_env(index.url)

    first = run_cli("bootstrap", *args, env=env)
    again = run_cli("bootstrap", *args, env=env)
    status = run_cli("status", *args, "--json", env=env)
    flag.touch()
    fixed = run_cli("bootstrap", *args, env=env)
    quiet = run_cli("bootstrap", *args, env=env)

    assert first.code == 1 and "checks failed" in first.stderr
    assert again.code == 1 and "checks failed here last time (the flag file is there)" in again.stderr
    assert status.code == 1 and status.report["checks_failed"] == ["the flag file is there"]
    assert (status.report["error"], status.report["exit_code"]) == (None, 1), "not complete: 1, as it exits"
    assert status.report["action"] == "run the checks that failed last time again"
    assert fixed.code == 0 and "1 of 1 passed" in fixed.stderr
    assert quiet.code == 0 and "checks" not in quiet.stderr.split("nothing to do", 1)[1]


def test_a_check_added_or_changed_runs_on_the_next_run_that_installs_nothing(demo, drive, tmp_path, index):
    """A check that has not passed here as it is now (added to the recipe, its script edited, or
    never run: --packages-only skips checks) runs once on a no-op run; one that passed as it is
    does not run again. Before, a no-op ran only the checks that had failed."""
    script = tmp_path / "check.py"
    script.write_text("print('first')\n")
    python = make_venv(tmp_path / "env")
    args = ("--recipe", str(demo), "--drive", str(drive), "--python", str(python))
    env = cli_env(index.url)
    assert run_cli("bootstrap", *args, "--packages-only", env=env).code == 0  # installs; runs no check
    demo.write_text(demo.read_text() + f'\n[[checks]]\nname = "mine"\nscript = "{script}"\n')

    due = run_cli("status", *args, "--json", env=env)
    added = run_cli("bootstrap", *args, env=env)
    quiet = run_cli("bootstrap", *args, env=env)
    script.write_text("print('second')\n")
    edited = run_cli("bootstrap", *args, env=env)

    assert due.code == 1 and due.report["checks_due"] == ["mine"] and due.report["checks_failed"] == []
    assert due.report["action"] == "run the checks not yet passed here"
    assert added.code == 0 and "checks not yet passed here as they are (mine): running them" in added.stderr
    assert "check mine: passed  first" in added.stderr
    assert quiet.code == 0 and "check mine" not in quiet.stderr
    assert edited.code == 0 and "check mine: passed  second" in edited.stderr


def test_one_lock_per_real_environment_in_a_folder_only_its_user_can_write(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    python = make_venv(tmp_path / "env")

    spellings = {target_lock(str(p)) for p in (python, python.with_name("python3"),
                                                          tmp_path / "env" / ".." / "env" / "bin" / "python")}

    assert len(spellings) == 1
    folder = spellings.pop().parent
    assert folder.is_relative_to(tmp_path / "cache") and stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert target_lock(sys.executable) != target_lock(str(python))


def test_a_lock_timeout_that_is_no_number_is_bad_input(demo, drive, tmp_path, index):
    result = run_cli("bootstrap", "--recipe", str(demo), "--drive", str(drive),
                     "--python", str(make_venv(tmp_path / "env")),
                     env=cli_env(index.url, WARMSTART_LOCK_TIMEOUT="ten minutes"))
    assert result.code == 2
    assert result.stderr.strip().endswith("WARMSTART_LOCK_TIMEOUT must be a number of seconds, got 'ten minutes'")
    assert "Traceback" not in result.stderr


_USERINFO = st.text(st.characters(blacklist_characters="/?#", blacklist_categories=("Zs", "Cc", "Zl", "Zp")),
                    min_size=1, max_size=30)


@given(user=_USERINFO, password=_USERINFO)
def test_no_part_of_a_password_survives_redaction(user, password):
    text = f"error: cannot fetch https://{user}:{password}@index.example/simple/pkg/ (timed out)"
    assert redact(text) == "error: cannot fetch https://***@index.example/simple/pkg/ (timed out)"


# --- one error model: input, machine or Drive problems are one line with 2, 3 or 1 -------------

from hypothesis import HealthCheck, settings

from warmstart import PROJECT_ROOT
from warmstart.errors import BadInput, WarmstartError
from warmstart.maintenance import inventory, verify
from warmstart.profiles import select_profile
from warmstart.recipe import load_recipe
from warmstart.snapshot import Snapshot, SnapshotUnusable

FUNCTION_FIXTURE = settings(max_examples=120, deadline=None,
                            suppress_health_check=[HealthCheck.function_scoped_fixture])


def one_line(exc: Exception) -> None:
    assert "\n" not in str(exc) and str(exc), repr(exc)


@FUNCTION_FIXTURE
@given(raw=st.binary(max_size=400))
def test_any_bytes_as_a_recipe_are_a_recipe_or_one_line(tmp_path, raw):
    path = tmp_path / "recipes" / "x.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(raw)
    try:
        load_recipe(str(path), tmp_path)
    except BadInput as exc:
        one_line(exc)
        assert str(path) in str(exc)


@FUNCTION_FIXTURE
@given(raw=st.binary(max_size=300))
def test_any_bytes_as_a_requirements_file_are_read_or_one_line_naming_it(tmp_path, raw):
    (tmp_path / "recipes").mkdir(exist_ok=True)
    (tmp_path / "requirements").mkdir(exist_ok=True)
    (tmp_path / "requirements" / "x.in").write_bytes(raw)
    (tmp_path / "recipes" / "x.toml").write_text('name = "x"\n[requirements]\nin = "requirements/x.in"\n')
    try:
        load_recipe(str(tmp_path / "recipes" / "x.toml"), tmp_path)
    except BadInput as exc:
        one_line(exc)
        assert "x.in" in str(exc)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                    max_leaves=12)


@FUNCTION_FIXTURE
@given(document=JSON | st.fixed_dictionaries({"facts": JSON, "archive": JSON, "sha256": JSON})
       | st.fixed_dictionaries({"facts": st.just({"format": "warmstart-snapshot-v1"}), "archive": st.just("a.tar.zst"),
                                "sha256": st.just("0" * 64), "size": JSON, "tar_bytes": st.just(1),
                                "part_size": JSON | st.integers(), "parts": JSON}))
def test_any_snapshot_index_json_is_refused_or_read_never_a_crash(tmp_path, document):
    drive = tmp_path / "drive"
    folder = drive / ".warmstart" / "v1" / "snapshots"
    folder.mkdir(parents=True, exist_ok=True)
    index = folder / "demo-py311-0123456789abcdef.json"
    index.write_text(json.dumps(document))
    snapshot = Snapshot(index.stem, {"format": "warmstart-snapshot-v1"})
    store = DriveStore(drive)
    try:
        snapshot.read_index(store)
    except SnapshotUnusable as exc:
        one_line(exc)
    entries = inventory(store, PROJECT_ROOT, drive)  # `invoke cache` over the same Drive
    assert {e.kind for e in entries if e.path == index} <= {"index", "unreadable index"}


def test_an_index_naming_another_s_archive_with_a_false_sha256_does_not_get_it_set_aside(tmp_path):
    """Two indexes name one archive, the one read last with a sha256 the archive does not have (a
    copy gone wrong, or a hostile writer): `cache --verify` finds the archive as the other says
    and keeps it, where the last index read decided alone."""
    drive = tmp_path / "drive"
    folder = drive / ".warmstart" / "v1" / "snapshots"
    folder.mkdir(parents=True)
    archive = folder / f"demo-py311-0123456789abcdef-{hashlib.sha256(b'an archive').hexdigest()[:16]}.tar.zst"
    archive.write_bytes(b"an archive")
    for name, sha256 in (("demo-py311-0123456789abcdef.json", hashlib.sha256(b"an archive").hexdigest()),
                         ("zz-py311-fedcba9876543210.json", "0" * 64)):
        facts = {"lock_body_sha256": "0" * 64}  # of no lock here: of no recipe
        (folder / name).write_text(json.dumps({"facts": facts, "archive": archive.name, "sha256": sha256}))
    store = DriveStore(drive)

    entries = inventory(store, PROJECT_ROOT, drive)
    verify(store, entries)

    assert [e.status for e in entries if e.path.name == archive.name] == ["ok"]
    assert archive.read_bytes() == b"an archive"


@settings(max_examples=120, deadline=None)
@given(platform=st.text(st.characters(blacklist_characters="\x00"), max_size=20),  # no NUL in environ
       index=st.text(st.characters(blacklist_characters="\x00"), max_size=40))
def test_any_settings_are_taken_or_refused_in_one_line(platform, index):
    for action in (lambda: select_profile(PROJECT_ROOT, {"WARMSTART_PLATFORM": platform} if platform else {}),
                   lambda: IndexSettings.from_environ({"PIP_INDEX_URL": index})):
        try:
            action()
        except (BadInput, WarmstartError) as exc:
            one_line(exc)


HOSTILE_INPUTS = {
    # name: (files to write, recipe argument, extra args, env, exit code, words in the one line)
    "recipe is a folder": ({"adir/x": ""}, "{tmp}/adir", [], {}, 2, "is a folder"),
    "recipe is binary": ({"recipes/bin.toml": b"\xff\xfe\x00\x01"}, "{tmp}/recipes/bin.toml", [], {}, 2, "not UTF-8"),
    "recipe nested too deeply": ({"recipes/deep.toml": "a = " + "[" * 5000 + "]" * 5000},
                                 "{tmp}/recipes/deep.toml", [], {}, 2, "nested too deeply"),
    "requirements not UTF-8": ({"recipes/r.toml": 'name = "r"\n[requirements]\nin = "requirements/r.in"\n',
                                "requirements/r.in": b"caf\xe9==1\n"}, "{tmp}/recipes/r.toml", [], {}, 2,
                               "r.in: not UTF-8"),
    "interpreter answers nonsense": ({"py.sh": "#!/bin/sh\necho hello\n"}, "{demo}", ["--python", "{tmp}/py.sh"],
                                     {}, 3, "did not answer like a Python interpreter"),
    # no Python at all, quoting the probe back: said so, not as the probe's first 200 characters
    "interpreter is ls": ({}, "{demo}", ["--python", "/bin/ls"], {}, 3,
                          "cannot run the target Python /bin/ls: it exited with status 2, quoting the code it was "
                          "to run: no Python interpreter; pass --python"),
    "interpreter is echo": ({}, "{demo}", ["--python", "/bin/echo"], {}, 3,
                            "/bin/echo did not answer like a Python interpreter (it printed its question back)"),
    "interpreter missing": ({}, "{demo}", ["--python", "{tmp}/nope/python"], {}, 3,
                            "cannot run the target Python {tmp}/nope/python: No such file or directory;"),
    # a virtualenv's folder for its interpreter: it was "Permission denied"
    "interpreter is a virtualenv's folder": ({"venv/bin/python": "", "venv/pyvenv.cfg": ""}, "{demo}",
                                             ["--python", "{tmp}/venv"], {}, 3,
                                             "cannot run the target Python {tmp}/venv: it is a folder; give its "
                                             "interpreter, --python {tmp}/venv/bin/python"),
    # a command name PATH does not know: it was said as a file of that name in the working folder
    "interpreter no command": ({}, "{demo}", ["--python", "python3.99-ws"], {}, 3,
                               "cannot run the target Python python3.99-ws: no command of that name on PATH; pass "
                               "--python with a working interpreter (its path, or a command on PATH)"),
    # as a Python older than the probe's syntax fails (2.7, 3.6): the line says why, not the probe's 3 KB
    "interpreter fails the probe": ({"py.sh": "#!/bin/sh\necho '  File \"<string>\", line 9' >&2\n"
                                              "echo 'SyntaxError: invalid syntax' >&2\nexit 1\n"},
                                    "{demo}", ["--python", "{tmp}/py.sh"], {}, 3,
                                    "it exited with status 1 (SyntaxError: invalid syntax); pass --python"),
    # a launcher's error begins with what went wrong: pyenv's shim said its advice's last words,
    # "(Python versions to be found at the same time.)"
    "interpreter is a launcher that fails": ({"py.sh": "#!/bin/sh\necho 'pyenv: python3.12: command not found' >&2\n"
                                                       "echo >&2\necho 'Note: See pyenv help global for tips on "
                                                       "allowing multiple' >&2\necho '      Python versions to be "
                                                       "found at the same time.' >&2\nexit 127\n"},
                                             "{demo}", ["--python", "{tmp}/py.sh"], {}, 3,
                                             "it exited with status 127 (pyenv: python3.12: command not found); "
                                             "pass --python"),
    # one that crashes: it "exited with status -11"
    "interpreter crashes": ({"py.sh": "#!/bin/sh\nkill -SEGV $$\n"}, "{demo}", ["--python", "{tmp}/py.sh"], {}, 3,
                            "cannot run the target Python {tmp}/py.sh: it was killed by SIGSEGV; pass --python"),
    # `~user` of no user here: pathlib raises RuntimeError (it ended as a bug, exit 70)
    "interpreter in no user's home": ({}, "{demo}", ["--python", "~no-such-user-ws/bin/python"], {}, 2,
                                      "--python (or WARMSTART_PYTHON) '~no-such-user-ws/bin/python' begins with "
                                      "the home folder of a user this machine does not have; give the full path"),
    "recipe in no user's home": ({}, "~no-such-user-ws/r.toml", [], {}, 2, "--recipe '~no-such-user-ws/r.toml' "
                                 "begins with the home folder of a user this machine does not have"),
    "asset in no user's home": ({"recipes/a.toml": 'name = "a"\n[requirements]\nin = "requirements/a.in"\n'
                                                   '[[assets]]\nurl = "https://example.org/m.onnx"\n'
                                                   f'sha256 = "{"0" * 64}"\ndest = "~no-such-user-ws/m.onnx"\n',
                                 "requirements/a.in": "alpha\n"}, "{tmp}/recipes/a.toml", [], {}, 2,
                                "a.toml: 'assets[0].dest' '~no-such-user-ws/m.onnx' begins with the home folder of a "
                                "user this machine does not have"),
    "recipes folder in no user's home": ({}, "demo", [], {"WARMSTART_RECIPES": "~no-such-user-ws/recipes"}, 2,
                                         "WARMSTART_RECIPES '~no-such-user-ws/recipes' begins with the home folder"),
    # the recipe's own file where its folder goes: it read as a folder with no recipe in it
    "recipes folder that is a file": ({"mine.toml": 'name = "mine"\n'}, "mine", [],
                                      {"WARMSTART_RECIPES": "{tmp}/mine.toml"}, 2,
                                      "WARMSTART_RECIPES {tmp}/mine.toml is a file, not a folder: set it to the "
                                      "folder that holds your recipes, or pass the recipe's file as --recipe PATH"),
    "unknown platform": ({}, "{demo}", [], {"WARMSTART_PLATFORM": "mars"}, 2, "names no file"),
    "a switch neither on nor off": ({}, "{demo}", [], {"WARMSTART_WAIT": "ture"}, 2,
                                    "WARMSTART_WAIT must be 1 (on) or 0 (off), got 'ture'"),
    "lock timeout not a number": ({}, "{demo}", [], {"WARMSTART_LOCK_TIMEOUT": "soon"}, 2, "number of seconds"),
    "lock timeout negative": ({}, "{demo}", [], {"WARMSTART_LOCK_TIMEOUT": "-1"}, 2,
                              "WARMSTART_LOCK_TIMEOUT must be a number of seconds above 0, got '-1'"),
    "Drive timeout not a number": ({}, "{demo}", [], {"WARMSTART_DRIVE_TIMEOUT": "soon"}, 2,
                                   "WARMSTART_DRIVE_TIMEOUT must be a number of seconds"),
    "Drive timeout endless": ({}, "{demo}", [], {"WARMSTART_DRIVE_TIMEOUT": "inf"}, 2,
                              "WARMSTART_DRIVE_TIMEOUT must be a number of seconds above 0, got 'inf'"),
    # an unset shell variable: read as left out, --python "" installed into warmstart's own interpreter
    "interpreter given empty": ({}, "{demo}", ["--python", ""], {}, 2,
                                "--python is empty (an unset variable in the command?): give its value, or leave "
                                "--python out"),
    "team cache given empty": ({}, "{demo}", ["--cache", ""], {}, 2, "--cache is empty"),
    "plain-http index": ({}, "{demo}", [], {"PIP_INDEX_URL": "http://user:secret@index.example/simple"}, 2,
                         "https"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_INPUTS))
def test_hostile_inputs_end_in_one_line_with_the_documented_code(case, demo, drive, tmp_path, index):
    files, recipe, extra, settings_, code, words = HOSTILE_INPUTS[case]
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
        if name.endswith(".sh"):
            path.chmod(0o755)
    fill = {"tmp": str(tmp_path), "demo": str(demo)}
    env = cli_env(index.url) | {k: v.format(**fill) for k, v in settings_.items()}
    if "PIP_INDEX_URL" in settings_:
        env["PIP_INDEX_URL"] = settings_["PIP_INDEX_URL"]
    args = [a.format(**fill) for a in extra]
    if "--python" not in args:
        args += ["--python", str(make_venv(tmp_path / "env"))]

    result = run_cli("bootstrap", "--recipe", recipe.format(**fill), "--drive", str(drive), *args, env=env)

    assert result.code == code, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("warmstart: error: ") and words.format(**fill) in last, last
    assert len(last) < 600, f"one line, not a dump: {last[:300]}..."
    assert "Traceback" not in result.stderr and "secret" not in result.stderr + result.stdout


def test_a_target_that_prints_as_it_starts_installs_with_pip_and_says_why(demo, drive, tmp_path, index):
    """A .pth file that prints on stdout (a package's, or the user's): the target's answer to the
    probe came after its line, and the run ended "did not answer like a Python interpreter" (exit
    3). Read past it now; uv cannot (it reads an interpreter's answer as JSON), so the run installs
    with pip and says why, and --installer uv is one line, exit 3, before anything changes."""
    python = make_venv(tmp_path / "env")
    site = next((tmp_path / "env").glob("lib/python*/site-packages"))
    (site / "noisy.pth").write_text('import sys; print("hello from a pth")\n')
    why = (f"{python} prints 'hello from a pth' as it starts (a .pth file or a sitecustomize module), and uv cannot "
           "read past that")

    refused = bootstrap(demo, drive, python, "--installer", "uv", env=cli_env(index.url))
    result = bootstrap(demo, drive, python, env=cli_env(index.url))

    assert refused.code == 3 and refused.report["error"] == (f"--installer uv, but {why}: remove what prints it, "
                                                             "or use --installer pip"), refused.stderr
    assert result.code == 0, result.stderr
    assert result.report["installer"] == "pip" and installed(python).items() >= LOCKED.items()
    assert result.report["warnings"] == [f"installing with pip: {why}; remove what prints it to install with uv"]
    # status says it as a warning of its own (it stood under the gpu line, as a GPU warning)
    status = run_cli("status", "--recipe", str(demo), "--drive", str(drive), "--python", str(python), env=cli_env())
    assert f"\nwarning   installing with pip: {why}; remove what prints it to install with uv\n" in status.stdout
    found = run_cli("status", "--recipe", str(demo), "--drive", str(drive), "--python", str(python), "--json",
                    env=cli_env()).report
    assert found["warnings"] == result.report["warnings"] and found["gpu_warnings"] == []


@pytest.mark.parametrize("where", ["--drive", "--recipe", "the recipe's requirements", "--cache", "an asset's dest"])
def test_a_loop_of_links_wherever_a_path_is_taken_is_one_line_never_a_bug(where, demo, drive, tmp_path):
    """pathlib's resolve() raised RuntimeError at a loop of links before Python 3.13: each of these
    ended in "internal error: RuntimeError('Symlink loop from ...'); this is a bug in warmstart",
    exit 70. Now the path stops where the loop begins, and what looks at it says what is wrong."""
    loop, back = tmp_path / "loop", tmp_path / "loop back"
    loop.symlink_to(back)
    back.symlink_to(loop)
    looped_toml = tmp_path / "looped.toml"
    looped_toml.symlink_to(loop)
    flags = ["--drive", str(loop)] if where == "--drive" else ["--drive", str(drive)]
    flags += ["--cache", str(loop)] if where == "--cache" else []
    recipe = str(looped_toml) if where == "--recipe" else str(demo)
    if where == "the recipe's requirements":
        requirements = demo.parent.parent / "requirements" / "demo.in"
        requirements.unlink()
        requirements.symlink_to(loop)
    if where == "an asset's dest":
        demo.write_text(demo.read_text() + f'\n[[assets]]\nurl = "https://example.org/m.onnx"\nsha256 = "{"0" * 64}"\n'
                        f'dest = "{loop}/m.onnx"\n')
    code, said = {
        "--drive": (3, f"Drive root {loop} is a link that leads nowhere (a loop of links); pass --drive DIR"),
        "--recipe": (2, f"{loop}: cannot be read (Too many levels of symbolic links)"),
        "the recipe's requirements": (2, f"'requirements.in' names {loop}, which does not exist"),
        "--cache": (3, f"the team cache folder {loop} is a link, not a folder"),
        "an asset's dest": (2, "is outside your home folder and the workdir"),
    }[where]

    done = run_cli("bootstrap", "--recipe", recipe, *flags, "--python", str(make_venv(tmp_path / "env")),
                   "--dry-run", env=cli_env(WARMSTART_PLATFORM="docker"))

    assert done.code == code, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("warmstart: error: ") and said in last, last


def test_an_empty_drive_is_bad_input_wherever_it_is_given(demo, tmp_path, capsys):
    """`--drive ""` stood for the platform's folder, as if left out."""
    for command in (["status", "--recipe", str(demo)], ["cache"], ["recipes"]):
        looked = run_cli(*command, "--drive", "", env=cli_env())
        assert looked.code == 2, (command, looked.stderr)
        assert looked.stderr.strip().splitlines()[-1] == (
            "warmstart: error: --drive is empty (an unset variable in the command?): give its value, or leave "
            "--drive out"), command
    with pytest.raises(SystemExit) as ended:  # warmstart.sh's command line, said by argparse
        parse_command_line(["demo", "--drive", ""])
    assert ended.value.code == 2 and "argument --drive: --drive is empty" in capsys.readouterr().err


@pytest.mark.parametrize(("given_as", "value"), [("--drive", "gs://team-bucket/warmstart"),
                                                 ("WARMSTART_DRIVE", "s3://KEY:SECRET@bucket/x"),
                                                 ("--drive", "file:///content/drive/MyDrive")])
def test_a_url_as_the_drive_is_bad_input_pointing_at_cache_and_printing_no_more_of_it(given_as, value, demo, tmp_path):
    """Before: "Drive root /checkout/gs:/team-bucket/warmstart does not exist: create it" (exit 3),
    a relative folder made of the URL, its credentials printed."""
    flag, env = (["--drive", value], cli_env()) if given_as == "--drive" else ([], cli_env(WARMSTART_DRIVE=value))

    result = run_cli("status", "--recipe", str(demo), "--python", str(make_venv(tmp_path / "env")), *flag, env=env)

    assert result.code == 2, result.stderr
    scheme = value.partition(":")[0]
    assert result.stderr.strip().splitlines() == [
        f"warmstart: error: {given_as} {scheme}://... is a URL, and Drive is a folder (on Colab the mounted Drive, "
        "elsewhere any local folder): give its path; a store the team shares goes to --cache"]


@pytest.mark.parametrize("given_as", ["--drive", "WARMSTART_DRIVE"])
def test_a_drive_in_the_home_of_no_user_here_is_bad_input_naming_where_it_was_given(given_as, demo, tmp_path):
    """`~user/...` of a user this machine does not have: pathlib's RuntimeError ended the run as a
    bug (exit 70); it is the user's input, named with the flag or variable that gave it."""
    value = "~no-such-user-ws/drive"
    flag, env = (["--drive", value], cli_env()) if given_as == "--drive" else ([], cli_env(WARMSTART_DRIVE=value))

    result = run_cli("status", "--recipe", str(demo), "--python", str(make_venv(tmp_path / "env")), *flag, env=env)

    assert result.code == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"warmstart: error: {given_as} '{value}' begins with the home folder of a user this machine does not "
        "have; give the full path")
    assert not (tmp_path / value).exists() and not (REPO / value).exists(), "no folder made under that name"


@pytest.mark.parametrize("given_as", ["--drive", "WARMSTART_DRIVE"])
def test_a_drive_folder_given_that_does_not_exist_is_named_with_the_way_out_not_the_platforms(given_as, demo,
                                                                                             tmp_path):
    """In a container (or on Colab), a --drive folder that does not exist was answered with the
    platform's way to its own Drive: `docker run -v "$HOME/warmstart-drive:/drive" ...` (on Colab:
    mount Drive, with Drive mounted)."""
    missing = tmp_path / "team drive"
    flag, env = (["--drive", str(missing)], cli_env()) if given_as == "--drive" else \
        ([], cli_env(WARMSTART_DRIVE=str(missing)))

    result = run_cli("bootstrap", "--recipe", str(demo), "--python", str(make_venv(tmp_path / "env")), *flag,
                     env=env | {"WARMSTART_PLATFORM": "docker"})

    assert result.code == 3, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"warmstart: error: Drive root {missing} does not exist: create it, or pass --drive (or WARMSTART_DRIVE) a "
        "folder that exists")
    assert not missing.exists()


@pytest.mark.parametrize("entry", ["warmstart bootstrap", "invoke bootstrap --json", "warmstart status",
                                   "warmstart.sh", "warmstart.sh on 3.13"])
def test_a_working_folder_that_is_gone_is_one_line_naming_it_and_the_way_out(entry, demo, drive, tmp_path):
    """Run from a folder that no longer exists, the target Python's probe failed and the run said
    "cannot run the target Python ...: pass --python with a working interpreter" (exit 3; it
    works), or, with a relative path, "No such file or directory" naming nothing; warmstart.sh said
    "could not download warmstart's own dependencies" with pip's traceback. Every program a run
    starts (the target Python, uv, pip) fails there: each entry now says why, the same line, and
    changes nothing. warmstart.sh also with pyenv's Python 3.13 as the notebook's, as on Colab's
    latest runtime: 3.13.0 to 3.13.2 (this machine's is 3.13.0) failed with a traceback
    (`SystemError: error return without exception set`, CPython gh-130932) as warmstart.sh's
    `-c` program imported warmstart, before it could say the line."""
    home, env_python = tmp_path / "home", make_venv(tmp_path / "env")
    home.mkdir()
    gone = tmp_path / "notebook folder"
    flags = ["--recipe", str(demo), "--drive", str(drive), "--python", str(env_python)]
    command = {
        "warmstart bootstrap": [sys.executable, "-m", "warmstart", "bootstrap", *flags],
        "invoke bootstrap --json": cli_command("bootstrap", *flags, "--json"),
        "warmstart status": [sys.executable, "-m", "warmstart", "status", *flags],
    }.get(entry, ["bash", str(REPO / "warmstart.sh"), str(demo), *flags[2:]])
    notebooks = pyenv_python("3.13") if entry == "warmstart.sh on 3.13" else Path(sys.executable)
    if notebooks is None:
        skip_or_fail("no pyenv Python 3.13 to run warmstart.sh with")
    env = cli_env(HOME=str(home), PYTHONPATH=str(REPO), WARMSTART_PYTHON=str(notebooks))

    done = subprocess.run(in_a_removed_folder(gone, command), env=env, capture_output=True, text=True, timeout=120)

    said = (f"the current folder ({gone}) no longer exists (it was removed, or lies on a Drive unmounted since): "
            f"run `cd {home}` (or change to any folder that exists), then run again")
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == \
        (f"warmstart.sh: {said}" if entry.startswith("warmstart.sh") else f"warmstart: error: {said}")
    if entry.endswith("--json"):
        assert json.loads(done.stdout) | {"exit_code": 3, "error": said} == json.loads(done.stdout)
    assert list(drive.iterdir()) == [] and installed(env_python) == {}


@pytest.mark.parametrize("entry", ["warmstart", "warmstart.sh's invoke"])
def test_a_home_under_a_file_is_one_line_naming_the_file_invoke_reads_there(entry, tmp_path):
    """HOME is a path under a file. invoke reads its user's configuration there (~/.invoke.yaml)
    before any task runs, and its read failed with a traceback (NotADirectoryError) from both of
    warmstart's entries that hand a line to invoke: the `warmstart` command and the `invoke` that
    warmstart.sh writes (its bootstrap lines never reach invoke). Now the one line, exit 3."""
    a_file = tmp_path / "a file"
    a_file.write_text("not a folder\n")
    home = a_file / "home"
    command = {"warmstart": [sys.executable, "-m", "warmstart", "--list"],
               "warmstart.sh's invoke": launcher_command("--list")}[entry]
    env = cli_env(HOME=str(home), PYTHONPATH=str(REPO), XDG_CACHE_HOME=str(tmp_path / "cache"))

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)

    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        f"warmstart: error: {home}/.invoke.yaml: Not a directory [errno 20]; check that the folder is there, "
        "writable and not full (TMPDIR, HOME, the Drive folder: on Colab mounted and under its quota), then run again"]
    assert a_file.read_text() == "not a folder\n"


def test_a_working_folder_holding_modules_named_as_the_standard_librarys_changes_nothing(demo, drive, tmp_path, index):
    """The notebook works in the recipe's workdir, and a project's own json.py or enum.py lies
    there. `python -c` and `python -m` import from the working folder first: the target's probe
    failed ("cannot run the target Python ...: the project's json.py was imported; pass --python
    with a working interpreter"); pip (`-m pip`), the Drive worker (`-c`), warmstart.sh's own
    process (`-c`) and `python -m warmstart` imported from it too. The Python processes warmstart
    starts for itself start in `/`, and warmstart.sh and `-m warmstart` take the folder off
    sys.path: a bootstrap with pip from that folder installs, its worker writes the snapshot to
    Drive (it died at its first import, its writes pending for good), and both commands run."""
    project = tmp_path / "notebook's folder"
    project.mkdir()
    for name in ("json", "enum", "re"):
        (project / f"{name}.py").write_text(f"raise SystemExit('the project\\'s {name}.py was imported')\n")
    env = cli_env(index.url, XDG_CACHE_HOME=str(tmp_path / "cache"))
    env.pop("WARMSTART_WAIT")  # the Drive worker, in the background
    python = make_venv(tmp_path / "env")
    flags = ["--recipe", str(demo), "--drive", str(drive), "--python", str(python)]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        # as warmstart's scripts start (console script, launcher): their own folder first, not this one
        return subprocess.run([sys.executable, "-P", "-m", "invoke", "--search-root", str(REPO), *args], cwd=project,
                              env=env, capture_output=True, text=True, timeout=300)

    done = run("bootstrap", *flags, "--installer", "pip")

    assert done.returncode == 0, done.stderr
    assert installed(python) == LOCKED
    wait_until(lambda: json.loads(run("status", *flags, "--json").stdout)["drive_writes"] is None, 120,
               "the Drive worker did not finish within 120 s")
    assert len(list((drive / ".warmstart" / "v1" / "snapshots").glob("*.tar.zst"))) == 1
    # `python -m warmstart` (`-m` puts the working folder first, where a script's folder goes)
    as_module = subprocess.run([sys.executable, "-m", "warmstart", "status", *flags], cwd=project, env=env,
                               capture_output=True, text=True, timeout=120)
    assert as_module.returncode == 0 and "safe to shut down" in as_module.stdout, as_module.stderr
    # warmstart.sh's own process (`python -c`): past its imports, to a Drive it is told is missing
    missing = tmp_path / "no drive"
    sh = subprocess.run(["bash", str(REPO / "warmstart.sh"), str(demo), "--drive", str(missing)], cwd=project,
                        env=env | {"WARMSTART_PLATFORM": "docker"}, capture_output=True, text=True, timeout=120)
    assert (sh.returncode, sh.stderr.strip().splitlines()[-1]) == (
        3, f"warmstart.sh: Drive root {missing} does not exist: create it, or pass --drive (or WARMSTART_DRIVE) a folder "
           "that exists"), sh.stderr


# A folder name of bytes that are not UTF-8 (an old archive's, a Windows share's): Python keeps the
# byte 0xff as the lone surrogate \udcff, which a strict UTF-8 stream cannot write. Colab's locale
# (en_US.UTF-8) gives Python such a stdout; PYTHONIOENCODING stands in for it (this machine lacks
# that locale).
NOT_UTF8 = os.fsdecode(b"drive-\xff")
STRICT_UTF8 = {"PYTHONIOENCODING": "utf-8:strict"}


def test_a_path_that_is_not_utf8_is_printed_escaped_on_a_strict_utf8_stdout(demo, tmp_path, index):
    """`status` wrote the path's surrogate to stdout: UnicodeEncodeError, and invoke's traceback."""
    drive = tmp_path / NOT_UTF8
    drive.mkdir()

    result = run_cli("status", "--recipe", str(demo), "--drive", str(drive), "--python",
                     str(make_venv(tmp_path / "env")), env=cli_env(index.url, **STRICT_UTF8))

    assert (result.code, result.stdout.splitlines()[-1]) == (1, "bootstrap would: download 3 wheels, then install")
    assert f"snapshot  none for a wiped VM in {tmp_path}/drive-\\xff yet" in result.stdout, result.stdout
    assert "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize("drive_name", ["drive", NOT_UTF8], ids=["drive", "not-utf8"])
def test_an_internal_error_is_exit_70_with_its_traceback_in_a_log_never_on_stderr(drive_name, demo, tmp_path,
                                                                                 index):
    """A bug, staged: a sitecustomize makes the planner raise what no input could. With a path in
    the command that is not UTF-8, writing the log itself failed (UnicodeEncodeError), and the
    run ended in invoke's traceback."""
    drive = tmp_path / drive_name
    drive.mkdir()
    (tmp_path / "sitecustomize.py").write_text(
        "import warmstart.bootstrap\n"
        "def broken(*a, **k):\n    raise ZeroDivisionError('a bug, staged by the test')\n"
        "warmstart.bootstrap.make_plan = broken\n")
    env = cli_env(index.url, PYTHONPATH=str(tmp_path), **STRICT_UTF8)

    result = run_cli("bootstrap", "--recipe", str(demo), "--drive", str(drive),
                     "--python", str(make_venv(tmp_path / "env")), env=env)

    assert result.code == 70
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "internal error: ZeroDivisionError('a bug, staged by the test')" in line
    log = Path(line.rsplit("please report it with ", 1)[1])
    assert "Traceback" in log.read_text() and "ZeroDivisionError" in log.read_text()


# --- limits: archive expansion, check output and time; an interrupt stops the children --------

import signal
import time
import zipfile

from test_assets import tar_gz

from warmstart.assets import safe_extract


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_an_archive_that_expands_past_its_limit_is_refused(tmp_path, kind):
    archive = tmp_path / f"bomb.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("zeros.bin", bytes(3 * 2**20))
    else:
        archive.write_bytes(tar_gz({"zeros.bin": bytes(3 * 2**20)}))
    assert archive.stat().st_size < 2**16, "it compresses to almost nothing"
    (tmp_path / "out").mkdir()

    with pytest.raises(WarmstartError, match=r"expands to more than 2 MiB; if that is meant, set max_unpacked_mib"):
        safe_extract(archive, tmp_path / "out", archive.name, limit=2 * 2**20)
    safe_extract(archive, tmp_path / "out", archive.name, limit=4 * 2**20)  # within its limit: fine
    assert (tmp_path / "out" / "zeros.bin").stat().st_size == 3 * 2**20


def the_one_check(demo, drive, tmp_path, index, table: str) -> dict:
    """What the report says of the one check `table` adds to the demo recipe, after a bootstrap
    that passed it."""
    demo.write_text(demo.read_text() + "\n[[checks]]\n" + table)
    result = run_cli("bootstrap", "--recipe", str(demo), "--drive", str(drive), "--json",
                     "--python", str(make_venv(tmp_path / "env")), env=cli_env(index.url))
    assert result.code == 0, result.stderr
    (check,) = result.report["checks"]
    return check


def test_a_checks_output_is_capped_in_the_report_and_whole_in_a_log(demo, drive, tmp_path, index):
    check = the_one_check(demo, drive, tmp_path, index,
                          'name = "chatty"\npython = "print(\'x\' * 200000); print(\'the end\')"\n')
    assert len(check["output"]) < 5000 and check["output"].endswith("the end")
    assert "x" * 200000 in Path(check["log"]).read_text()


def test_a_check_that_prints_without_end_is_stopped_before_it_fills_the_disk(demo, drive, tmp_path, index):
    """A check printing without end (`yes`: a library's log in a loop) wrote into the temporary
    folder until its timeout, 600 s by default: at hundreds of MB a second, more than a Colab
    VM's disk holds. It is stopped once it printed more than OUTPUT_MOST, a failed check whose
    output ends with why; the temporary files go with it."""
    demo.write_text(demo.read_text() + '\n[[checks]]\nname = "flood"\nrun = "yes warmstart"\ntimeout = 60\n')
    result = run_cli("bootstrap", "--recipe", str(demo), "--drive", str(drive), "--json",
                     "--python", str(make_venv(tmp_path / "env")), env=cli_env(index.url))

    assert result.code == 1, result.stderr  # a check failed (on the code before: "timed out after 60 s")
    (check,) = result.report["checks"]
    why = (f"stopped: it printed more than {OUTPUT_MOST >> 20} MiB, which would fill its output's disk before its "
           "timeout")
    assert (check["ok"], check["summary"]) == (False, why)
    assert check["output"].endswith("\n" + why) and "warmstart\nwarmstart\n" in check["output"][-300:]
    assert len(Path(check["log"]).read_text()) < 2 * OUTPUT_READ + 1000, "what is kept of it is bounded as before"


def test_a_check_that_prints_without_end_is_read_back_no_further_than_its_last_4_mib(demo, drive, tmp_path, index):
    """A check's output was read back whole, into memory and then its log: one printing 12 MiB
    (a library's log in a loop, gigabytes before its timeout) held all of it, several times over."""
    check = the_one_check(demo, drive, tmp_path, index,
                          'name = "flood"\nrun = "head -c 12582912 /dev/zero | tr \'\\\\0\' x; echo; echo the end"\n')
    assert check["ok"] and check["summary"] == "the end" and check["output"].endswith("the end")
    log = Path(check["log"]).read_text()
    assert "... (8388617 bytes before this not kept)\n" in log, log[:300]  # 12 MiB and 9 bytes, less 4 MiB
    assert len(log) < OUTPUT_READ + 1000 and log.rstrip().endswith("x" * 1000 + "\nthe end")


def test_a_check_writes_no_bytecode_beside_the_users_code(demo, drive, tmp_path, index):
    # On Colab the workdir lies on Drive, where each file written waits: a check runs the user's
    # code without writing bytecode, whatever the interpreter's setting (here: writing).
    (demo.parent / "imports_mine.py").write_text(
        "import os, sys\n"
        "open('mine.py', 'w').write('X = 1\\n')\n"
        "sys.path.insert(0, os.getcwd())\n"
        "import mine\n"
        "print(os.getcwd(), sys.dont_write_bytecode)\n")
    demo.write_text(demo.read_text() + '\n[[checks]]\nname = "mine"\nscript = "recipes/imports_mine.py"\n')
    env = {k: v for k, v in cli_env(index.url).items() if k != "PYTHONDONTWRITEBYTECODE"}
    result = run_cli("bootstrap", "--recipe", str(demo), "--drive", str(drive), "--json",
                     "--python", str(make_venv(tmp_path / "env")), env=env)

    assert result.code == 0, result.stderr
    (check,) = result.report["checks"]
    cwd, no_bytecode = check["output"].rsplit(" ", 1)
    assert (Path(cwd) / "mine.py").is_file() and no_bytecode == "True"
    assert not list(Path(cwd).rglob("__pycache__"))


def test_a_failed_checks_line_is_its_verdict_not_a_librarys_coloured_log_after_it(demo, drive, tmp_path, index):
    # onnxruntime logs a failed CUDA provider load on stderr in colour, after the check's verdict.
    (demo.parent / "cuda_check.py").write_text(
        "import sys\n"
        "print('FAILED: libcublasLt.so.13 is missing')\n"
        "sys.stderr.write('\\x1b[1;31m2026-11-30 [E:onnxruntime:Default] Failed to load library\\n\\x1b[m\\n')\n"
        "sys.exit(1)\n")
    demo.write_text(demo.read_text() + '\n[[checks]]\nname = "cuda"\nscript = "recipes/cuda_check.py"\n')
    result = run_cli("bootstrap", "--recipe", str(demo), "--drive", str(drive), "--json",
                     "--python", str(make_venv(tmp_path / "env")), env=cli_env(index.url))

    assert result.code == 1, result.stderr
    assert "check cuda: FAILED  FAILED: libcublasLt.so.13 is missing\n" in result.stderr
    (check,) = result.report["checks"]
    assert check["summary"] == "FAILED: libcublasLt.so.13 is missing"
    assert check["output"].endswith("Failed to load library\n\x1b[m"), "the whole output stays in the report"


def test_a_checks_timeout_is_its_own(demo, drive, tmp_path, index):
    demo.write_text(demo.read_text() + '\n[[checks]]\nname = "slow"\nrun = "sleep 30"\ntimeout = 1\n')
    start = time.monotonic()
    result = run_cli("bootstrap", "--recipe", str(demo), "--drive", str(drive), "--json",
                     "--python", str(make_venv(tmp_path / "env")), env=cli_env(index.url))

    assert result.code == 1 and result.report["checks"][0]["output"].startswith("timed out after 1 s")
    assert time.monotonic() - start < 25


def test_a_check_that_leaves_a_helper_running_is_judged_as_it_ends_and_one_timed_out_takes_its_helpers_along(
        demo, drive, tmp_path, index):
    """A check that starts a helper in the background (a server, an agent) and ends passed at once,
    but the run read its output to the end, which the helper held open: it waited for the helper,
    past the check's timeout, and called the check "timed out" (exit 1); a helper that never ends
    hung the run. Now a check is judged when it ends, and its helper is left to run (the user's);
    a check that times out is killed with what it started."""
    left, killed = tmp_path / "left.pid", tmp_path / "killed.pid"
    demo.write_text(demo.read_text() + f'\n[[checks]]\nname = "starts a helper"\ntimeout = 5\n'
                    f'run = "sleep 30 & echo $! > {left}; echo started"\n'
                    f'\n[[checks]]\nname = "hangs"\ntimeout = 1\nrun = "sleep 30 & echo $! > {killed}; sleep 20"\n')

    result = run_cli("bootstrap", "--recipe", str(demo), "--drive", str(drive), "--json",
                     "--python", str(make_venv(tmp_path / "env")), env=cli_env(index.url))

    helper = int(left.read_text())
    try:
        assert result.code == 1, result.stderr
        started, hung = result.report["checks"]
        assert (started["ok"], started["summary"]) == (True, "started")
        assert (hung["ok"], hung["output"]) == (False, "timed out after 1 s (set timeout for this check in the recipe)")
        assert process_running(helper)
        wait_until(lambda: not process_running(int(killed.read_text())), 10, "the timed-out check's helper still runs")
    finally:
        os.kill(helper, signal.SIGKILL)


def test_checks_run_at_the_same_time_and_report_in_the_recipes_order(demo, drive, tmp_path, index):
    # Each waits for the other to have started: run one after the other, the first times out.
    for me, other in (("a", "b"), ("b", "a")):
        demo.write_text(demo.read_text() + f'\n[[checks]]\nname = "{me}"\ntimeout = 60\nrun = "touch {tmp_path}/{me}; '
                        f'for i in $(seq 300); do [ -e {tmp_path}/{other} ] && exit 0; sleep 0.1; done; exit 1"\n')
    result = run_cli("bootstrap", "--recipe", str(demo), "--drive", str(drive), "--json",
                     "--python", str(make_venv(tmp_path / "env")), env=cli_env(index.url))

    assert result.code == 0, result.stderr
    assert [(c["name"], c["ok"]) for c in result.report["checks"]] == [("a", True), ("b", True)]
    assert result.stderr.index("check a: passed") < result.stderr.index("check b: passed")


def test_no_more_checks_run_at_once_than_the_machine_has_cpus_two_at_least(demo, drive, tmp_path, index):
    """Each check is a process that loads the user's libraries and a CUDA context: a recipe of many
    started them all at once, in reach of a 12 GiB VM's OOM killer. Each check here notes how many
    are running as it starts and holds its place 2 s; those beyond the limit wait for a place."""
    limit = checks_at_once()
    running = tmp_path / "running"
    running.mkdir()
    for n in range(limit + 2):
        demo.write_text(demo.read_text() + f'\n[[checks]]\nname = "c{n}"\nrun = "touch {running}/{n}; '
                        f'ls {running} | wc -l > {tmp_path}/seen-{n}; sleep 2; rm {running}/{n}"\n')
    result = run_cli("bootstrap", "--recipe", str(demo), "--drive", str(drive), "--json",
                     "--python", str(make_venv(tmp_path / "env")), env=cli_env(index.url))

    assert result.code == 0, result.stderr
    assert [c["ok"] for c in result.report["checks"]] == [True] * (limit + 2)
    seen = [int((tmp_path / f"seen-{n}").read_text()) for n in range(limit + 2)]
    assert max(seen) <= limit, f"{max(seen)} checks ran at once, over the limit of {limit}: {seen}"


def test_sigterm_stops_the_run_and_its_checks_and_leaves_no_temporary_folder(demo, drive, tmp_path, index):
    pid_files = [tmp_path / f"c{n}.pid" for n in range(checks_at_once())]
    for pid_file in pid_files:
        demo.write_text(demo.read_text() + f'\n[[checks]]\nname = "{pid_file.stem}"\n'
                        f'run = "echo $$ > {pid_file}; exec sleep 120"\n')
    late = tmp_path / "late"  # one check more than run at once: it waits for a place, which never comes
    demo.write_text(demo.read_text() + f'\n[[checks]]\nname = "late"\nrun = "touch {late}"\n')
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    cmd = [sys.executable, "-m", "invoke", "--search-root", str(Path(__file__).parent.parent), "bootstrap",
           "--recipe", str(demo), "--drive", str(drive), "--python", str(make_venv(tmp_path / "env"))]
    run = subprocess.Popen(cmd, env=cli_env(index.url, TMPDIR=str(scratch)), stderr=subprocess.PIPE, text=True)
    wait_until(lambda: all(p.exists() and p.read_text().strip() for p in pid_files), 120,
               "the checks did not all start", every=0.2)
    check_pids = [int(p.read_text()) for p in pid_files]  # all running at once

    run.send_signal(signal.SIGTERM)
    _out, err = run.communicate(timeout=30)

    assert run.returncode == 130 and err.strip().endswith("warmstart: error: interrupted")
    # killed before the run ended; gone once the kernel has had them exit (a busy machine's time)
    wait_until(lambda: not any(process_running(pid) for pid in check_pids), 30, "the checks were not stopped with the run")
    assert list(scratch.iterdir()) == [], "no temporary folder left behind"
    assert not late.exists(), "a check waiting for its place began after the run was stopped"


# --- a secret in a URL reaches no output, on any path ---------------------------------------

SECRET = "s3cr3t-token"


@pytest.mark.parametrize("case", ["index works", "index unreachable", "asset mirror unreachable"])
def test_a_credential_in_a_url_reaches_no_output(case, demo, drive, tmp_path, index):
    url = index.url.replace("http://", f"http://user:{SECRET}@")
    env = cli_env(url if case == "index works" else f"http://user:{SECRET}@127.0.0.1:9/simple")
    if case == "asset mirror unreachable":
        env = cli_env(url, WARMSTART_ASSET_MIRROR=f"http://user:{SECRET}@127.0.0.1:9/mirror")
        demo.write_text(demo.read_text() + '\n[[assets]]\nurl = "https://example.invalid/m.onnx"\n'
                        f'sha256 = "{"0" * 64}"\ndest = "m.onnx"\n')

    result = run_cli("bootstrap", "--recipe", str(demo), "--drive", str(drive), "--json",
                     "--python", str(make_venv(tmp_path / "env")), env=env)

    assert (result.code == 0) == (case == "index works"), result.stderr
    logs = Path(env["XDG_CACHE_HOME"]) / "warmstart" / "logs"
    written = "".join(p.read_text(errors="replace") for p in logs.glob("*")) if logs.is_dir() else ""
    assert SECRET not in result.stdout + result.stderr + written
    if case == "asset mirror unreachable":  # the failing URL is named, its credential hidden
        assert "http://***@127.0.0.1:9/mirror/m.onnx" in result.stderr


def test_no_secret_at_rest_and_warmstarts_folder_is_its_users_alone(demo, drive, tmp_path, index):
    """A team cache URL with user:secret@ (an FTP server's, down), a run that hands its Drive work
    to the background worker: the job file, the worker's log and failure text, and everything
    else warmstart writes hold no secret; its folder is 0700, its job and log files 0600."""
    cache = tmp_path / "cache"
    env = {k: v for k, v in cli_env(index.url, XDG_CACHE_HOME=str(cache)).items() if k != "WARMSTART_WAIT"}
    url = f"ftp://writer:{SECRET}@127.0.0.1:9/team"
    python = make_venv(tmp_path / "env")

    result = run_cli("bootstrap", "--recipe", str(demo), "--drive", str(drive), "--python", str(python),
                     "--cache", url, "--json", env=env)

    assert result.code == 0, result.stderr
    jobs = list((cache / "warmstart" / "drivework").glob("*/*/job.json"))
    deadline = time.monotonic() + 120
    while any(j.exists() for j in jobs) and time.monotonic() < deadline:
        for job in jobs:  # read while the worker is at it
            try:
                assert SECRET not in job.read_text() and stat.S_IMODE(job.stat().st_mode) == 0o600
            except FileNotFoundError:
                pass
        time.sleep(0.05)
    assert jobs, "the run left its Drive work to the worker"
    assert stat.S_IMODE((cache / "warmstart").stat().st_mode) == 0o700
    for path in [*cache.rglob("*"), *drive.rglob("*")]:
        if path.is_file() and not path.is_symlink():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in result.stdout + result.stderr


# --- cache --prune: only what no lock has used for the retention period -----------------------

DAY = 86400


def age(drive: Path, days: float) -> None:
    """Make every cache file and usage record `days` old, as if no run had used them since."""
    then = time.time() - days * DAY
    records = list((drive / ".warmstart" / "v1" / "usage").glob("*.json"))
    for record in records:
        data = json.loads(record.read_text())
        record.write_text(json.dumps({"used": dict.fromkeys(data["used"], then)}))
    for path in (drive / ".warmstart" / "v1").rglob("*"):
        if path.is_file():
            os.utime(path, (then, then))


def test_prune_keeps_what_another_checkout_used_until_the_retention_period_passes(demo, drive, tmp_path, index):
    """The demo project is a second checkout sharing this Drive: this checkout's locks name none
    of its wheels. Recently used, they stay; unused for longer than the retention, they go."""
    assert run_cli("bootstrap", "--recipe", str(demo), "--drive", str(drive),
                   "--python", str(make_venv(tmp_path / "env")), env=cli_env(index.url)).code == 0
    wheels = drive / ".warmstart" / "v1" / "wheels"
    theirs = sorted(p.name for p in wheels.iterdir())
    ours = wheels / "invoke-3.0.3-py3-none-any.whl"  # named by this checkout's warmstart lock
    ours.write_bytes(b"stands in for the wheel")
    env = cli_env()

    recent = run_cli("cache", "--drive", str(drive), "--prune", "--dry-run", env=env)
    age(drive, 40)
    planned = run_cli("cache", "--drive", str(drive), "--prune", "--dry-run", env=env)
    done = run_cli("cache", "--drive", str(drive), "--prune", env=env)

    assert recent.code == 0 and "would remove" not in recent.stdout
    listed = sorted(line.split()[-1] for line in planned.stdout.splitlines() if line.startswith("would remove"))
    assert set(theirs) <= set(listed) and ours.name not in listed
    removed = sorted(line.split()[-1] for line in done.stdout.splitlines() if line.startswith("remove "))
    assert removed == listed, "--dry-run listed exactly what went"
    assert sorted(p.name for p in wheels.iterdir()) == [ours.name]


def test_prune_with_a_shorter_retention_and_bad_input(demo, drive, tmp_path, index):
    assert run_cli("bootstrap", "--recipe", str(demo), "--drive", str(drive),
                   "--python", str(make_venv(tmp_path / "env")), env=cli_env(index.url)).code == 0
    age(drive, 3)

    kept = run_cli("cache", "--drive", str(drive), "--prune", "--dry-run", env=cli_env())
    short = run_cli("cache", "--drive", str(drive), "--prune", "--dry-run", "--older-than", "2", env=cli_env())
    bad = run_cli("cache", "--drive", str(drive), "--prune", "--older-than", "a week", env=cli_env())
    # a negative number of days counted every file as idle, unsaid; nan, none
    nonsense = [run_cli("cache", "--drive", str(drive), "--prune", "--older-than", days, env=cli_env())
                for days in ("-5", "nan")]
    # without --prune they did nothing, unsaid: the user meant to prune, or to see what it would remove
    alone = [run_cli("cache", "--drive", str(drive), *flags, env=cli_env())
             for flags in (["--dry-run"], ["--older-than", "2", "--dry-run"])]

    assert "would remove" not in kept.stdout and "would remove wheel alpha-1.0" in short.stdout
    assert bad.code == 2 and "--older-than must be a number of days, 0 or more, got 'a week'" in bad.stderr
    for days, refused in zip(("-5", "nan"), nonsense, strict=True):
        assert refused.code == 2 and refused.stdout == "", refused.stderr
        assert refused.stderr.strip() == f"warmstart: error: --older-than must be a number of days, 0 or more, got '{days}'"
    for said, refused in zip(("--dry-run goes", "--dry-run and --older-than go"), alone, strict=True):
        assert refused.code == 2 and refused.stdout == "", refused.stderr
        assert refused.stderr.strip() == (f"warmstart: error: {said} only with --prune: add --prune to prune the cache "
                                          "(with --dry-run, to list what it would remove)")
    assert (drive / ".warmstart" / "v1" / "wheels").is_dir() and any((drive / ".warmstart" / "v1" / "wheels").iterdir())


def test_invoke_cache_json_is_the_table_verdicts_and_pruning_as_one_object(demo, drive, tmp_path, index):
    """`invoke cache --json` (a script watching a shared cache): each file with its size and the
    recipes naming it, --verify's verdicts, what --prune removes; an error its `error` and `exit_code`."""
    assert run_cli("bootstrap", "--recipe", str(demo), "--drive", str(drive),
                   "--python", str(make_venv(tmp_path / "env")), env=cli_env(index.url)).code == 0
    known = cli_env(WARMSTART_RECIPES=str(demo.parent))  # the demo recipe is known: its lock names its wheels
    damaged = drive / ".warmstart" / "v1" / "wheels" / "alpha-1.0-py3-none-any.whl"
    damaged.write_bytes(b"not the wheel")
    # a snapshot as warmstart wrote them before they were keyed by the lock's body: of no lock now
    index = next((drive / ".warmstart" / "v1" / "snapshots").glob("*.json"))
    earlier = json.loads(index.read_text())
    earlier["facts"]["lock_sha256"] = earlier["facts"].pop("lock_body_sha256")
    shutil.copy(index.parent / earlier["archive"], index.parent / f"earlier-{earlier['archive']}")
    earlier["archive"] = f"earlier-{earlier['archive']}"
    (index.parent / f"earlier-{index.name}").write_text(json.dumps(earlier))

    table = run_cli("cache", "--drive", str(drive), env=known)
    on_drive = {str(p): p.stat().st_size for p in (drive / ".warmstart" / "v1").glob("*/*") if p.parent.name != "usage"}
    listed = run_cli("cache", "--drive", str(drive), "--json", env=known)
    checked = run_cli("cache", "--drive", str(drive), "--verify", "--json", env=known)
    age(drive, 40)
    planned = run_cli("cache", "--drive", str(drive), "--prune", "--dry-run", "--json", env=cli_env())
    pruned = run_cli("cache", "--drive", str(drive), "--prune", "--json", env=cli_env())
    bad = run_cli("cache", "--drive", str(drive), "--dry-run", "--json", env=cli_env())

    assert listed.code == 0 and listed.stderr == table.stderr, listed.stderr
    found = listed.report
    assert (found["cache"], found["error"], found["exit_code"]) == (str(drive), None, 0)
    files = {Path(f["path"]).name: f for f in found["files"]}
    assert files[damaged.name] == {"path": str(damaged), "kind": "wheel", "bytes": 13, "recipes": ["demo"]}
    snapshots = {Path(f["path"]).name: (f["kind"], f["recipes"]) for f in found["files"]
                 if Path(f["path"]).parent == index.parent}
    archive = earlier["archive"].removeprefix("earlier-")
    assert snapshots == {index.name: ("index", ["demo"]), archive: ("snapshot", ["demo"]),  # named by their lock
                         f"earlier-{index.name}": ("index", []), f"earlier-{archive}": ("snapshot", [])}
    assert {f["path"]: f["bytes"] for f in found["files"]} == on_drive
    assert found["bytes"] == sum(on_drive.values())
    assert found["recipes"]["demo"]["bytes"] == sum(f["bytes"] for f in found["files"] if "demo" in f["recipes"])
    assert f"{found['recipes']['demo']['bytes'] / 2**20:10.1f} MiB  demo" in table.stdout.splitlines()

    assert checked.code == 1 and checked.report["exit_code"] == 1
    assert checked.report["error"].startswith(f"1 damaged file in {drive} was set aside")
    verdicts = {Path(f["path"]).name: f["verified"] for f in checked.report["files"] if f["kind"] == "wheel"}
    assert verdicts.pop(damaged.name).startswith("damaged, set aside as ")
    assert verdicts and set(verdicts.values()) == {"ok"}

    # no recipe known names them now, and 40 days passed: --prune takes every file
    assert planned.code == 0 and pruned.code == 0, pruned.stderr
    assert planned.report["prune"] == {**pruned.report["prune"], "dry_run": True, "freed_bytes": 0}
    gone = pruned.report["prune"]["prunable"]
    assert {f["path"] for f in gone} >= {f["path"] for f in checked.report["files"] if f["kind"] == "wheel"} - {
        str(damaged)}  # and the damaged one under the name it was set aside as
    assert not any((drive / ".warmstart" / "v1" / "wheels").iterdir())
    assert pruned.report["prune"]["freed_bytes"] == sum(f["bytes"] for f in gone) > 0
    assert not any(Path(f["path"]).exists() for f in gone)
    assert bad.code == 2 and bad.report == {"error": "--dry-run goes only with --prune: add --prune to prune the "
                                            "cache (with --dry-run, to list what it would remove)", "exit_code": 2}


def test_a_run_that_uses_old_cache_files_keeps_them_from_pruning(demo, drive, tmp_path, index):
    python = make_venv(tmp_path / "env")
    args = ("--recipe", str(demo), "--drive", str(drive), "--python", str(python))
    assert run_cli("bootstrap", *args, env=cli_env(index.url)).code == 0
    age(drive, 40)  # the files and their records: old
    # ... and the VM that wrote the last record is gone (its local marker with it): a new day.
    shutil.rmtree(Path(cli_env()["XDG_CACHE_HOME"]) / "warmstart" / "used", ignore_errors=True)

    again = run_cli("bootstrap", *args, env=cli_env(index.url))  # a no-op run, using them today
    planned = run_cli("cache", "--drive", str(drive), "--prune", "--dry-run", env=cli_env())

    assert again.code == 0 and "nothing to do" in again.stderr
    assert not [line for line in planned.stdout.splitlines() if line.startswith("would remove wheel")]
    records = sorted((drive / ".warmstart" / "v1" / "usage").iterdir())
    assert run_cli("bootstrap", *args, env=cli_env(index.url)).code == 0
    assert sorted((drive / ".warmstart" / "v1" / "usage").iterdir()) == records, \
        "another no-op run the same day writes nothing to Drive"


def test_an_asset_url_that_redirects_in_a_loop_is_one_line(demo, drive, tmp_path, index):
    import http.server
    import threading

    class Loop(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", self.path)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Loop)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    demo.write_text(demo.read_text() + '\n[[assets]]\nurl = "https://example.invalid/m.onnx"\n'
                    f'sha256 = "{"0" * 64}"\ndest = "m.onnx"\n')
    try:
        result = run_cli("bootstrap", "--recipe", str(demo), "--drive", str(drive),
                         "--python", str(make_venv(tmp_path / "env")),
                         env=cli_env(index.url, WARMSTART_ASSET_MIRROR=f"http://127.0.0.1:{server.server_port}"))
    finally:
        server.shutdown()
    assert result.code == 1 and "TooManyRedirects; check the URL" in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr


def test_a_nul_in_a_recipe_name_is_bad_input():
    with pytest.raises(BadInput, match="cannot hold a NUL"):
        load_recipe("a\0b.toml", PROJECT_ROOT)


@needs_mountns
@pytest.mark.parametrize("case", ["read-only HOME", "full cache folder"])
def test_a_read_only_or_full_disk_is_one_line_exit_3(case, demo, drive, tmp_path, index):
    from conftest import MOUNTNS, REPO
    folder = tmp_path / "folder"
    folder.mkdir()
    invoke = [sys.executable, "-m", "invoke", "--search-root", str(REPO), "bootstrap", "--recipe", str(demo),
              "--drive", str(drive), "--python", str(make_venv(tmp_path / "env"))]
    if case == "read-only HOME":
        mount = f'mount --bind "{folder}" "{folder}" && mount -o remount,bind,ro "{folder}"'
        env = {k: v for k, v in cli_env(index.url, HOME=str(folder)).items() if k != "XDG_CACHE_HOME"}
        words = "Read-only file system"
    else:  # where the downloads land (TMPDIR holds only small files since they moved there)
        mount = f'mount -t tmpfs -o size=4k tmpfs "{folder}"'
        env, words = cli_env(index.url, XDG_CACHE_HOME=str(folder)), "No space left on device"

    done = subprocess.run([*MOUNTNS, "--", "sh", "-c", f'{mount} && exec "$@"', "sh", *invoke], env=env,
                          capture_output=True, text=True, timeout=300)

    assert done.returncode == 3, done.stderr
    assert words in done.stderr.strip().splitlines()[-1] and "Traceback" not in done.stderr


@needs_mountns
@pytest.mark.parametrize("room", ["less than its tar", "its tar and a page"])
def test_a_target_disk_too_small_for_the_snapshot_ends_the_run_naming_it(room, demo, drive, tmp_path, index):
    """The target environment lies on a small disk (a real tmpfs in a private mount namespace, the
    same path the snapshot was made for; a filler file takes all but `room`), and its restore is
    offline. With less room than the index says the tar holds, the run ends before a file is unpacked:
    exit 3, one line naming the snapshot, what it unpacks to and what is free. With the tar's
    bytes and a page, it starts, and the files' pages fill the disk: exit 3, one line that starts
    with the file being written in the staging folder. Before, the snapshot was "cannot be read
    ([Errno 28] No space left on device)", blamed, and the wheels tried on the same full disk
    (uv's error, exit 1). No staging folder is left, and Drive's archive is kept as it was."""
    small = tmp_path / "small"
    small.mkdir()
    invoke = [sys.executable, "-m", "invoke", "--search-root", str(REPO), "bootstrap", "--recipe", str(demo),
              "--drive", str(drive), "--python", f"{small}/env/bin/python"]

    def on_its_disk(size: str, free: int | None, *flags: str) -> subprocess.CompletedProcess:
        return subprocess.run(a_target_on_a_small_disk(small, small / "env", size, free, [*invoke, *flags]),
                              env=cli_env(index.url), capture_output=True, text=True, timeout=300)

    made = on_its_disk("64m", None, "--wait")  # the snapshot on Drive, for this prefix
    assert made.returncode == 0, made.stderr
    folder = drive / ".warmstart" / "v1" / "snapshots"
    archives = sorted(p.name for p in folder.iterdir())
    index_of = json.loads(next(folder.glob("*.json")).read_text())
    tar_bytes = index_of["tar_bytes"]
    free = 16 << 10 if room == "less than its tar" else -(-tar_bytes // 4096) * 4096 + 4096
    assert (free < tar_bytes) == (room == "less than its tar")

    done = on_its_disk("1m", free, "--offline")

    assert done.returncode == 3, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    if room == "less than its tar":
        assert last == (f"warmstart: error: snapshot {index_of['archive']} unpacks to {tar_bytes} bytes, more than "
                        f"the {free} bytes free in {small}/env; free disk space there, then run again"), last
    else:
        assert last.startswith(f"warmstart: error: {small}/env/{FOLDER_PREFIX}") and \
            ": No space left on device [errno 28]" in last, last
    assert "cannot be read" not in done.stderr and "uv" not in last and "Traceback" not in done.stderr
    assert FOLDER_PREFIX not in done.stdout.split("left:")[-1], "a staging folder is left"
    assert sorted(p.name for p in folder.iterdir()) == archives


@needs_mountns
def test_a_full_local_disk_while_wheels_come_off_drive_is_named_not_blamed_on_drive(demo, filled_drive, tmp_path):
    """The wheels are copied off Drive into a staging folder in TMPDIR. When that local disk is
    full, the run ends with exit 3 and the one line names the wheel, the local folder and the
    next step; it said "Drive is full (the Google Drive storage quota is used up)", which sent
    the user to free Drive. TMPDIR here is a real tmpfs of one 4 KiB page in a private mount
    namespace: the demo's first wheel (1 KB) fits, the second does not. Offline, so Drive is the
    only source."""
    small = tmp_path / "small"
    small.mkdir()
    invoke = [sys.executable, "-m", "invoke", "--search-root", str(REPO), "bootstrap", "--recipe", str(demo),
              "--drive", str(filled_drive), "--python", str(make_venv(tmp_path / "env")), "--offline"]

    done = subprocess.run(on_a_small_disk(small, invoke), env=cli_env(None, TMPDIR=str(small)),
                          capture_output=True, text=True, timeout=300)

    assert done.returncode == 3, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert re.search(r"beta-2.0-py3-none-any.whl not copied: it is \d+ bytes, more than the \d+ bytes free in", last), last
    assert f"{small}/" in last and "free local disk space, or set TMPDIR to a larger disk" in last, last
    assert "Drive is full" not in done.stderr and "Traceback" not in done.stderr


@needs_mountns
def test_a_file_on_drive_named_like_a_wheel_larger_than_the_free_disk_is_not_copied(demo, filled_drive, tmp_path, index):
    """A shared Drive can hold a file of any size under a locked wheel's name (here a sparse
    1 GiB one); the lock has no sizes to refuse it by, and its hash fails only at its end. It is
    not copied when the local disk (TMPDIR: a real 64 MiB tmpfs in a private mount namespace)
    has less room free: one warning naming it, and the wheel comes from the index. Before, the
    copy filled the disk and the run ended on ENOSPC."""
    wheel = next((filled_drive / ".warmstart" / "v1" / "wheels").glob("beta-*.whl"))
    with open(wheel, "wb") as out:
        out.truncate(1 << 30)
    small = tmp_path / "small"
    small.mkdir()
    python = make_venv(tmp_path / "env")
    invoke = [sys.executable, "-m", "invoke", "--search-root", str(REPO), "bootstrap", "--recipe", str(demo),
              "--drive", str(filled_drive), "--python", str(python)]

    done = subprocess.run(on_a_small_disk(small, invoke, size="64m"), env=cli_env(index.url, TMPDIR=str(small)),
                          capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, done.stderr
    assert f"{wheel} not copied: it is 1024.0 MiB, more than the" in done.stderr
    assert f"MiB free in {small}/" in done.stderr
    assert {k: v for k, v in installed(python).items() if k in LOCKED} == LOCKED


DEEP = b"[" * 100_000 + b"]" * 100_000  # a RecursionError for json.loads, were it not read with care


def test_deeply_nested_json_on_drive_is_unreadable_data_never_an_internal_error(demo, drive, tmp_path, index):
    env = cli_env(index.url)
    python = make_venv(tmp_path / "venv")
    assert run_cli("bootstrap", "--recipe", str(demo), "--drive", str(drive), "--python", str(python), env=env).code == 0
    store = drive / ".warmstart" / "v1"
    for index_file in (store / "snapshots").glob("*.json"):
        index_file.write_bytes(b'{"facts": ' + DEEP + b"}")
    (store / "usage" / "9999999999-deep.json").write_bytes(DEEP)
    (store / "placed.json").write_bytes(DEEP)
    shutil.rmtree(tmp_path / "venv")
    python = make_venv(tmp_path / "venv")

    offline = run_cli("bootstrap", "--recipe", str(demo), "--drive", str(drive), "--python", str(python),
                      "--offline", "--json", env=env)
    assert offline.code == 0, offline.stderr  # the wheels instead of the snapshot
    assert offline.report["snapshot"]["used"] is False and "nested too deeply" in offline.report["snapshot"]["reason"]
    for index_file in (store / "snapshots").glob("*.json"):  # the run set it aside and packed anew
        index_file.write_bytes(DEEP)
    pruned = run_cli("cache", "--drive", str(drive), "--prune", "--dry-run", env=env)
    assert pruned.code == 0, pruned.stderr
    assert "unreadable snapshot index" in pruned.stderr and "internal error" not in pruned.stderr


def test_a_shared_recipe_cannot_write_escape_sequences_to_the_terminal(drive, tmp_path, index):
    recipes = drive / ".warmstart" / "recipes"
    recipes.mkdir(parents=True)
    (drive / ".warmstart" / "requirements").mkdir()
    (drive / ".warmstart" / "requirements" / "evil.in").write_text("alpha\n")
    (recipes / "evil.toml").write_text('name = "evil"\ndescription = "\\u001b]0;pwned\\u0007\\u001b[2J\\rlooks fine"\n'
                                       '[requirements]\nin = "requirements/evil.in"\n')

    listed = run_cli("recipes", "--drive", str(drive), env=cli_env(index.url))

    assert listed.code == 0, listed.stderr
    assert "\x1b" not in listed.stdout and "\r" not in listed.stdout and "\x07" not in listed.stdout
    assert "\\x1b]0;pwned\\x07\\x1b[2J\\rlooks fine" in listed.stdout, listed.stdout


def test_invoke_cache_tells_the_truth(demo, drive, tmp_path, index):
    """Two recipes sharing wheels: each recipe's share is marked as shared, and the total is the
    folder's size, not their sum. A missing Drive is exit 3; bad input comes before any output;
    a prune with nothing to remove says so."""
    assert run_cli("bootstrap", "--recipe", str(demo), "--drive", str(drive),
                   "--python", str(make_venv(tmp_path / "env")), env=cli_env(index.url)).code == 0
    twin = drive / ".warmstart" / "recipes"
    twin.mkdir(parents=True)
    shutil.copytree(demo.parent.parent / "requirements", drive / ".warmstart" / "requirements")
    for name in ("one", "twin"):  # two recipes on Drive, over the same lock: they share every wheel
        (twin / f"{name}.toml").write_text(demo.read_text().replace('name = "demo"', f'name = "{name}"'))
    store = drive / ".warmstart" / "v1"
    folder_size = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())

    listed = run_cli("cache", "--drive", str(drive), env=cli_env())

    assert listed.code == 0, listed.stderr
    lines = listed.stdout.splitlines()
    total = next(line for line in lines if line.endswith("MiB  in all"))
    assert float(total.split()[0]) == round(folder_size / 2**20, 1)
    for name in ("one", "twin"):
        line = next(line for line in lines if line.split("MiB  ")[1].startswith(f"{name} "))
        assert "of it shared with other recipes" in line, listed.stdout
    assert not any(line.endswith("MiB  (named by no current lock or recipe)") for line in lines), \
        "every file here belongs to the recipes on Drive"
    (store / "wheels" / "zeta-1.0-py3-none-any.whl").write_bytes(bytes(3 << 20))  # of a lock gone since
    relisted = run_cli("cache", "--drive", str(drive), env=cli_env())
    assert "       3.0 MiB  (named by no current lock or recipe)" in relisted.stdout.splitlines(), relisted.stdout

    missing = run_cli("cache", "--drive", str(tmp_path / "no-drive"), env=cli_env())
    assert missing.code == 3 and "does not exist" in missing.stderr and missing.stdout == ""
    bad = run_cli("cache", "--drive", str(drive), "--prune", "--older-than", "abc", env=cli_env())
    assert bad.code == 2 and bad.stdout == "" and "warmstart: the cache at" not in bad.stderr
    nothing = run_cli("cache", "--drive", str(drive), "--prune", "--dry-run", env=cli_env())
    assert nothing.code == 0 and "nothing to prune" in nothing.stdout


@needs_netns
def test_a_drive_cache_folder_listing_more_than_a_cache_holds_is_not_read(demo, drive, tmp_path, index):
    """Drive is shared, so a cache folder may hold anything: 30,000 files of long names list
    over background.OUTPUT_MOST. A run reads none of that listing (its memory stays bounded),
    says which folder and what to do in one warning, and takes no wheel from there: a new
    environment installs from the index; a wiped one still restores its snapshot, found by its
    name. `invoke cache` is exit 3 with that line. Nothing in the folder is touched."""
    python = make_venv(tmp_path / "env")
    assert bootstrap(demo, drive, python, env=cli_env(index.url)).code == 0
    wheels = drive / ".warmstart" / "v1" / "wheels"
    for n in range(30_000):
        (wheels / f"{n:05d}-{'x' * 200}").touch()
    before = sorted(p.name for p in wheels.iterdir())
    said = (f"warmstart: warning: {drive / '.warmstart' / 'v1'} lists more files than a cache holds (over 8 MiB "
            "of names): this run takes no wheel from there; remove what does not belong there\n")

    new = bootstrap(demo, drive, make_venv(tmp_path / "new"), env=cli_env(index.url))
    shutil.rmtree(tmp_path / "env")
    wiped = bootstrap(demo, drive, make_venv(tmp_path / "env"), "--offline", env=cli_env(index.url),
                      offline_net=True)

    assert new.code == 0 and said in new.stderr, new.stderr
    look = next(step for step in new.report["steps"] if step["name"] == "cache")
    assert look["status"] == "warning" and look["detail"].startswith("0 of 3 wheels"), look
    install = next(step for step in new.report["steps"] if step["name"] == "install")
    assert install["status"] == "ok" and not install["detail"].startswith("0 "), install
    assert wiped.code == 0 and said in wiped.stderr, wiped.stderr
    assert wiped.report["snapshot"]["used"] and installed(python).keys() >= {"alpha", "beta"}, wiped.report
    assert sorted(p.name for p in wheels.iterdir()) == before
    listed = run_cli("cache", "--drive", str(drive), env=cli_env())
    assert listed.code == 3 and listed.stdout == "", listed
    assert listed.stderr.strip().splitlines()[-1] == (
        f"warmstart: error: the Drive cache at {drive} cannot be listed: {drive / '.warmstart' / 'v1'} lists more "
        "files than a cache holds (over 8 MiB of names); remove what does not belong there")


def test_where_there_is_no_find_drive_is_listed_alike_and_capped_alike(tmp_path, monkeypatch):
    """A machine may lack find (Colab and the docker image have it): the store lists its folders
    itself, to the same entries, and reads no more of a crowded folder than find's output is
    capped at: one warning, no wheel from there, as with find."""
    wheels = DriveStore(tmp_path / "drive").root / "wheels"
    wheels.mkdir(parents=True)
    (wheels / "alpha-1.0-py3-none-any.whl").write_bytes(b"wheel")
    (wheels / ".alpha-1.0-py3-none-any.whl.1a2b.part").write_bytes(b"half")
    (wheels / "beta-2.0-py3-none-any.whl").symlink_to("/etc/passwd")
    (wheels / "gamma-3.0-py3-none-any.whl").write_bytes(b"")
    for entry in wheels.iterdir():  # whole seconds: as find prints them and as stat gives them
        os.utime(entry, (1_700_000_000, 1_700_000_000), follow_symlinks=False)

    def listed(store):
        return [(e.kind, e.path, e.size, e.mtime, e.state) for e in store.entries()]

    with_find = listed(DriveStore(tmp_path / "drive"))
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))
    assert shutil.which("find") is None
    assert listed(DriveStore(tmp_path / "drive")) == with_find
    assert [state for *_, state in with_find] == ["temporary", "file", "not a file", "file"], with_find

    for n in range(40_000):
        (wheels / f"{n:05d}{'x' * 215}").touch()
    crowded = DriveStore(tmp_path / "drive")
    assert list(crowded.entries()) == [] and crowded.names("wheels") == []
    assert crowded.warnings == [f"{crowded.root} lists more files than a cache holds (over 8 MiB of names): "
                                "this run takes no wheel from there; remove what does not belong there"]
    assert crowded.down is None


def test_prune_reads_no_more_of_a_usage_record_than_one_holds_and_removes_only_its_own(drive):
    """Drive is shared: its usage folder may hold a file no run wrote (a note, a 1 GiB "record").
    Reading the records takes at most a record's size of each (memory stays bounded), and
    `invoke cache --prune` folds away only the records that are warmstart's; the others stay."""
    store = DriveStore(drive)
    store.record_use(["wheels/alpha-1.0-py3-none-any.whl"], now=1_000.0)
    store.record_use(["wheels/alpha-1.0-py3-none-any.whl", "wheels/beta-2.0-py3-none-any.whl"], now=2_000.0)
    usage = store.root / "usage"
    ours = sorted(p.name for p in usage.iterdir())
    (usage / "notes.json").write_text("not a record")
    with open(usage / "huge.json", "wb") as huge:
        huge.truncate(1 << 30)  # sparse: it costs no disk

    tracemalloc.start()
    try:
        when, records = store.last_used()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert when == {"wheels/alpha-1.0-py3-none-any.whl": 2_000.0, "wheels/beta-2.0-py3-none-any.whl": 2_000.0}
    assert sorted(p.name for p in records) == ours and len(ours) == 2
    assert peak < 16 << 20, peak

    pruned = run_cli("cache", "--drive", str(drive), "--prune", env=cli_env())
    assert pruned.code == 0, pruned.stderr
    assert sorted(p.name for p in usage.iterdir()) == ["huge.json", "notes.json"]


def test_prune_removes_only_files_named_as_warmstart_names_them(drive):
    """A shared Drive's cache folders may hold what no run wrote: a note, a README, a teammate's
    file. `--prune` removed each once idle (a .json in snapshots/ as an "unreadable index"); it
    now leaves every file not named as warmstart names the files of that folder, and says so.
    What is warmstart's, named by no lock here and idle, still goes."""
    root = DriveStore(drive).root
    ours = {"wheels": ["alpha-1.0-py3-none-any.whl"], "assets": ["a" * 64],
            "snapshots": ["demo-py311-0123456789abcdef.json",  # unreadable: an index warmstart names so
                          "demo-py311-0123456789abcdef-0123456789abcdef.tar.zst"],
            "locks": ["demo-py311-0123456789abcdef.txt"]}
    theirs = {"wheels": ["notes.txt"], "assets": ["README"], "snapshots": ["notes.json", "readme.md"],
              "locks": ["mine.txt"]}
    for kind in ours:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for name in ours[kind] + theirs[kind]:
            (root / kind / name).write_text("x")
            os.utime(root / kind / name, (1e9, 1e9))  # idle since 2001

    pruned = run_cli("cache", "--drive", str(drive), "--prune", env=cli_env())

    assert pruned.code == 0, pruned.stderr
    assert {kind: sorted(p.name for p in (root / kind).iterdir()) for kind in ours} == {
        kind: sorted(names) for kind, names in theirs.items()}
    for kind, names in theirs.items():
        for name in names:
            assert (f"warning: {root / kind / name} is not named as warmstart names its files there: never read, "
                    "never removed") in pruned.stderr


def test_prune_over_a_usage_folder_listing_more_than_a_cache_holds_removes_nothing(drive):
    """The usage folder is listed as the cache's others are, capped: 40,000 long names list over
    8 MiB, so not every record can be read, and a file another run used would look idle.
    `invoke cache --prune` is exit 3 with one line, and nothing is removed."""
    store = DriveStore(drive)
    store.record_use(["wheels/alpha-1.0-py3-none-any.whl"])  # used just now, by another checkout
    wheel = store.root / "wheels" / "alpha-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    wheel.write_bytes(b"wheel")
    os.utime(wheel, (0, 0))  # old by its own time: only its usage record keeps it
    for n in range(40_000):
        (store.root / "usage" / f"{n:05d}{'x' * 215}.json").touch()

    pruned = run_cli("cache", "--drive", str(drive), "--prune", env=cli_env())

    assert pruned.code == 3, pruned
    assert pruned.stderr.strip().splitlines()[-1] == (
        f"warmstart: error: the usage records in {drive} cannot all be read, so nothing is pruned: {store.root} lists "
        "more files than a cache holds (over 8 MiB of names); remove what does not belong there")
    assert wheel.read_bytes() == b"wheel" and len(list((store.root / "usage").iterdir())) == 40_001


def test_a_recipe_folder_holding_more_than_a_recipe_folder_does_is_read_no_further(drive):
    """The Drive's recipe folder is shared: one of 10,001 files is read no further than 10,000
    entries. A run naming a recipe is exit 2 with one line naming the folder and the ways out;
    the recipe given by its path still runs. With a few recipes there, an unknown name lists
    them abridged."""
    recipes = drive / ".warmstart" / "recipes"
    recipes.mkdir(parents=True)
    for n in range(10_001):
        (recipes / f"r{n:05d}.toml").touch()
    said = (f"warmstart: error: the recipe folder {recipes} holds more than 10,000 files, more than a recipe "
            "folder does: remove what does not belong there, or pass the recipe's file as --recipe PATH")

    listed = run_cli("recipes", "--drive", str(drive), env=cli_env())
    named = run_cli("bootstrap", "--recipe", "hyperlpr", "--drive", str(drive), "--dry-run", env=cli_env())
    by_path = run_cli("assets", "--recipe", str(REPO / "recipes" / "hyperlpr.toml"), "--drive", str(drive),
                      env=cli_env())

    assert listed.code == 2 and listed.stderr.strip().splitlines()[-1] == said, listed
    assert named.code == 2 and named.stderr.strip().splitlines()[-1] == said, named
    assert by_path.code == 0 and "litemodel_cls_96x_r1.onnx" in by_path.stdout, by_path

    shutil.rmtree(recipes)
    recipes.mkdir()
    for n in range(30):
        (recipes / f"team-{n:02d}.toml").touch()
    unknown = run_cli("bootstrap", "--recipe", "nosuch", "--drive", str(drive), "--dry-run", env=cli_env())
    assert unknown.code == 2
    assert "known recipes: hyperlpr, hyperlpr-train, team-00, team-01, " in unknown.stderr
    assert ", team-17 and 13 more (or pass a path to a .toml file)" in unknown.stderr, unknown.stderr


class _Endless(http.server.BaseHTTPRequestHandler):
    """An index's file server that sends a wheel far larger than its listing says: with a
    Content-Length that says so (`stated`), or streamed with none until the client hangs up,
    32 MiB at most. `sent` counts what went out."""

    stated = True
    sent = 0

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        if self.stated:
            self.send_header("Content-Length", str(32 << 20))
        self.end_headers()
        block = bytes(64 << 10)
        try:
            for _ in range(512):
                self.wfile.write(block)
                type(self).sent += len(block)
        except OSError:  # the client hung up
            pass
        self.close_connection = True


@pytest.mark.parametrize("stated", [True, False], ids=["content-length", "streamed"])
def test_a_wheel_larger_than_the_index_lists_is_not_read_past_its_size(tmp_path, stated):
    """A mirror (or a hostile index) that serves more than the size its JSON page listed for a
    file: the download ends there, one line naming the URL and the sizes, no part file left;
    the disk is not filled for the sha256 to fail at the end. A real HTTP server on 127.0.0.1 and
    real requests."""
    handler = type("Handler", (_Endless,), {"stated": stated, "sent": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/files/beta-2.0-py3-none-any.whl"
    dest = tmp_path / "wheels" / "beta-2.0-py3-none-any.whl"
    try:
        with pytest.raises(DownloadFailed) as failed:
            Downloader(IndexSettings((f"http://127.0.0.1:{server.server_address[1]}/simple",))).fetch(
                [Job(url, "0" * 64, dest, size=100_000)])
    finally:
        server.shutdown()
    assert str(failed.value).startswith(f"{url} served ") and "where the index lists 100000 bytes for it" in str(failed.value)
    assert not dest.exists() and list(dest.parent.iterdir()) == []
    # the socket buffers take some MiB before the client hangs up (4.1 MiB seen); uncapped, all 32 went
    assert handler.sent < 16 << 20, f"{handler.sent} bytes sent before the client hung up"


@pytest.mark.parametrize("in_the_way", [".warmstart link", "v1 file", "wheels link", "snapshots file", "assets link"])
def test_a_link_or_file_where_the_drive_cache_keeps_a_folder_is_refused_before_anything_changes(in_the_way, demo, drive,
                                                                                             tmp_path, index):
    """Followed, a link at `.warmstart/v1/wheels` had the Drive worker write the wheels wherever it
    pointed (into /etc, as root), and prune would remove files there; a file there was said as
    "File exists [FileExistsError 17] [OSError None]" after the install. Now a run, its status,
    --dry-run, `invoke cache` and `invoke assets` (for the folders an asset is kept in) say which,
    in one line, exit 2, before anything is installed or pruned; what it points to is not touched."""
    outside = tmp_path / "outside"
    (outside / "v1" / "wheels").mkdir(parents=True)
    (outside / "v1" / "wheels" / "alpha-1.0-py3-none-any.whl").write_bytes(b"not ours")
    where, kind = in_the_way.split()
    path = {".warmstart": drive / ".warmstart", "v1": drive / ".warmstart" / "v1"}.get(
        where, drive / ".warmstart" / "v1" / where)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "link":
        path.symlink_to(outside if where == ".warmstart" else outside / "v1" / "wheels")
    else:
        path.write_text("the user's\n")
    python = make_venv(tmp_path / "venv")
    said = (f"warmstart: error: {path} is a {kind} where warmstart's cache keeps a folder of its own; "
            "move it away and run again")

    runs = [bootstrap(demo, drive, python, *flags, env=cli_env(index.url)) for flags in ((), ("--dry-run",))]
    status = run_cli("status", "--recipe", str(demo), "--drive", str(drive), "--python", str(python), env=cli_env(index.url))
    listed = run_cli("assets", "--recipe", str(demo), "--drive", str(drive), env=cli_env())  # as bootstrap sees them
    cached = run_cli("cache", "--drive", str(drive), "--prune", env=cli_env())

    for run in [*runs, status, cached, *([listed] if where in (".warmstart", "v1", "assets") else [])]:
        assert run.code == 2, run
        assert run.stderr.strip().splitlines()[-1] == said
    assert not {"alpha", "beta"} & installed(python).keys()
    assert sorted(p.name for p in (outside / "v1" / "wheels").iterdir()) == ["alpha-1.0-py3-none-any.whl"]
    assert (outside / "v1" / "wheels" / "alpha-1.0-py3-none-any.whl").read_bytes() == b"not ours"
    assert kind == "link" or path.read_text() == "the user's\n"


@pytest.mark.parametrize("find", ["find", "no find"])
def test_the_store_never_writes_reads_or_removes_through_a_link_where_its_folder_goes(tmp_path, monkeypatch, find):
    """What the Drive worker and warmstart.sh write comes through the store: a link where a
    folder of its own goes takes nothing, whether find (a child: a look at a mount that stopped
    answering holds no thread of the run's) or, where there is none, the store itself looks."""
    if find == "no find":
        monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "alpha-1.0-py3-none-any.whl").write_bytes(b"not ours")
    store = DriveStore(tmp_path / "drive")
    store.root.mkdir(parents=True)
    (store.root / "wheels").symlink_to(outside)
    wheel = tmp_path / "beta-2.0-py3-none-any.whl"
    wheel.write_bytes(b"beta")
    said = f"{store.root / 'wheels'} is a link where warmstart's cache keeps a folder of its own"

    assert store.put("wheels", wheel.name, wheel) is False
    assert store.warnings[-1] == f"wheel {wheel.name} not cached on Drive: {said}; move it away and run again"
    with pytest.raises(OSError, match="is a link where"):
        store.put_text("wheels", "x.json", "{}")
    assert store.has("wheels", "alpha-1.0-py3-none-any.whl") is False
    assert store.get("wheels", "alpha-1.0-py3-none-any.whl", tmp_path / "got.whl",
                     {hashlib.sha256(b"not ours").hexdigest()}) is None
    with pytest.raises(OSError, match="is a link where"):
        store.open("wheels", "alpha-1.0-py3-none-any.whl")
    assert list(store.entries("wheels")) == [] and store.unlisted == said
    assert store.remove(store.entries()) == 0
    assert sorted(p.name for p in outside.iterdir()) == ["alpha-1.0-py3-none-any.whl"]


_KILLS_ITSELF = "import os, signal; print('loading the model', flush=True); os.kill(os.getpid(), signal.SIGKILL)"


@pytest.mark.parametrize(("kind", "said"), [
    (f'python = "{_KILLS_ITSELF}"', "killed by SIGKILL, most often for want of memory"),
    # bash runs the first of two commands in a child, and says its SIGKILL as its own exit 137
    (f'run = "python -c \\"{_KILLS_ITSELF}\\" && echo done"',
     "exit 137: a command it ran was killed by SIGKILL, most often for want of memory"),
], ids=["python", "a shell's two commands"])
def test_a_check_a_signal_ends_is_said_killed_by_it_not_by_its_last_line(kind, said, demo, drive, tmp_path, index):
    """Colab's OOM killer ends a check that loads a model too large for the VM's RAM with SIGKILL:
    the check's line said the last thing it printed ("loading the model") as its verdict."""
    demo.write_text(demo.read_text() + f'\n[[checks]]\nname = "oom"\n{kind}\n')
    result = run_cli("bootstrap", "--recipe", str(demo), "--drive", str(drive), "--json",
                     "--python", str(make_venv(tmp_path / "env")), env=cli_env(index.url))

    assert result.code == 1, result.stderr
    assert f"check oom: FAILED  {said}; its last line: loading the model\n" in result.stderr
    (check,) = result.report["checks"]
    output = check["output"].splitlines()  # bash puts its own "Killed" line between them
    assert (output[0], output[-1]) == ("loading the model", said)
