"""The Colab paths: in the kernel (`warmstart.colab.bootstrap`, the `%warmstart` magic through a
real IPython shell) and from a `!invoke` subprocess.

The Colab frontend cannot run here, so `google.colab` is a stand-in (tests/colab_standin)
whose `drive.mount` records its calls and mounts a real tmpfs. Each "kernel" is a Python
process in its own mount namespace (`unshare -m`), so those mounts never touch this machine.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import (
    ALL_COLAB_IMAGES,
    MOUNTNS,
    REPO,
    cli_env,
    in_a_removed_folder,
    launcher_command,
    make_venv,
    needs_mountns,
    run_cli,
    system_python,
)

from warmstart import extras, tools
from warmstart.invocation import cd_cell, command_line, in_cell, invoked_as

STANDIN = Path(__file__).parent / "colab_standin"


pytestmark = needs_mountns


@pytest.fixture
def kernel_env(tmp_path, index):
    home = tmp_path / "home"
    home.mkdir()
    return cli_env(index.url, WARMSTART_PLATFORM="colab", HOME=str(home),
                   WARMSTART_MOUNT_POINT=str(tmp_path / "content" / "drive"),
                   FAKE_COLAB_LOG=str(tmp_path / "colab.log"))


@pytest.fixture
def kernel_python(tmp_path) -> Path:
    """A virtualenv for the notebook kernel that also sees warmstart's own dependencies."""
    python = make_venv(tmp_path / "kernel")
    venv_site = next((tmp_path / "kernel" / "lib").glob("python3*/site-packages"))
    (venv_site / "tooling.pth").write_text("\n".join([str(STANDIN), str(REPO), *site.getsitepackages()]))
    return python


def run_kernel(python: Path, code: str, env: dict[str, str], prelude: str = "") -> dict:
    """Run `code` as a notebook cell would, in a fresh kernel process; it prints one JSON line."""
    script = textwrap.dedent(prelude) + textwrap.dedent(code)
    done = subprocess.run([*MOUNTNS, "--", str(python), "-c", script], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]) | {"stdout": done.stdout, "stderr": done.stderr}


def mount_calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "colab.log"
    return [json.loads(line)["mount"] for line in log.read_text().splitlines()] if log.exists() else []


CELL = """
import json, os, warmstart.colab
try:
    report = warmstart.colab.bootstrap({recipe!r})
    print(json.dumps({{"cwd": os.getcwd(), "report": report}}))
except warmstart.colab.BootstrapFailed as exc:
    print(json.dumps({{"cwd": os.getcwd(), "failed": str(exc), "exit_code": exc.exit_code}}))
"""


def test_in_kernel_mounts_drive_bootstraps_and_moves_the_notebook(demo, tmp_path, kernel_env, kernel_python):
    out = run_kernel(kernel_python, CELL.format(recipe=str(demo)), kernel_env)

    mount = tmp_path / "content" / "drive"
    assert mount_calls(tmp_path) == [str(mount)]
    assert out["report"]["ok"] is True and out["report"]["platform"] == "colab"
    assert out["cwd"] == str(mount / "MyDrive" / "Demo")
    assert out["report"]["installed"] == {"alpha": "1.0", "beta": "2.0", "gpu-build": "1.0"}
    assert "%cd" not in out["stderr"], "the kernel moved itself; no %cd hint needed"
    assert out["report"]["drive_writes"] == "written to Drive", "WARMSTART_WAIT=1 (kernel_env) holds here too"


def test_in_kernel_the_line_that_shows_the_drive_writes_is_a_call_that_works_in_a_cell(demo, tmp_path, kernel_env,
                                                                                    kernel_python):
    """The in-kernel call prints no `!invoke status` line: warmstart.sh writes that `invoke`, and a
    notebook that only ran the in-kernel cell has none (Colab's image ships no invoke, and has
    every dependency the kernel path needs, so no tools were restored either). It prints the call
    that does the same from a cell, which this cell then runs as printed until it is done: in the
    workdir the call moved the notebook to, so the recipe given by a relative path is named in full."""
    env = {k: v for k, v in kernel_env.items() if k != "WARMSTART_WAIT"}  # the Drive writes in the background
    call = f"warmstart.colab.status({str(demo)!r})"
    printed = f"import warmstart.colab; {call}"  # whole: after `%warmstart` alone the cell has no name `warmstart`
    cell = f"""
        import json, os, time, warmstart.colab
        os.chdir({str(demo.parent.parent)!r})
        warmstart.colab.bootstrap("recipes/{demo.name}")
        for _ in range(600):
            {printed.split("; ")[0]}
            facts = {call}
            if facts.get("complete"):
                break
            time.sleep(0.2)
        print(json.dumps(facts))
    """
    out = run_kernel(kernel_python, cell, env)

    assert f"`{printed}` shows how far" in out["stderr"]
    assert "invoke status" not in out["stderr"]
    assert out["complete"] is True and out["missing"] == [] and out["python"] == str(kernel_python)
    assert (out["error"], out["exit_code"]) == (None, 0)
    assert "nothing left to write to Drive: safe to shut down" in out["stdout"]


def test_in_kernel_paths_may_be_pathlib_paths_as_a_notebook_builds_them(demo, tmp_path, kernel_env, kernel_python):
    """Before, `cache=Path(...)` ended as a bug, exit 70."""
    team = tmp_path / "team"
    team.mkdir()
    cell = f"""
        import json, os, warmstart.colab
        from pathlib import Path
        report = warmstart.colab.bootstrap(Path({str(demo)!r}), cache=Path({str(team)!r}))
        print(json.dumps({{"cwd": os.getcwd(), "report": report}}))
    """
    out = run_kernel(kernel_python, cell, kernel_env)

    assert out["report"]["ok"] is True, out["stderr"]
    assert out["report"]["installed"] == {"alpha": "1.0", "beta": "2.0", "gpu-build": "1.0"}
    assert out["cwd"] == str(tmp_path / "content" / "drive" / "MyDrive" / "Demo")
    assert list((team / ".warmstart" / "v1" / "wheels").iterdir()), "the team cache the Path named was filled"


@pytest.mark.parametrize(("given", "said"), [
    ("offline='no'", "offline='no'): offline takes True or False"),  # "no" would have been true
    ("drive=123", "drive=123): drive takes a str or a pathlib.Path"),  # was exit 70, a bug
    ("restart='yes'", "restart='yes'): restart takes True or False"),
    ("drive='/con\\0tent'", "drive='/con\\x00tent'): drive cannot hold a NUL character"),  # was exit 70, a bug
])
def test_in_kernel_a_value_of_the_wrong_kind_is_bad_input_before_drive_is_mounted(demo, tmp_path, kernel_env,
                                                                                  kernel_python, given, said):
    cell = f"""
        import json, os, warmstart.colab
        try:
            warmstart.colab.bootstrap({str(demo)!r}, {given})
        except warmstart.colab.BootstrapFailed as exc:
            print(json.dumps({{"failed": str(exc), "exit_code": exc.exit_code}}))
    """
    out = run_kernel(kernel_python, cell, kernel_env)

    assert (out["failed"], out["exit_code"]) == (f"warmstart.colab.bootstrap({said}", 2)
    assert out["stderr"].strip().splitlines() == [f"warmstart: error: warmstart.colab.bootstrap({said}"]
    assert mount_calls(tmp_path) == [], "stopped before Drive was mounted"


def test_in_kernel_does_not_mount_again_when_mounted(demo, tmp_path, kernel_env, kernel_python):
    mount = tmp_path / "content" / "drive"
    mount.mkdir(parents=True)
    already = f"""
        import subprocess, os
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", {str(mount)!r}], check=True)
        os.makedirs({str(mount / "MyDrive")!r})
    """
    out = run_kernel(kernel_python, CELL.format(recipe=str(demo)), kernel_env, prelude=already)

    assert mount_calls(tmp_path) == []
    assert out["report"]["ok"] is True


def test_mount_point_holding_files_is_a_clear_error(demo, tmp_path, kernel_env, kernel_python):
    mount = tmp_path / "content" / "drive"
    mount.mkdir(parents=True)
    (mount / "notes.txt").write_text("written before the mount\n")

    out = run_kernel(kernel_python, CELL.format(recipe=str(demo)), kernel_env)

    assert out["exit_code"] == 3 and "already holds files" in out["failed"]
    assert mount_calls(tmp_path) == []
    assert sorted(p.name for p in mount.iterdir()) == ["notes.txt"], "nothing may be written there"


@pytest.mark.parametrize("refusal", ["Error: credential propagation was unsuccessful",
                                     "mount failed: timeout during initial read of root folder"])
def test_a_mount_colab_refuses_is_a_precondition_with_the_way_out_not_a_bug(demo, tmp_path, kernel_env,
                                                                             kernel_python, refusal):
    """The consent dialog dismissed (or Drive timing out) made Colab's drive.mount raise; warmstart
    called that an internal error, exit 70, "this is a bug in warmstart", with a log."""
    out = run_kernel(kernel_python, CELL.format(recipe=str(demo)), kernel_env | {"FAKE_DRIVE_REFUSED": refusal})

    mount = tmp_path / "content" / "drive"
    assert mount_calls(tmp_path) == [str(mount)]
    assert out["exit_code"] == 3, out
    [line] = [line for line in out["stderr"].splitlines() if line.startswith("warmstart: error: ")]
    assert line == (f"warmstart: error: Drive could not be mounted at {mount}: {refusal}; run the cell again "
                    "(and allow access to Drive when Colab asks)")
    assert "bug" not in out["stderr"]


def test_a_kernel_whose_folder_is_gone_is_told_how_to_move_before_anything_is_mounted(demo, tmp_path, kernel_env,
                                                                                      kernel_python):
    """The notebook left in a folder on Drive when Drive was unmounted (or in one since removed):
    the in-kernel calls say so, with the cell that moves it, before Drive is mounted. The target
    Python's probe failed there, said as "pass --python with a working interpreter" (the kernel's)."""
    gone = tmp_path / "content" / "drive" / "MyDrive" / "HyperLPR"
    cell = textwrap.dedent(f"""
        import json, warmstart.colab
        try:
            warmstart.colab.bootstrap({str(demo)!r})
        except warmstart.colab.BootstrapFailed as exc:
            print(json.dumps(warmstart.colab.status({str(demo)!r}) | {{"bootstrap": exc.report}}))
        """)

    # -P: no working folder on sys.path, which a kernel (`python -m ipykernel_launcher`) has by its
    # full path, and `-c` as "": in a folder removed since, Python 3.13.0 to 3.13.2 fail an import
    # there (CPython gh-130932).
    kernel = [str(kernel_python), "-P", "-c", cell]
    done = subprocess.run([*MOUNTNS, "--", *in_a_removed_folder(gone, kernel)], env=kernel_env, capture_output=True,
                          text=True, timeout=120)

    said = (f"the current folder ({gone}) no longer exists (it was removed, or lies on a Drive unmounted since): run "
            f"`%cd {kernel_env['HOME']}` (or change to any folder that exists), then run again")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["bootstrap"] | {"exit_code": 3, "error": said} == out["bootstrap"]
    assert out | {"exit_code": 3, "error": said} == out
    assert done.stderr.splitlines() == [f"warmstart: error: {said}"] * 2
    assert mount_calls(tmp_path) == []


def test_restart_warning_after_replacing_an_imported_module(demo, tmp_path, kernel_env, kernel_python, index):
    subprocess.run([sys.executable, "-m", "pip", "--python", str(kernel_python), "install", "--quiet",
                    "--index-url", index.url, "beta==1.0"], check=True, env=kernel_env)
    cell = "import beta\n" + CELL.format(recipe=str(demo))

    out = run_kernel(kernel_python, cell, kernel_env)

    assert out["report"]["replaced"] == {"beta": ["1.0", "2.0"]}
    assert out["report"]["restart_needed"] == ["beta"]
    assert out["stderr"].count("restart the runtime") == 1
    assert "`import warmstart.colab; warmstart.colab.restart_runtime()`" in out["stderr"]


def test_magic_through_a_real_ipython_shell(demo, tmp_path, kernel_env, kernel_python):
    cell = f"""
        import json, os
        from IPython.core.interactiveshell import InteractiveShell
        import warmstart.colab
        shell = InteractiveShell.instance()
        shell.run_line_magic("load_ext", "warmstart")
        shell.run_line_magic("warmstart", "bootstrap --recipe {demo}")
        report = warmstart.colab.last_report
        shell.run_line_magic("warmstart", "status --recipe {demo} --packages-only")
        print(json.dumps({{"cwd": os.getcwd(), "report": report}}))
    """
    out = run_kernel(kernel_python, cell, kernel_env)

    assert mount_calls(tmp_path) == [str(tmp_path / "content" / "drive")]
    assert out["report"]["ok"] is True
    assert out["cwd"] == str(tmp_path / "content" / "drive" / "MyDrive" / "Demo")
    assert out["report"]["drive_writes"] == "written to Drive", "WARMSTART_WAIT=1 (kernel_env) holds here too"
    assert "bootstrap would: no-op" in out["stdout"] and "safe to shut down" in out["stdout"]  # %warmstart status


def test_a_magic_line_with_an_unclosed_quote_is_said_as_argparse_says_a_bad_flag(tmp_path):
    """`%warmstart bootstrap --recipe it's` ended in shlex's ValueError traceback in the notebook."""
    cells = ["%load_ext warmstart", "%warmstart bootstrap --recipe it's", "%warmstart bootstrap --recipe"]
    script = ("import sys\nfrom IPython.core.interactiveshell import InteractiveShell\n"
              "shell = InteractiveShell.instance()\n"
              "for cell in sys.argv[1:]:\n    assert shell.run_cell(cell).success\n")

    done = subprocess.run([sys.executable, "-c", script, *cells], capture_output=True, text=True, cwd=tmp_path,
                          timeout=60)

    assert done.returncode == 0, done.stdout + done.stderr
    said = [line for line in done.stderr.splitlines() if not line.startswith((" ", "usage:"))]
    assert said == ["%warmstart: error: no closing quotation in \"bootstrap --recipe it's\"",
                    "%warmstart bootstrap: error: argument --recipe: expected one argument"]
    assert "Traceback" not in done.stdout + done.stderr


def test_a_failed_bootstrap_in_a_real_ipython_cell_shows_its_error_line_not_a_traceback(tmp_path, kernel_env,
                                                                                     kernel_python):
    """The kernel API raises BootstrapFailed (code may catch it); a notebook cell that does not
    shows the one error line and a line naming the exit code, not warmstart's frames."""
    cell = """
        import contextlib, io, json
        from IPython.core.interactiveshell import InteractiveShell
        import warmstart.colab
        shell = InteractiveShell.instance()
        shown = io.StringIO()
        with contextlib.redirect_stdout(shown):
            result = shell.run_cell("import warmstart.colab; warmstart.colab.bootstrap('no-such-recipe')")
        print(json.dumps({"shown": shown.getvalue(), "raised": type(result.error_in_exec).__name__,
                          "code": warmstart.colab.last_report["exit_code"]}))
    """
    out = run_kernel(kernel_python, cell, kernel_env)

    assert out["raised"] == "BootstrapFailed" and out["code"] == 2
    assert out["shown"] == ("BootstrapFailed: exit code 2 (the error above); the report is in "
                            "warmstart.colab.last_report\n")
    [error] = [line for line in out["stderr"].splitlines() if line.startswith("warmstart: error: ")]
    assert "no recipe named 'no-such-recipe'" in error
    assert "Traceback" not in out["stderr"] + out["shown"]


# --- the `!invoke` subprocess path ---------------------------------------------------------

def test_subprocess_without_mount_exits_3_with_the_cell_line(demo, tmp_path, kernel_env):
    result = run_cli("bootstrap", "--recipe", str(demo), "--python", str(make_venv(tmp_path / "v")),
                     env=kernel_env)

    mount = tmp_path / "content" / "drive"
    assert result.code == 3
    assert f"from google.colab import drive; drive.mount('{mount}')" in result.stderr
    # the other way, as it pastes: warmstart from where this run took it, the recipe as given
    assert (f"import sys; sys.path.insert(0, '{REPO}'); import warmstart.colab; "
            f"warmstart.colab.bootstrap('{demo}'))") in result.stderr
    assert not mount.exists(), "nothing may be written under an unmounted mount point"


def test_subprocess_with_mount_uses_it_and_prints_the_cd_line(demo, tmp_path, kernel_env):
    mount = tmp_path / "content" / "drive"
    mount.mkdir(parents=True)
    python = make_venv(tmp_path / "v")
    invoke = [sys.executable, "-m", "invoke", "--search-root", str(REPO), "bootstrap",
              "--recipe", str(demo), "--python", str(python)]
    script = f'mount -t tmpfs tmpfs "{mount}" && mkdir "{mount}/MyDrive" && exec "$@"'

    done = subprocess.run([*MOUNTNS, "--", "sh", "-c", script, "sh", *invoke], env=kernel_env,
                          capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, done.stderr
    assert f"%cd {mount}/MyDrive/Demo" in done.stderr


# --- the lines printed for a notebook, pasted into a real IPython cell ------------------------

# Names a notebook may well hold: IPython replaces `$HOME` and `{x}` in a `!` or `%` line with them.
NOTEBOOK_NAMES = "x = 5; HOME = 'oops'; y = {'a': 1}\n"
ODD_NAMES = ["Plates {x} $HOME", "it's here", 'dq"x', "back\\slash", " lead", "-b", "semi;colon", "tab\tx",
             "$$ {{y}} ${x} `echo no`"]


def run_cells(cells: list[str], cwd: Path) -> list[dict]:
    """Run `cells` in a real IPython shell (the notebook's names first), in a fresh process; say
    each cell's folder afterwards and `!` exit codes."""
    script = textwrap.dedent("""
        import json, os, sys
        from IPython.core.interactiveshell import InteractiveShell
        shell = InteractiveShell.instance()
        shell.run_cell(sys.argv[1])
        after = []
        for cell in json.loads(sys.argv[2]):
            shell.run_cell(cell)
            after.append({"cwd": os.getcwd(), "exit": shell.user_ns.get("_exit_code")})
        print(json.dumps(after))
    """)
    done = subprocess.run([sys.executable, "-c", script, NOTEBOOK_NAMES, json.dumps(cells)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_a_bang_line_gives_the_program_each_word_as_printed(tmp_path):
    """`!invoke status --recipe '/d/Plates {x} $HOME/r.toml'` ran as `... /d/Plates 5 oops/r.toml`
    in a notebook holding `x` and `HOME`: IPython expands first, the shell splits after."""
    argv_file = tmp_path / "argv"
    program = tmp_path / "program"
    program.write_text(f'#!/bin/sh\nprintf "%s\\0" "$@" > {argv_file}\n')
    program.chmod(0o755)
    words = [str(program), "status", "--recipe", *ODD_NAMES]

    out = run_cells([in_cell(words, notebook=True)], tmp_path)

    assert out[0]["exit"] == 0, out
    assert argv_file.read_bytes().split(b"\0")[:-1] == [w.encode() for w in words[1:]]
    assert in_cell(words, notebook=False) == shlex.join(words), "a terminal's line is the shell's alone"


def test_a_cd_line_moves_the_notebook_into_the_folder_as_named(tmp_path):
    folders = [tmp_path / name for name in ODD_NAMES]
    for folder in folders:
        folder.mkdir()

    out = run_cells([cd_cell(folder) for folder in folders], tmp_path)

    assert [cell["cwd"] for cell in out[:len(folders)]] == [str(folder) for folder in folders]


# A notebook kernel: it runs a `!` line's command as its child, then pastes the lines that command
# printed (those `sys.argv[2]` finds, by its one group that matched) into its cells, in a real
# IPython shell that holds the notebook's names. A status line is pasted until it exits other
# than 1 ("not yet safe to shut down").
KERNEL = textwrap.dedent("""
    import json, os, re, subprocess, sys, time
    from IPython.core.interactiveshell import InteractiveShell
    done = subprocess.run(sys.argv[3:], capture_output=True, text=True)
    shell = InteractiveShell.instance()
    shell.run_cell(sys.argv[1])
    lines = ["".join(found.groups("")) for found in re.finditer(sys.argv[2], done.stderr)]
    after = []
    for line in lines:
        for _ in range(120):
            shell.run_cell(line)
            if " status " not in line or shell.user_ns["_exit_code"] != 1:
                break
            time.sleep(0.5)
        after.append({"cwd": os.getcwd(), "exit": shell.user_ns.get("_exit_code")})
    print(json.dumps({"code": done.returncode, "stderr": done.stderr, "lines": lines, "after": after}))
""")
LINES = r"`(!.*?)` shows how far|run: (%cd .*)|make one with `(!.*?)`"


def pasted(kernel: list[str], command: list[str], env: dict[str, str], cwd: Path) -> dict:
    """`command` run by the `kernel` process (`KERNEL`, started as `kernel` says), its lines pasted."""
    done = subprocess.run([*kernel, NOTEBOOK_NAMES, LINES, *command], env=env, capture_output=True, text=True,
                          timeout=300, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1]) | {"stdout": done.stdout}


def odd_project(locked_demo: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The demo project in a folder, and with a workdir, whose names hold `{x}`, `$HOME` and a quote."""
    project = tmp_path / "mine {x} $HOME it's"
    shutil.copytree(locked_demo, project)
    recipe = project / "recipes" / "demo.toml"
    recipe.write_text(recipe.read_text().replace('workdir = "Demo"', 'workdir = "Plates {x} $HOME"'))
    return project, recipe


def test_a_notebook_runs_lines_pasted_as_printed_into_a_real_ipython_cell(locked_demo, tmp_path, kernel_env):
    """A `!invoke bootstrap` on Colab, with the recipe in a folder and a workdir whose names hold
    `{x}`, `$HOME` and a quote: its `%cd` line moves the notebook into the workdir, and its status
    line asks about this recipe, pasted into a real IPython shell that holds `x` and `HOME`. The
    Drive mount stands in as a tmpfs (no Colab frontend here); without `--wait` the status line is
    pasted until the worker writing Drive in the background is done (exit 0). Where this Python
    is a Colab image's (3.12, 3.13), the project is locked for those images too, as on Colab: else
    the run takes the bare lock and prints the command that makes the image's."""
    _, recipe = odd_project(locked_demo, tmp_path)
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    for image in (name for name, image in ALL_COLAB_IMAGES.items() if image.python_minor == minor):
        locked = run_cli("lock", "--recipe", str(recipe), "--image", image, env=kernel_env)
        assert locked.code == 0, locked.stderr
    mount = tmp_path / "content" / "drive"
    mount.mkdir(parents=True)
    python = make_venv(tmp_path / "v")
    env = {k: v for k, v in kernel_env.items() if k != "WARMSTART_WAIT"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # `invoke`, as the tools' launcher puts it there
    bootstrap = ["invoke", "--search-root", str(REPO), "bootstrap", "--recipe", str(recipe), "--python", str(python)]
    # the kernel in the namespace that holds the mount
    script = f'mount -t tmpfs tmpfs "{mount}" && mkdir "{mount}/MyDrive" && exec "$@"'

    ran = pasted([*MOUNTNS, "--", "sh", "-c", script, "sh", sys.executable, "-c", KERNEL], bootstrap, env, tmp_path)

    assert ran["code"] == 0, ran["stderr"]
    workdir = mount / "MyDrive" / "Plates {x} $HOME"
    assert ran["lines"] == [in_cell([*bootstrap[:3], "status", *bootstrap[4:]], notebook=True), cd_cell(workdir)]
    assert ran["after"][1]["cwd"] == str(workdir), ran
    assert ran["after"][0]["exit"] == 0, ran["stdout"]  # this recipe, found, installed and on Drive
    assert "bootstrap would: no-op" in ran["stdout"]


@pytest.fixture
def jupyter(tmp_path, index) -> tuple[list[str], dict[str, str]]:
    """A local Jupyter's kernel, off Colab: Jupyter starts one as `python -m ipykernel_launcher
    -f ...`, and that name in its command line is what marks it (ipykernel itself is not here)."""
    launcher = tmp_path / "ipykernel_launcher.py"
    launcher.write_text(KERNEL)
    env = cli_env(index.url, WARMSTART_PLATFORM="local", HOME=str(tmp_path / "home"))
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # the notebook's `invoke`
    env.pop("WARMSTART_WAIT", None)
    return [sys.executable, str(launcher)], env


def test_a_local_jupyter_bang_run_prints_lines_for_its_cells(locked_demo, tmp_path, jupyter):
    """`!invoke bootstrap` in a local Jupyter: the platform is not a notebook service, but the run's
    lines are still read in a notebook, so they are printed for its cells (they were a
    terminal's: the status line without `!`, and no `%cd` line)."""
    kernel, env = jupyter
    _, recipe = odd_project(locked_demo, tmp_path)
    drive = tmp_path / "drive"
    drive.mkdir()
    asked = ["--recipe", str(recipe), "--drive", str(drive), "--python", str(make_venv(tmp_path / "v"))]
    invoke = ["invoke", "--search-root", str(REPO)]

    ran = pasted(kernel, [*invoke, "bootstrap", *asked], env, tmp_path)

    assert ran["code"] == 0, ran["stderr"]
    assert ran["lines"] == [in_cell([*invoke, "status", *asked], notebook=True), cd_cell(drive / "Plates {x} $HOME")]
    assert ran["after"] == [{"cwd": str(tmp_path), "exit": 0}, {"cwd": str(drive / "Plates {x} $HOME"), "exit": 0}]


def test_a_missing_lock_is_made_by_the_line_the_notebook_is_given(locked_demo, tmp_path, jupyter):
    """A recipe of the user's with no lock yet: the `lock` line the bootstrap names is a cell's
    (`!` and all), and pasted into one, it makes the lock, after which the bootstrap runs."""
    kernel, env = jupyter
    project, recipe = odd_project(locked_demo, tmp_path)
    for lock in (project / "requirements").glob("demo-*.txt"):
        lock.unlink()
    drive = tmp_path / "drive"
    drive.mkdir()
    bootstrap = ["invoke", "--search-root", str(REPO), "bootstrap", "--recipe", str(recipe), "--packages-only",
                 "--python", str(make_venv(tmp_path / "v")), "--drive", str(drive)]

    ran = pasted(kernel, bootstrap, env, tmp_path)

    assert ran["code"] == 3, ran["stderr"]  # no lock: a precondition, as the README's exit codes say
    (lock_line,) = ran["lines"]
    assert lock_line.startswith("!invoke --search-root ") and " lock --recipe " in lock_line, lock_line
    assert ran["after"] == [{"cwd": str(tmp_path), "exit": 0}], ran["stdout"][-3000:]
    assert run_cli(*bootstrap[3:], env=env).code == 0


@pytest.mark.parametrize(("script", "kernel"), [("ipykernel_launcher.py", True), ("colab_kernel_launcher.py", True),
                                              ("ipykernel-notes/run.py", False), ("run.py --name ipykernel", False)])
def test_a_kernel_is_known_by_what_it_runs_not_by_a_name_in_its_words(tmp_path, script, kernel):
    """Read from /proc, a process running a kernel's launcher is a notebook kernel; one whose
    folder or arguments merely hold the name is not (its run's lines stay a terminal's)."""
    path, *args = script.split()
    (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / path).write_text("import json, os; from warmstart.restart import kernel_process\n"
                                 "print(json.dumps([os.getpid(), kernel_process()]))\n")

    done = subprocess.run([sys.executable, str(tmp_path / path), *args], env=dict(os.environ, PYTHONPATH=str(REPO)),
                          capture_output=True, text=True)

    pid, found = json.loads(done.stdout)
    assert (found[0] == pid if kernel else found is None), done.stderr


def test_on_colab_the_commands_named_in_sentences_are_cells_too(monkeypatch):
    """No kernel runs this test, but Colab's commands run from cells: the `lock` line a recipe
    without a lock names, and the pip line that adds a missing extra, are `!` lines."""
    monkeypatch.setenv("WARMSTART_PLATFORM", "colab")
    assert command_line("lock", "--recipe", "mine {x}") == in_cell([*invoked_as(), "lock", "--recipe", "mine {x}"],
                                                                    notebook=True)
    assert extras.install_command("gcs").startswith(f"!{shlex.quote(sys.executable)} -m pip install ")
    monkeypatch.setenv("WARMSTART_PLATFORM", "local")
    assert command_line("recipes") == shlex.join([*invoked_as(), "recipes"])


# --- the `invoke` launcher warmstart.sh writes beside the notebook's python3 --------------------

PRINT_ARGS = '#!/bin/sh\nfor arg in "$@"; do printf "%s\\0" "$arg"; done\n'  # stands in for the tools' python
WRITE = ("import sys; sys.path.insert(0, sys.argv[3]); from pathlib import Path; "
         "from warmstart.tools import write_launcher; print(write_launcher(Path(sys.argv[1]), Path(sys.argv[2])))")


def launcher_for(tmp_path: Path, name: str) -> tuple[Path, Path, Path]:
    """A notebook interpreter, and warmstart's tools and checkout under a folder called `name`."""
    notebook = make_venv(tmp_path / "notebook")
    folder, checkout = tmp_path / name / "tools", tmp_path / name / "checkout"
    (folder / "bin").mkdir(parents=True)
    checkout.mkdir()
    (folder / "bin" / "python").write_text(PRINT_ARGS)
    (folder / "bin" / "python").chmod(0o755)
    return notebook, folder, checkout


@pytest.mark.parametrize("allowed", [False, True], ids=["managed", "break-system-packages"])
def test_no_launcher_is_written_beside_a_python_its_system_owns(tmp_path, allowed):
    """Debian's python3 (PEP 668): warmstart.sh wrote `invoke` into its scripts folder
    (/usr/local/bin), though the bootstrap then refused that interpreter and named a virtualenv
    to make. Not there now, unless PIP_BREAK_SYSTEM_PACKAGES lets warmstart change it. A real
    CPython with the marker (conftest.system_python) writes it."""
    notebook = system_python(tmp_path / "system")
    folder, checkout = tmp_path / "tools", tmp_path / "checkout"
    (folder / "bin").mkdir(parents=True)
    checkout.mkdir()
    env = {**os.environ, "PIP_BREAK_SYSTEM_PACKAGES": "1" if allowed else "0"}

    written = subprocess.run([str(notebook), "-c", WRITE, str(folder), str(checkout), str(REPO)],
                             capture_output=True, text=True, cwd=tmp_path, env=env)

    assert written.returncode == 0, written.stderr
    beside = notebook.parent / "invoke"
    assert written.stdout.strip() == str(beside if allowed else folder / "invoke")
    assert beside.exists() == allowed and (folder / "invoke").is_file()


@pytest.mark.parametrize("name", ["$(touch PWNED)", "it's `here`", "two\nlines", "a b; touch PWNED"])
def test_the_launcher_takes_paths_as_data_never_as_shell_code(tmp_path, name):
    notebook, folder, checkout = launcher_for(tmp_path, name)
    written = subprocess.run([str(notebook), "-c", WRITE, str(folder), str(checkout), str(REPO)],
                             capture_output=True, text=True, cwd=tmp_path)
    assert written.returncode == 0, written.stderr
    launcher = notebook.parent / "invoke"
    assert written.stdout.strip() == str(launcher)

    ran = subprocess.run([str(launcher), "status", "x y"], capture_output=True, cwd=tmp_path)

    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split(b"\0")[:-1] == [b"-P", b"-c", tools.LAUNCH.encode(), str(checkout).encode(),
                                             b"status", b"x y"]
    assert not (tmp_path / "PWNED").exists()


def test_the_launcher_runs_a_bootstrap_line_without_invoke_and_gives_invoke_any_other(tmp_path, demo, drive, index):
    """A bootstrap line is the task's at once (warmstart.launch: invoke's imports and program took
    a quarter of a no-op run); any other line is invoke's, in its words and with its exit codes.
    The tools' python here is this one, with an `invoke` that cannot be imported put first on its
    path: the bootstrap runs all the same, and a line that needs invoke meets that `invoke`."""
    notebook, folder, _checkout = launcher_for(tmp_path, "real")
    shadow = tmp_path / "shadow" / "invoke"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('invoke was imported')\n")
    (folder / "bin" / "python").write_text(f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(shadow.parent))} "
                                           f"exec {shlex.quote(sys.executable)} \"$@\"\n")
    written = subprocess.run([str(notebook), "-c", WRITE, str(folder), str(REPO), str(REPO)],
                             capture_output=True, text=True, cwd=tmp_path)
    assert written.returncode == 0, written.stderr
    launcher = Path(written.stdout.strip())
    target = make_venv(tmp_path / "target")
    env = cli_env(index.url)

    ran = subprocess.run([str(launcher), "bootstrap", f"--recipe={demo}", "--drive", str(drive), "--python",
                          str(target), "--json"], capture_output=True, text=True, cwd=tmp_path, env=env)

    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["installed"] == {"alpha": "1.0", "beta": "2.0", "gpu-build": "1.0"}
    for line in (["bootstrap", "--recipe", str(demo), "--ofline"], ["bootstrap", "--help"], ["status"],
                 ["--list"], ["bootstrap", "--rec", str(demo)], ["bootstrap", "--recipe", str(demo), "status"]):
        other = subprocess.run([str(launcher), *line], capture_output=True, text=True, cwd=tmp_path, env=env)
        assert other.returncode == 1 and "ImportError: invoke was imported" in other.stderr, (line, other.stderr)


def test_a_line_the_launcher_gives_invoke_ends_as_invoke_ends_it(tmp_path, demo):
    """A misspelt flag, a task's help: invoke's words and exit codes, as before the launcher ran
    bootstrap lines itself."""
    notebook, folder, _checkout = launcher_for(tmp_path, "real")
    (folder / "bin" / "python").write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} \"$@\"\n")
    written = subprocess.run([str(notebook), "-c", WRITE, str(folder), str(REPO), str(REPO)],
                             capture_output=True, text=True, cwd=tmp_path)
    launcher = Path(written.stdout.strip())

    misspelt = subprocess.run([str(launcher), "bootstrap", "--recipe", str(demo), "--ofline"], capture_output=True,
                              text=True, cwd=tmp_path, env=cli_env())
    helped = subprocess.run([str(launcher), "bootstrap", "--help"], capture_output=True, text=True, cwd=tmp_path,
                            env=cli_env())

    assert (misspelt.returncode, misspelt.stderr.strip()) == (1, "No idea what '--ofline' is!")
    assert helped.returncode == 0 and "--allow-no-gpu" in helped.stdout and "Usage: " in helped.stdout


def test_the_launcher_writes_no_bytecode_beside_warmstarts_init_and_all_that_it_imports_after(tmp_path):
    """The launcher's line imports warmstart's __init__ writing no bytecode (from a checkout on
    Drive it would go beside it, on Drive; __init__ then sends the rest elsewhere), and turns
    bytecode back on for all it imports after: warmstart's other modules, and invoke for a line
    that is invoke's. A copy of the checkout here (off Drive: the rest compiles beside it) and a
    stand-in `invoke` whose __init__ imports a module of its own, both never compiled."""
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO / "warmstart", checkout / "warmstart", ignore=shutil.ignore_patterns("__pycache__"))
    for folder in ("recipes", "requirements", "envs"):  # what makes it a checkout (PROJECT_ROOT)
        (checkout / folder).mkdir()
    stand_in = tmp_path / "path" / "invoke"
    stand_in.mkdir(parents=True)
    (stand_in / "__init__.py").write_text("from . import program\n")
    (stand_in / "program.py").write_text("")
    (stand_in / "__main__.py").write_text("import sys; print('invoke ran', sys.argv[1:])\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(stand_in.parent)

    ran = subprocess.run(launcher_command("status", checkout=checkout), capture_output=True, text=True, cwd=tmp_path,
                         env=env)

    assert ran.returncode == 0 and ran.stdout.strip() == f"invoke ran ['--search-root', '{checkout}', 'status']", ran
    compiled = {path.name.split(".")[0] for path in (checkout / "warmstart" / "__pycache__").glob("*.pyc")}
    assert "__init__" not in compiled and {"launch", "settings"} <= compiled, compiled
    assert {path.name.split(".")[0] for path in (stand_in / "__pycache__").glob("*.pyc")} >= {"__init__", "program"}


def test_a_link_named_invoke_is_somebody_elses_and_stays(tmp_path):
    notebook, folder, checkout = launcher_for(tmp_path, "plain")
    link = notebook.parent / "invoke"
    link.symlink_to(tmp_path / "nowhere")  # dangling

    written = subprocess.run([str(notebook), "-c", WRITE, str(folder), str(checkout), str(REPO)],
                             capture_output=True, text=True, cwd=tmp_path)

    assert written.stdout.strip() == str(folder / "invoke"), written.stderr
    assert link.is_symlink() and os.readlink(link) == str(tmp_path / "nowhere")


def test_no_launcher_beside_the_notebooks_python_when_the_run_targets_another(tmp_path):
    """`warmstart.sh R --python OTHER`: the notebook's environment is not the run's, and warmstart
    writes in no environment but its target's; the launcher in the tools folder is the command."""
    notebook, folder, checkout = launcher_for(tmp_path, "plain")
    write = WRITE.replace("Path(sys.argv[2]))", "Path(sys.argv[2]), public=False)")

    written = subprocess.run([str(notebook), "-c", write, str(folder), str(checkout), str(REPO)],
                             capture_output=True, text=True, cwd=tmp_path)

    assert written.returncode == 0, written.stderr
    assert written.stdout.strip() == str(folder / "invoke")
    assert not (notebook.parent / "invoke").exists()
    assert (folder / "invoke").is_file()
