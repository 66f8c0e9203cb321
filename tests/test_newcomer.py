"""The README's newcomer commands, verbatim, on a copy of the checkout as `git clone` makes it:
command 1 (warmstart with uv into .venv, then hyperlpr bootstrapped into a fresh virtualenv with
./drive standing in for Drive), then the wiped-VM line with the network cut. Real PyPI, pip and
uv; pip's and uv's download caches are the test session's, so the wheels come once per run."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from conftest import CACHE_HOME, NETNS, REPO, needs_netns
from test_fresh_machine import copy_checkout

pytestmark = [pytest.mark.registry, needs_netns]


def readme_commands() -> dict[str, str]:
    """The shell lines of the README's newcomer section, by how they begin."""
    text = (REPO / "README.md").read_text()
    section = text.split("## A newcomer on a fresh machine", 1)[1].split("\n## ", 1)[0]
    lines = [line for block in section.split("```sh\n")[1:] for line in block.split("```", 1)[0].splitlines()
             if line and not line.startswith("#")]
    return {line.split(" && ", 1)[0]: line for line in lines}


def test_the_readme_newcomer_commands_work_as_written(tmp_path):
    commands = readme_commands()
    first, wiped = commands["python3 -m venv .venv"], commands["rm -rf .hyperlpr-env"]
    assert commands[".ci/run"] == ".ci/run"
    checkout = tmp_path / "warmstart"
    copy_checkout(checkout)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARMSTART_")} | {
        "HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": CACHE_HOME}

    done = subprocess.run(["bash", "-c", first], cwd=checkout, env=env, capture_output=True, text=True, timeout=900)

    assert done.returncode == 0, done.stderr[-3000:]
    assert "28 packages with uv" in done.stderr, "command 1 installs with uv"

    restored = subprocess.run([*NETNS, "--", "bash", "-c", wiped], cwd=checkout, env=env, capture_output=True,
                              text=True, timeout=900)

    assert restored.returncode == 0, restored.stderr[-3000:]
    assert "28 packages match the lock" in restored.stderr
    python = checkout / ".hyperlpr-env" / "bin" / "python"
    works = subprocess.run([*NETNS, "--", str(python), "-c", "import onnxruntime, loguru"], capture_output=True,
                           text=True)
    assert works.returncode == 0, works.stderr
    # The status line command 1 printed, pasted, until every Drive write (the rerun's too, if the
    # first worker had not packed the snapshot before the environment was wiped) is done.
    status = done.stderr.split("being written in the background: `", 1)[1].split("`", 1)[0]
    deadline = time.monotonic() + 300
    while (asked := subprocess.run(["bash", "-c", status], cwd=checkout, env=env, capture_output=True,
                                   text=True)).returncode == 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert asked.returncode == 0 and "safe to shut down" in asked.stdout, asked.stdout + asked.stderr
    assert sorted(p.name for p in (checkout / "drive" / ".warmstart" / "v1" / "snapshots").iterdir())[0].startswith(
        "hyperlpr-py")
