"""Recipe smoke checks, run in the target environment after an install."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .recipe import Check

TIMEOUT_SECONDS = 600


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    output: str
    seconds: float

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def run_check(check: Check, python: Path, cwd: Path) -> CheckResult:
    if check.python is not None:
        cmd = [str(python), "-c", check.python]
    else:
        cmd = ["bash", "-c", check.run or ""]
    # `python` in a shell check is the target interpreter.
    env = dict(os.environ, PATH=f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=TIMEOUT_SECONDS)
        ok, output = done.returncode == 0, (done.stdout + done.stderr).strip()
    except subprocess.TimeoutExpired:
        ok, output = False, f"timed out after {TIMEOUT_SECONDS} s"
    return CheckResult(check.name, ok, output, round(time.perf_counter() - start, 3))
