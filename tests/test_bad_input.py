"""Bad input: each case gets a one-line error naming the file, key or package and the next step,
exit 2, and changes nothing on disk. Plus property-based tests of the recipe loader."""

from __future__ import annotations

import hashlib
import json
import os
import re
import string
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    INVOKE,
    LOCKED,
    REPO,
    bootstrap,
    build_wheel,
    cli_env,
    dead_url,
    installed,
    make_venv,
    run_cli,
    serve_folder,
    write_simple_index,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from warmstart.errors import BadInput
from warmstart.recipe import load_recipe


def resign(lock: Path, body_edit) -> None:
    """Edit a lock's body and keep its lock-sha256 line consistent (a forged but signed lock)."""
    head, _, body = lock.read_text().partition("# lock-sha256: ")
    body = body.split("\n", 1)[1]
    body = body_edit(body)
    lock.write_text(f"{head}# lock-sha256: {hashlib.sha256(body.encode()).hexdigest()}\n{body}")


def lock_of(recipe: Path) -> Path:
    return next((recipe.parent.parent / "requirements").glob("demo-py3*-*.txt"))


def replace_in(path_of, old: str, new: str):
    def edit(recipe: Path) -> None:
        path = path_of(recipe)
        path.write_text(path.read_text().replace(old, new, 1))
    return edit


CASES = {
    "malformed TOML": (replace_in(lambda r: r, "required = false", "required = "),
                       r"demo\.toml: not valid TOML: .*line \d+, column \d+"),
    "unknown key": (replace_in(lambda r: r, "workdir =", "workdri ="),
                    r"unknown key 'drive\.workdri' \(did you mean 'drive\.workdir'\?\)"),
    "wrong type": (replace_in(lambda r: r, 'workdir = "Demo"', "workdir = 3"),
                   r"'drive\.workdir' must be a string, got 3"),
    "invalid exclude": (replace_in(lambda r: r, '"cpu-only"', '"cpu only!"'),
                        r"'requirements\.exclude' holds 'cpu only!', which is no package name"),
    "invalid requirement": (replace_in(lambda r: r.parent.parent / "requirements" / "demo.in", "alpha", "alpha beta"),
                            r"demo\.in:1: 'alpha beta' is not a valid requirement"),
    "stale lock": (replace_in(lambda r: r.parent.parent / "requirements" / "demo.in", "alpha", "alpha>=0.5"),
                   r"lock is stale \(demo\.in or the recipe.s excludes changed since it was compiled\); "
                   rf"run `{re.escape(INVOKE)} lock --recipe \S+/recipes/demo\.toml --python-version"),
    "lock edited by hand": (lambda r: lock_of(r).write_text(re.sub("sha256:[0-9a-f]{8}", "sha256:00000000",
                                                                   lock_of(r).read_text(), count=1)),
                            r"edited by hand since `invoke lock` wrote it .*; recompile it with "
                            rf"`{re.escape(INVOKE)} lock --recipe \S+/recipes/demo\.toml --python-version 3\.\d+`$"),
    "lock without hashes": (lambda r: resign(lock_of(r), lambda b: re.sub(r" \\\n +--hash=sha256:[0-9a-f]+", "", b)),
                            r"'alpha' has no --hash=sha256 lines; recompile with "
                            rf"`{re.escape(INVOKE)} lock --recipe \S+/recipes/demo\.toml --python-version 3\.\d+`$"),
    "asset outside home": (lambda r: r.write_text(r.read_text() + f'\n[[assets]]\nurl = "https://example.org/m.bin"\n'
                                                  f'sha256 = "{"a" * 64}"\ndest = "/etc/m.bin"\n'),
                           r"'assets\[0\]\.dest' '/etc/m\.bin' is outside your home folder .*allow_outside = true"),
    # Before, the run went on to the asset step and told the user to move the workdir away.
    "asset onto the workdir": (lambda r: r.write_text(r.read_text() + f'\n[[assets]]\nurl = "https://example.org/m.bin"\n'
                                                      f'sha256 = "{"a" * 64}"\ndest = ""\n'),
                               r"'assets\[0\]\.dest' '' names a folder .*; a file asset's dest is the file it becomes, "
                               r"e\.g\. 'm\.bin'$"),
    "asset sha256 malformed": (lambda r: r.write_text(r.read_text() + '\n[[assets]]\nurl = "https://example.org/m"\n'
                                                      'sha256 = "abc"\ndest = "m"\n'),
                               r"'assets\[0\]\.sha256' must be 64 lower-case hex digits"),
    # (a shared Drive's recipe folder may hold anything: a data file is read up to config.INPUT_MOST)
    "recipe of 1 GiB": (lambda r: os.truncate(r, 1 << 30),  # sparse: it costs no disk
                        r"demo\.toml: cannot be read \(larger than 16 MiB, which no recipe, requirements, lock or "
                        r"patch file is; put the right file in its place\)"),
    "recipe that is a named pipe": (lambda r: (r.unlink(), os.mkfifo(r)),  # its read would wait for a writer
                                    r"demo\.toml: cannot be read \(not a regular file; put the file itself in its "
                                    r"place\)"),
}


def demo_in(recipe: Path) -> Path:
    return recipe.parent.parent / "requirements" / "demo.in"


# Lock inputs are requirements only: what a hostile or careless `.in` tries, for `invoke lock`.
HOSTILE_IN = {
    "an extra index over plain http": ("--extra-index-url http://evil.example/simple\n--trusted-host evil.example\nalpha\n",
                                       r"demo\.in:1: '--extra-index-url' is not allowed here"),
    "an index url": ("--index-url=https://user:secret@mirror.example/simple\nalpha\n", r"demo\.in:1: '--index-url' is not allowed"),
    "find-links": ("-f /tmp/wheels\nalpha\n", r"demo\.in:1: '-f' is not allowed"),
    "an include outside the project": ("alpha\n-r /etc/hostname\n", r"demo\.in:2: '-r' is not allowed here"),
    "an include of itself": ("-r demo.in\n", r"demo\.in:1: '-r' is not allowed here.*demo\.in includes itself: "
                                              r"remove that include$"),
    # Not from an index: pip-compile locked `name @ URL` without a version, and warmstart then refused
    # its own lock ("is not pinned with ==; recompile with `invoke lock`", the command just run).
    "a direct URL": ("alpha\nbeta @ https://user:secret@example.org/beta-2.0-py3-none-any.whl\n",
                     r"demo\.in:2: 'beta @ https://\S+' names a URL \(`beta @ \.\.\.`\): warmstart installs the "
                     r"packages of the index, by name, .*name it as beta==VERSION$"),
    "an editable of the project": ("-e .\nalpha\n", r"demo\.in:1: '-e' is not allowed here: .*your own code runs "
                                                    r"from the recipe's workdir \(\[drive\] workdir\): list here "
                                                    r"what it needs$"),
    "a path": ("alpha\n./mypkg\n", r"demo\.in:2: './mypkg' is a path or URL, not a package's name: .*your own "
                                   r"code runs from the recipe's workdir"),
    "a VCS URL": ("git+https://example.org/x.git#egg=x\n", r"demo\.in:1: 'git\+https://\S+' is a path or URL"),
    "a hash of the user's": (f"alpha --hash=sha256:{'0' * 64}\n",
                             r"demo\.in:1: 'alpha --hash=sha256:0+' holds an option, which is not allowed here: "
                             r"list the requirement alone \(`invoke lock` adds the hashes\)$"),
}


@pytest.mark.parametrize("case", list(HOSTILE_IN))
def test_a_in_file_holds_requirements_only(demo, index, case):
    text, message = HOSTILE_IN[case]
    demo_in(demo).write_text(text)
    lock = lock_of(demo)
    before = lock.read_bytes()

    result = run_cli("lock", "--recipe", str(demo), env=cli_env(index.url))

    assert result.code == 2, result.stderr
    error = result.stderr.strip().splitlines()
    assert len(error) == 1 and re.search(message, error[0]), result.stderr
    assert "evil.example" not in result.stderr and "secret" not in result.stderr
    assert "Traceback" not in result.stderr and lock.read_bytes() == before


@pytest.mark.parametrize("version", ["abc", "3.12.1", "3"])
def test_lock_for_a_python_version_that_is_not_a_minor_one_is_bad_input_before_any_resolver(demo, index, version):
    """It names the lock file (py312); uv's own refusal of "abc" was exit 1 with its usage text,
    and "3.12.1" would have written a lock named py3121."""
    folder = demo.parent.parent / "requirements"
    before = sorted(folder.rglob("*.txt"))

    result = run_cli("lock", "--recipe", str(demo), "--python-version", version, env=cli_env(index.url))

    assert result.code == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"warmstart: error: --python-version takes a minor version of Python 3, as 3.12, got '{version}'"]
    assert sorted(folder.rglob("*.txt")) == before


@pytest.mark.parametrize("platform", ["win_amd64", "macos_arm64", "linux"])
def test_lock_for_a_platform_no_vm_restores_is_bad_input_before_any_resolver(demo, platform):
    """uv resolved a Windows or macOS lock (a minute of the index for hyperlpr), then warmstart
    refused it: "reading CUDA libraries is only done for manylinux locks". No index is given here:
    nothing is asked of one."""
    folder = demo.parent.parent / "requirements"
    before = sorted(folder.rglob("*.txt"))

    result = run_cli("lock", "--recipe", str(demo), "--platform", platform, "--python-version", "3.12",
                     env=cli_env("http://127.0.0.1:9/simple"))

    assert result.code == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"warmstart: error: --platform '{platform}' is not one warmstart locks for: manylinux_x86_64 or "
        "manylinux_aarch64 (the Linux VMs it restores)"]
    assert sorted(folder.rglob("*.txt")) == before


@pytest.mark.parametrize(("flags", "said"), [
    # uv and pip-tools pass over a name the lock does not pin: the lock came out the same, unsaid
    (["--upgrade-package", "bata"], "--upgrade-package 'bata': no lock of demo pins it (did you mean 'beta'?); name "
                                    "a package the lock pins, or add it to demo.in"),
    # it was "no image has Python  (): leave --python-version out, ..."
    (["--platform-profile", "local"], "the platform profile 'local' publishes no images to lock against: its VMs "
                                      "use the bare lock, which `invoke lock` without --platform-profile makes"),
    # it checked every lock, of every image and Python, as if the flags had not been given
    (["--check", "--image", "colab-2026.07", "--python-version", "3.12"],
     "--check checks every lock of the recipe, for every Python, platform and image, and compiles none: leave out "
     "--python-version, --image"),
])
def test_lock_flags_that_would_change_nothing_are_bad_input_before_any_resolver(demo, flags, said):
    folder = demo.parent.parent / "requirements"
    before = {path: path.read_bytes() for path in folder.rglob("*.txt")}

    result = run_cli("lock", "--recipe", str(demo), *flags, env=cli_env("http://127.0.0.1:9/simple"))

    assert result.code == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"warmstart: error: {said}"]
    assert {path: path.read_bytes() for path in folder.rglob("*.txt")} == before


def test_an_upgrade_package_the_lock_pins_is_taken_by_its_name_as_pip_compares_it(demo, index):
    result = run_cli("lock", "--recipe", str(demo), "--upgrade-package", "Beta", env=cli_env(index.url))
    assert result.code == 0, result.stderr


@pytest.mark.parametrize("resolver", ["pip-tools", "uv"])
def test_a_requirement_the_index_lacks_is_the_resolvers_reasons_then_one_error_line(demo, index, resolver):
    """pip-tools locks for this Python, uv for another (the real ones, against the index on
    127.0.0.1). Their reasons came folded into the error line, `\\n` and all, pip-compile's
    two tracebacks included; now a line each, tracebacks down to their last line, then the error."""
    demo_in(demo).write_text("alpha\nno-such-dist\n")
    other = "3.13" if sys.version_info[:2] != (3, 13) else "3.12"
    versions = ["--python-version", other] if resolver == "uv" else []

    result = run_cli("lock", "--recipe", str(demo), *versions, env=cli_env(index.url))

    assert result.code == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"warmstart: error: {resolver} could not lock ") and lines[-1].endswith(
        ": its reasons are above"), lines[-1]
    reasons = [line for line in lines if line.startswith(f"warmstart: {resolver}: ")]
    assert reasons and any("no-such-dist" in line for line in reasons), result.stderr
    assert "Traceback" not in result.stderr and "\\n" not in result.stderr
    assert not any("  File " in line for line in lines), "no frames of the resolver's own traceback"


def test_an_installer_refusing_what_the_index_serves_says_why_a_line_each_then_one_error_line(demo, drive, tmp_path):
    """An index serving other files under the locked names: the real uv (which fetches while it
    installs, the run not waiting for Drive) refuses them by the lock's hashes. Its words came
    folded into the error line; now they are the report's `error_detail`, printed a line each
    above the one error line. The line ends with the command that locks what this index serves
    (it said "Recompile with `invoke lock`", which kept the pins' hashes), and it does, pasted."""
    other = tmp_path / "other"
    (other / "files").mkdir(parents=True)
    for name, version in LOCKED.items():
        build_wheel(other / "files", name, version, extra={f"{name.replace('-', '_')}/other.txt": b"not locked"})
    write_simple_index(other)
    url, server = serve_folder(other)
    try:
        env = {k: v for k, v in cli_env(f"{url}/simple").items() if k != "WARMSTART_WAIT"}
        python = make_venv(tmp_path / "env")
        result = bootstrap(demo, drive, python, "--installer", "uv", env=env)
        relock = result.stderr.rsplit("lock what it serves: `", 1)[-1].removesuffix("`\n")
        relocked = subprocess.run(relock, shell=True, capture_output=True, text=True, cwd=REPO, env=env)
        again = bootstrap(demo, drive, python, "--installer", "uv", env=env)
    finally:
        server.shutdown()

    assert result.code == 2, result.stderr
    report = json.loads(result.stdout)
    assert report["error"].startswith("uv found files whose sha256 the lock does not list") and "\n" not in report["error"]
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert report["error"].endswith(f"If this is the index to install from, lock what it serves: `{INVOKE} lock "
                                    f"--recipe {demo} --python-version {minor} --upgrade`"), report["error"]
    assert relocked.returncode == 0 and again.code == 0, relocked.stderr + again.stderr
    assert report["error_detail"] and all(line.startswith("uv: ") for line in report["error_detail"])
    assert any("hash" in line.lower() for line in report["error_detail"]), report["error_detail"]
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == f"warmstart: error: {report['error']}"
    assert lines[-1 - len(report["error_detail"]):-1] == [f"warmstart: {line}" for line in report["error_detail"]]
    assert "\\n" not in result.stderr


def test_invoke_image_without_its_required_flags_names_them():
    """Each missing flag was None on its way to Path(), exit 70 "a bug in warmstart"."""
    result = run_cli("image", "--name", "colab-next", env=cli_env())

    assert result.code == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"warmstart: error: invoke image needs --freeze, --python, --source (see `{INVOKE} --help image`)"]


def test_a_lock_for_an_image_that_does_not_exist_names_the_command_that_adds_one(demo):
    """It said "add it with `invoke image`": not the command as typed, nor one that runs pasted."""
    result = run_cli("lock", "--recipe", str(demo), "--image", "colab-next", env=cli_env())

    assert result.code == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("warmstart: error: no image 'colab-next' in ") and line.endswith(
        f"; add it with the image command (see `{INVOKE} image --help`)"), line
    pasted = subprocess.run(line.split("(see `")[1].split("`")[0], shell=True, capture_output=True, text=True,
                            cwd=REPO, env=cli_env())
    assert pasted.returncode == 0 and "--freeze" in pasted.stdout, pasted.stderr


def test_invoke_image_for_a_profile_that_does_not_exist_is_bad_input_writing_nothing(tmp_path):
    """It wrote envs/images/NAME.toml for a profile no VM has: no `--platform-profile` ever read it."""
    freeze = tmp_path / "freeze.txt"
    freeze.write_text("numpy==2.3.0\n")
    before = sorted((REPO / "envs").rglob("*"))

    try:
        result = run_cli("image", "--name", "mars-1", "--profile", "mars", "--freeze", str(freeze), "--python",
                         "3.13.1", "--source", "x@y", env=cli_env())
        after = sorted((REPO / "envs").rglob("*"))
    finally:  # what a regression would write goes, not into the next test's checkout
        for written in (REPO / "envs" / "images").glob("mars-1.*"):
            written.unlink()

    assert result.code == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"warmstart: error: --profile='mars' names no file in {REPO / 'envs'}; known platforms: "
                           "colab, "), line
    assert after == before


@pytest.mark.parametrize(("python", "flags", "said"), [
    (">=3.13", ["--python-version", "3.12"], ["the recipe needs Python >=3.13, not 3.12"]),
    (">=3.13", ["--image", "colab-2026.07"], ["no lock for the image colab-2026.07 (Python 3.12.13)",
                                              "the recipe needs Python >=3.13: no image asked for has it, so no "
                                              "lock is made"]),
    (">=3.14", ["--platform-profile", "colab"], ["no lock for the image colab-2026.04 (Python 3.12.13)",
                                                 "no lock for the image colab-2026.07 (Python 3.12.13)",
                                                 "no lock for the image colab-latest (Python 3.13.15)",
                                                 "the recipe needs Python >=3.14: no image asked for has it"]),
    (">=3.8", ["--platform-profile", "colab", "--python-version", "3.11"], ["no image has Python 3.11 (colab-2026.04 "
                                                                           "3.12.13, colab-2026.07 3.12.13, "
                                                                           "colab-latest 3.13.15)"]),
], ids=["python-version", "image", "profile", "no-image-for-it"])
def test_no_lock_is_made_for_a_python_the_recipe_does_not_support(demo, python, flags, said):
    """bootstrap refuses a Python outside the recipe's `python`, so a lock for one would never
    be used: refused before any download (no index here), naming the recipe; each image of a
    profile left out is said."""
    demo.write_text(demo.read_text().replace('python = ">=3.8"', f'python = "{python}"'))
    before = sorted((demo.parent.parent / "requirements").rglob("*"))

    result = run_cli("lock", "--recipe", str(demo), *flags, env=cli_env())

    assert result.code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == len(said) and all(part in line for part, line in zip(said, lines, strict=True)), lines
    assert lines[-1].startswith("warmstart: error: ")
    assert sorted((demo.parent.parent / "requirements").rglob("*")) == before


def test_a_minor_version_is_supported_when_some_release_of_it_is(tmp_path):
    recipe = tmp_path / "recipes" / "r.toml"
    recipe.parent.mkdir()
    (tmp_path / "requirements").mkdir()
    (tmp_path / "requirements" / "r.in").write_text("alpha\n")
    recipe.write_text('name = "r"\npython = ">=3.12.2,!=3.13.*"\n[requirements]\nin = "requirements/r.in"\n')
    loaded = load_recipe(str(recipe), tmp_path)
    assert [v for v in ("3.11", "3.12", "3.13", "3.14") if loaded.supports(v)] == ["3.12", "3.14"]
    assert not loaded.supports("3.12.1") and loaded.supports("3.12.2")


def test_lock_without_a_recipe_is_bad_input_naming_both_ways_on():
    """It was exit 1, as a failed download is; every other task's missing --recipe is exit 2."""
    result = run_cli("lock", env=cli_env())

    assert result.code == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("warmstart: error: --recipe NAME is needed (see `") and "recipes` for the names" in line
    assert line.endswith("lock --check` checks every recipe's locks)"), line


def test_lock_for_an_unknown_platform_profile_names_the_flag_not_the_variable(demo):
    result = run_cli("lock", "--recipe", str(demo), "--platform-profile", "mars", env=cli_env())

    assert result.code == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("warmstart: error: --platform-profile='mars' names no file in "), line
    assert "WARMSTART_PLATFORM" not in line


@pytest.mark.parametrize(("command", "given", "named"), [
    (["bootstrap", "--cache", "s3://"], {}, "--cache s3://..."),
    (["bootstrap", "--cache", "gs:///team"], {}, "--cache gs://..."),
    (["bootstrap"], {"WARMSTART_CACHE": "s3://writer:secret@/team"}, "WARMSTART_CACHE s3://..."),
    (["cache", "--cache", "s3a://"], {}, "--cache s3a://..."),
])
def test_a_team_cache_url_without_a_bucket_is_bad_input_naming_where_it_came_from(
        demo, drive, tmp_path, command, given, named):
    """Taken as it was, the store's own first folder (v1) was the bucket: every write went there."""
    result = run_cli(*command, *(["--recipe", str(demo), "--drive", str(drive)] if command[0] == "bootstrap" else []),
                     env=cli_env() | given)

    assert result.code == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    scheme = named.split()[1].removesuffix("...")
    assert line == f"warmstart: error: {named} names no bucket: give it as {scheme}BUCKET/PREFIX"
    assert "secret" not in result.stderr and list(drive.iterdir()) == []


@pytest.mark.parametrize(("command", "given", "said"), [
    (["bootstrap", "--cache", "s3://writer:secret@lab/team"], {},
     "--cache s3://***@lab/team: an object store's URL takes no credentials; give it as s3://lab/team, and the "
     "credentials in AWS's variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or a profile in ~/.aws"),
    (["cache"], {"WARMSTART_CACHE": "gs://secret@lab"},
     "WARMSTART_CACHE gs://***@lab: an object store's URL takes no credentials; give it as gs://lab, and the "
     "credentials as Google application default credentials (on Colab: google.colab.auth.authenticate_user())"),
])
def test_credentials_in_an_object_stores_url_are_bad_input_saying_where_they_go(demo, drive, command, given, said):
    """s3fs and gcsfs read no user:password@ from a URL: they took it for the bucket's name, and
    the team cache was one warning ("Invalid bucket name '***@lab'") on every run, and
    `invoke cache` a 300-character ParamValidationError."""
    recipe = ["--recipe", str(demo), "--drive", str(drive)] if command[0] != "cache" else ["--drive", str(drive)]
    result = run_cli(*command, *recipe, env=cli_env() | given)

    assert result.code == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"warmstart: error: {said}"]
    assert "secret" not in result.stderr + result.stdout and list(drive.iterdir()) == []


_NO_CACHE_THERE = {
    "memory": "is held in one process's memory and gone when it ends",
    "http": "is a web server, which a cache cannot be kept on (it lists no sizes and takes no writes)",
    "https": "is a web server, which a cache cannot be kept on (it lists no sizes and takes no writes)",
}


@pytest.mark.parametrize(("command", "given", "named"), [
    (["bootstrap", "--cache", "memory://team"], {}, "--cache memory"),
    (["status"], {"WARMSTART_CACHE": "memory://team"}, "WARMSTART_CACHE memory"),
    (["cache", "--cache", "memory://"], {}, "--cache memory"),
    (["bootstrap", "--cache", "http://127.0.0.1:9/team"], {}, "--cache http"),
    (["status"], {"WARMSTART_CACHE": "https://lab.example.org/warmstart"}, "WARMSTART_CACHE https"),
])
def test_a_team_cache_where_no_cache_can_be_kept_is_bad_input(demo, drive, tmp_path, command, given, named):
    """fsspec's memory:// was taken as any other store: the Drive worker's writes to the team
    cache went into that worker's own memory and were lost as it ended, and no run ever read them.
    A web server's http:// was too: every run warned "InvalidUrlClientError: http:///127.0.0.1..."
    and went on without it (its listing, a page's links, has no sizes, and it takes no writes)."""
    recipe = ["--recipe", str(demo), "--drive", str(drive)] if command[0] != "cache" else ["--drive", str(drive)]
    result = run_cli(*command, *recipe, env=cli_env() | given)

    assert result.code == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    flag, scheme = named.split()
    assert line == (f"warmstart: error: {flag} {scheme}://... {_NO_CACHE_THERE[scheme]}: give a folder or a shared "
                    "store (s3://BUCKET/PREFIX, gs://BUCKET/PREFIX)")
    assert list(drive.iterdir()) == []


@pytest.mark.parametrize("given", [{}, {"WARMSTART_CACHE_READ_ONLY": "1"}])
def test_cache_read_only_without_a_team_cache_is_bad_input_before_anything_changes(demo, drive, tmp_path, index,
                                                                                   given):
    """--cache-read-only without --cache (or WARMSTART_CACHE) was ignored: the run went on from
    Drive and the index, never saying that the team cache it was told to read was not there."""
    python = make_venv(tmp_path / "venv")

    result = run_cli("bootstrap", "--recipe", str(demo), "--drive", str(drive), "--python", str(python),
                     "--cache-read-only", env=cli_env(index.url) | given)

    assert result.code == 2, result.stderr
    assert result.stderr.splitlines() == [
        "warmstart: error: --cache-read-only reads a team cache, and this run has none: give it with "
        "--cache URL (or WARMSTART_CACHE), or leave --cache-read-only out"]
    assert list(drive.iterdir()) == [] and installed(python) == {}


def test_the_read_only_variable_alone_is_a_default_for_team_caches_not_an_error(demo, drive, tmp_path, index):
    python = make_venv(tmp_path / "venv")

    result = run_cli("bootstrap", "--recipe", str(demo), "--drive", str(drive), "--python", str(python),
                     "--packages-only", env=cli_env(index.url, WARMSTART_CACHE_READ_ONLY="1"))

    assert result.code == 0, result.stderr
    assert installed(python).keys() >= {"alpha", "gpu-build"}


def test_a_in_file_may_include_another_file_of_the_project(demo, index):
    (demo.parent.parent / "requirements" / "more.in").write_text("gpu-build\n")
    demo_in(demo).write_text("alpha\n-r more.in\n")

    assert run_cli("lock", "--recipe", str(demo), env=cli_env(index.url)).code == 0
    assert run_cli("lock", "--check", "--recipe", str(demo), env=cli_env()).code == 0
    (demo.parent.parent / "requirements" / "more.in").write_text("gpu-build>=1.0\n")
    assert run_cli("lock", "--check", "--recipe", str(demo), env=cli_env()).code == 1, "an include is an input too"


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_changes_nothing(demo, drive, tmp_path, index, case):
    edit, message = CASES[case]
    edit(demo)
    python = make_venv(tmp_path / "venv")
    before = installed(python)

    result = run_cli("bootstrap", "--recipe", str(demo), "--drive", str(drive), "--python", str(python),
                     env=cli_env(index.url))

    assert result.code == 2, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("warmstart: error: ") and re.search(message, error), error
    assert "Traceback" not in result.stderr
    assert list(drive.iterdir()) == [] and installed(python) == before


@pytest.mark.parametrize("where", ["Demo", "Demo/sub"])
def test_a_file_where_the_workdir_goes_is_bad_input_before_anything_changes(demo, drive, tmp_path, index, where):
    """Before, mkdir met it after the install, and its "File exists" read as a disk's fault."""
    demo.write_text(demo.read_text().replace('workdir = "Demo"', f'workdir = "{where}"'))
    (drive / "Demo").write_text("notes of the user's")
    python = make_venv(tmp_path / "venv")
    before = installed(python)

    result = run_cli("bootstrap", "--recipe", str(demo), "--drive", str(drive), "--python", str(python),
                     env=cli_env(index.url))

    assert result.code == 2, result.stderr
    said = (f"the recipe's workdir {drive}/Demo is a file, not a folder" if where == "Demo" else
            f"{drive}/Demo is a file where the recipe's workdir {drive}/Demo/sub needs a folder")
    assert result.stderr.strip().splitlines()[-1] == (
        f"warmstart: error: {said}; move it away (or change [drive] workdir in {demo}) and run again")
    assert (drive / "Demo").read_text() == "notes of the user's"
    assert [p.name for p in drive.iterdir()] == ["Demo"] and installed(python) == before


def test_packages_alone_need_no_workdir_and_the_warning_names_what_is_in_its_way(demo, drive, tmp_path, index):
    (drive / "Demo").write_text("notes of the user's")
    python = make_venv(tmp_path / "venv")

    result = bootstrap(demo, drive, python, "--packages-only", env=cli_env(index.url))

    assert result.code == 0, result.stderr
    assert f"warning: no workdir {drive}/Demo: {drive}/Demo is a file" in result.stderr
    assert (drive / "Demo").read_text() == "notes of the user's" and installed(python).keys() >= {"alpha"}


def test_unknown_recipe_name_suggests_the_closest(tmp_path):
    result = run_cli("bootstrap", "--recipe", "hyperlpx", "--drive", str(tmp_path), env=cli_env())
    assert result.code == 2
    assert "no recipe named 'hyperlpx' (did you mean 'hyperlpr'?)" in result.stderr
    assert "known recipes: hyperlpr, hyperlpr-train, warmstart" in result.stderr


def test_plain_http_index_is_refused_unless_asked_for(demo, drive, tmp_path):
    env = cli_env("http://pypi.example.org/simple")
    result = run_cli("bootstrap", "--recipe", str(demo), "--drive", str(drive),
                     "--python", str(make_venv(tmp_path / "venv")), env=env)
    assert result.code == 2
    assert "PIP_INDEX_URL http://pypi.example.org/simple is plain http" in result.stderr
    assert list(drive.iterdir()) == []


def test_credentials_never_reach_the_report(demo, drive, tmp_path):
    env = cli_env("https://alice:s3cret@127.0.0.1:9/simple", PIP_RETRIES="0")  # nothing listens there
    result = run_cli("bootstrap", "--recipe", str(demo), "--drive", str(drive), "--json",
                     "--python", str(make_venv(tmp_path / "venv")), env=env)
    assert result.code == 3, result.stderr  # the index unreachable: a precondition of this machine
    assert "cannot reach the package index https://***@127.0.0.1:9/simple" in result.report["error"]
    assert "s3cret" not in result.stdout and "s3cret" not in result.stderr


# --- property-based: the loader answers any TOML with a Recipe or a BadInput, never a crash ---

KEYS = ["name", "description", "python", "gpu", "requirements", "drive", "assets", "checks",
        "required", "min_memory_gib", "in", "exclude", "workdir", "url", "sha256", "dest", "unpack"]
scalars = st.one_of(st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False, allow_infinity=False),
                    st.text(string.ascii_letters + string.digits + " .<>=-/~", max_size=12),
                    st.sampled_from(["demo", ">=3.8", "requirements/demo.in", "6.0", "a" * 64]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)), max_leaves=8)


def to_toml(data: dict, prefix: str = "") -> str:
    """A small TOML writer for generated documents (inline tables for anything nested)."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(value(i) for i in v) + "]"
        return "{" + ", ".join(f"{k} = {value(i)}" for k, i in v.items()) + "}"
    return "".join(f"{k} = {value(v)}\n" for k, v in data.items())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=st.dictionaries(st.sampled_from(KEYS), values, max_size=6),
       good_base=st.booleans())
def test_recipe_loader_never_crashes(tmp_path, document, good_base):
    project = tmp_path / "p"
    (project / "recipes").mkdir(parents=True, exist_ok=True)
    (project / "requirements").mkdir(exist_ok=True)
    (project / "requirements" / "demo.in").write_text("alpha\n")
    if good_base:  # mostly-valid recipes reach the deeper checks
        document = {"name": "demo", "requirements": {"in": "requirements/demo.in"}} | document
    path = project / "recipes" / "demo.toml"
    path.write_text(to_toml(document))
    try:
        recipe = load_recipe(str(path), project)
    except BadInput as exc:
        assert str(path) in str(exc) or "demo.in" in str(exc)
        assert "\n" not in str(exc)
    else:
        assert recipe.name == document["name"]


def test_lock_without_the_lock_extra_names_the_command_that_installs_it(demo, tmp_path):
    """Without pyelftools `invoke lock` stops before any download, cold ELF cache or warm, in one
    line naming a pip command that works here (warmstart itself is not on the package index)."""
    hidden = tmp_path / "hide"
    hidden.mkdir()
    (hidden / "elftools.py").write_text("raise ImportError('pyelftools is not installed')\n")  # a bare install
    lock = lock_of(demo)
    before = lock.read_bytes()

    result = run_cli("lock", "--recipe", str(demo), env=cli_env(dead_url(), PYTHONPATH=str(hidden)))

    assert result.code == 3, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.endswith(f"needs warmstart's `lock` extra, which is not installed: "
                         f"{sys.executable} -m pip install 'pyelftools>=0.31'"), line
    assert "warmstart[" not in line and lock.read_bytes() == before


@pytest.mark.parametrize("inside", [".warmstart", ".warmstart/v1/wheels"])
def test_a_team_cache_folder_in_the_drive_caches_own_folder_is_bad_input(demo, drive, tmp_path, inside):
    """`--cache DRIVE/.warmstart` (taken for "the cache"): the team store's layout went inside
    Drive's own, every file written to Drive twice."""
    folder = drive / inside
    folder.mkdir(parents=True)
    result = run_cli("bootstrap", "--recipe", str(demo), "--drive", str(drive), "--cache", str(folder),
                     "--python", str(make_venv(tmp_path / "env")), env=cli_env())

    assert result.code == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"warmstart: error: --cache (or WARMSTART_CACHE) {folder} lies in the Drive cache's own folder "
        f"{drive / '.warmstart'}: a team cache is a folder the team shares beside it; leave --cache out for "
        "Drive's cache alone")
    assert not (folder / ".warmstart").exists(), "nothing was written there"


@pytest.mark.parametrize("there", ["nothing", "a file"])
def test_a_team_cache_folder_that_is_no_folder_is_named_with_what_it_is(demo, drive, tmp_path, there):
    """A file where the team's folder was named was said not to exist ("create it")."""
    folder = tmp_path / "team"
    if there == "a file":
        folder.write_text("the user's\n")
    result = run_cli("bootstrap", "--recipe", str(demo), "--drive", str(drive), "--cache", str(folder), env=cli_env())

    assert result.code == 3, result.stderr
    said = ("is a file, not a folder; name a folder with" if there == "a file"
            else "does not exist; create it, or fix")
    assert result.stderr.strip().splitlines()[-1] == (
        f"warmstart: error: the team cache folder {folder} {said} --cache (or WARMSTART_CACHE)")
