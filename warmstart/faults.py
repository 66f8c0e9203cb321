"""Fault injection for the tests: `WARMSTART_FAULT=<point>` kills this run (and its children)
with SIGKILL at that point, the way Colab ends a session, so the tests can show the next run
recovers. Points: download, cache-write, install, restore, place (after the first part of a
restored tree is moved into place), asset-download, asset-write (a file asset written under its
temporary name on local disk, not yet renamed), asset-place (a file asset renamed into place, not
yet recorded), asset-member (an archive asset's first member moved into its folder), patch
(after the first patched file)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable

from .settings import FAULT


def armed(name: str) -> bool:
    return FAULT.get() == name


def _kill() -> None:
    # The whole process group (pip, tar, uv with it) when this run leads one, else just itself.
    if os.getpgrp() == os.getpid():
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


_interrupted: set[str] = set()  # the points a SIGTERM was sent at (once each)


def point(name: str) -> None:
    """SIGKILL at `name`; or, with `WARMSTART_FAULT=NAME:term`, a SIGTERM to this process the
    first time it comes there (one interrupt, which the run ends as one)."""
    if armed(name):
        _kill()
    elif armed(f"{name}:term") and name not in _interrupted:
        _interrupted.add(name)
        os.kill(os.getpid(), signal.SIGTERM)


def kill_when(name: str, child: subprocess.Popen, started: Callable[[], bool]) -> None:
    """Kill the run as soon as `started()` says the child has begun changing things."""
    if not armed(name):
        return
    while child.poll() is None and not started():
        time.sleep(0.005)
    _kill()
