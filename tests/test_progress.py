"""Progress a person can see: one bar for the whole download and one for the Drive writes when
stderr is a terminal (a Colab `!` cell runs commands in a pseudo-terminal, as here), none when
it is not, and none when the run reports JSON."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

from conftest import REPO, bootstrap, cli_env, make_venv


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
