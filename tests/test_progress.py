"""Progress a person can see: one bar for the whole download and one for the Drive writes when
stderr is a terminal (a Colab `!` cell runs commands in a pseudo-terminal, as here), none when
it is not, and none when the run reports JSON. And output nobody reads any more (`| head`)."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, bootstrap, cli_command, cli_env, installed, make_venv


def run_on_a_terminal(*args: str, env: dict[str, str]) -> tuple[int, str]:
    """`invoke ARGS` with stderr on a pseudo-terminal; returns its exit code and what it drew."""
    leader, follower = pty.openpty()
    child = subprocess.Popen([sys.executable, "-m", "invoke", "--search-root", str(REPO), *args], env=env,
                             stdout=subprocess.DEVNULL, stderr=follower, cwd=REPO)
    os.close(follower)
    drawn = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        drawn += chunk
    os.close(leader)
    return child.wait(timeout=300), drawn.decode(errors="replace")


def test_a_terminal_sees_one_bar_for_the_download_and_one_for_the_drive_writes(demo, drive, tmp_path, index):
    python = make_venv(tmp_path / "venv")
    code, drawn = run_on_a_terminal("bootstrap", "--recipe", str(demo), "--drive", str(drive),
                                    "--python", str(python), "--wait", env=cli_env(index.url))

    assert code == 0, drawn
    assert drawn.count("download 3 wheels") >= 1 and "to Drive (4 files)" not in drawn
    assert "to Drive (3 files)" in drawn, "the wheels, under one bar"
    assert "\r" in drawn, "a live line, redrawn in place"


def test_no_bar_when_stderr_is_not_a_terminal_or_the_report_is_json(demo, drive, tmp_path, index):
    result = bootstrap(demo, drive, make_venv(tmp_path / "venv"), env=cli_env(index.url))  # --json, piped
    assert result.code == 0, result.stderr
    assert "download 3 wheels" not in result.stderr and "\r" not in result.stderr


def run_with_its_reader_gone(*args: str, env: dict[str, str], gone: str = "stdout",
                             command: list[str] | None = None) -> subprocess.CompletedProcess:
    """`invoke ARGS` (or `command`) with stdout (or stderr: `gone`) a pipe whose reading end closed
    before it began, as `| head` closes it once it has what it wanted."""
    read, write = os.pipe()
    os.close(read)
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, gone: write}
    try:
        return subprocess.run(command or cli_command(*args), env=env, text=True, timeout=300, cwd=REPO, **streams)
    finally:
        os.close(write)


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("command", ["recipes", "gpu", "status"])
def test_a_command_whose_reader_left_ends_quietly_with_141(demo, drive, tmp_path, command, buffered):
    """Not "Broken pipe; check that the folder is writable" (exit 3), nor the interpreter's
    ignored BrokenPipeError at its exit (exit 120): 141, what a shell says of any command whose
    reader left. Buffered stdout (a pipe's, unless PYTHONUNBUFFERED) meets the broken pipe as the
    command ends, unbuffered at its first line."""
    args = {"recipes": ["recipes"], "gpu": ["gpu", "--json"],
            "status": ["status", "--recipe", str(demo), "--drive", str(drive),
                       "--python", str(make_venv(tmp_path / "venv")), "--json"]}[command]
    env = {k: v for k, v in cli_env().items() if k != "PYTHONUNBUFFERED"} | ({} if buffered else {"PYTHONUNBUFFERED": "1"})

    done = run_with_its_reader_gone(*args, env=env)

    assert done.returncode == 141, done.stderr
    assert "Broken pipe" not in done.stderr and "Traceback" not in done.stderr and "error" not in done.stderr


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("program", ["warmstart", "invoke"])
@pytest.mark.parametrize("asked", [["--list"], ["--help", "bootstrap"]], ids=["list", "help"])
def test_invokes_own_output_whose_reader_left_ends_quietly_with_141(buffered, program, asked):
    """`warmstart --list | head -1`, `invoke --help bootstrap | head`: invoke prints the list or
    the help itself, before any task runs; it ended in invoke's BrokenPipeError traceback. The
    console script catches it in its main; `invoke` in a checkout runs invoke's own main, which
    tasks.py cannot wrap, so a hook has the last word there."""
    env = {k: v for k, v in cli_env().items() if k != "PYTHONUNBUFFERED"} | ({} if buffered else {"PYTHONUNBUFFERED": "1"})
    command = [str(Path(sys.executable).parent / "warmstart"), *asked] if program == "warmstart" else cli_command(*asked)

    done = run_with_its_reader_gone(env=env, command=command)

    assert done.returncode == 141, done.stderr
    assert done.stderr == ""


def test_a_bootstrap_whose_stderr_reader_left_does_its_work_all_the_same(demo, drive, tmp_path, index):
    """Its step lines go nowhere; the install does not stop for them."""
    python = make_venv(tmp_path / "venv")

    done = run_with_its_reader_gone("bootstrap", "--recipe", str(demo), "--drive", str(drive), "--python", str(python),
                                    "--json", env=cli_env(index.url), gone="stderr")

    assert done.returncode == 0
    report = json.loads(done.stdout)
    assert report["ok"] and report["installed"]
    assert all(installed(python).get(name) == version for name, version in report["installed"].items())


@pytest.mark.parametrize(("command", "code"), [(["recipes"], 0), (["gpu", "--json"], 3)])
def test_a_command_started_with_stdout_closed_exits_as_it_would_have(command, code):
    """`>&-`: Python has no sys.stdout then, and what was to be printed goes nowhere."""
    done = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", *cli_command(*command)], env=cli_env(), cwd=REPO,
                          stderr=subprocess.PIPE, text=True, timeout=300)
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr


# Eight threads saying 300 lines each through each of warmstart's three ways to say a line.
SAYING_AT_ONCE = """
import sys, threading
from warmstart import commands, report, tools
say = {"report": report.Report("demo").say, "task": lambda m: commands._print(f"warmstart: {m}", file=sys.stderr), "tools": tools.say}[sys.argv[1]]
threads = [threading.Thread(target=lambda i=i: [say(f"thread {i} line {n}") for n in range(300)]) for i in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
"""


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("sayer", ["report", "task", "tools"])
def test_lines_said_from_several_threads_at_once_stay_whole(sayer, buffered):
    """The lock's wheel scans say their lines from threads of their own (and a report, or
    warmstart.sh, may be said to from more than one): each line is one write, never two runs of text on a line and an empty one after. print
    writes the text and its newline apart: unbuffered (PYTHONUNBUFFERED), 841 of these 2,400
    lines came out broken with it."""
    env = {k: v for k, v in cli_env().items() if k != "PYTHONUNBUFFERED"} | ({} if buffered else {"PYTHONUNBUFFERED": "1"})
    done = subprocess.run([sys.executable, "-c", SAYING_AT_ONCE, sayer], env=env, cwd=REPO,
                          stderr=subprocess.PIPE, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 2400
    broken = [line for line in lines if not re.fullmatch(r"warmstart(\.sh)?: thread \d line \d+", line)]
    assert not broken, broken[:3]
