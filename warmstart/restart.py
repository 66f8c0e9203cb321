"""The runtime-restart notice, remembered until the notebook's kernel has restarted.

A run that replaces a distribution whose modules the kernel may have imported leaves the kernel
on the old code until the runtime restarts. Before installing, such a run records what it
replaces, and the kernel it concerns, in `~/.cache/warmstart/restart/<target>.json`: so a run
that then fails still leaves the notice, and every later run (and `status`) repeats it for as
long as that kernel process (its pid and start time, from /proc) still runs.

The kernel is the process itself on the in-kernel path; for `!invoke` it is the nearest
ancestor whose command line is a Jupyter kernel's (Colab runs `colab_kernel_launcher`).
`invocation.in_notebook` asks the same of where a run's lines are read.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

from .home import state_file
from .transfer import atomic_write_text

# A Jupyter kernel runs `python -m ipykernel_launcher -f ...` (Colab's, `-m colab_kernel_launcher`).
KERNEL_MODULES = frozenset({"colab_kernel_launcher", "ipykernel_launcher", "ipykernel"})
Kernel = tuple[int, int]  # pid, start time (clock ticks after boot)


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()  # fields 3.. (the command name may hold spaces)


def started(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def kernel_process(in_kernel: bool = False) -> Kernel | None:
    """The notebook kernel this run belongs to, or None outside a notebook."""
    pid = os.getpid()
    if in_kernel:
        start = started(pid)
        return (pid, start) if start is not None else None
    while pid > 1:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        if is_kernel(os.fsdecode(cmdline).split("\0")):
            start = started(pid)
            return (pid, start) if start is not None else None
        fields = _stat(pid)
        pid = int(fields[1]) if fields else 0
    return None


def is_kernel(argv: list[str]) -> bool:
    """Whether `argv` runs a kernel's module (`-m NAME`, `-mNAME`) or its file (`.../NAME.py`):
    not any command whose words merely hold the name (a folder `ipykernel-notes`, say)."""
    for before, word in itertools.pairwise(["", *argv]):
        module = word if before == "-m" else word[2:] if word.startswith("-m") else None
        script = os.path.basename(word)[:-3] if word.endswith(".py") else None
        if module in KERNEL_MODULES or script in KERNEL_MODULES:
            return True
    return False


def remember(prefix: Path, replaced: dict[str, tuple[str, str]], kernel: Kernel) -> None:
    """Record, before installing, what the kernel will hold old copies of."""
    known = pending(prefix)
    merged = {**known, **{name: list(versions) for name, versions in replaced.items()}}
    try:
        atomic_write_text(state_file("restart", prefix), json.dumps({"kernel": list(kernel), "replaced": merged}))
    except OSError:
        pass  # the notice is still said at the end of this run


def pending(prefix: Path) -> dict[str, list[str]]:
    """What a still-running kernel imported before warmstart replaced it; {} once it restarted."""
    path = state_file("restart", prefix)
    try:
        record = json.loads(path.read_text())
        pid, start = record["kernel"]
        replaced = {str(k): list(v) for k, v in record["replaced"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    if started(int(pid)) == start:
        return replaced
    path.unlink(missing_ok=True)  # that kernel is gone: the runtime restarted
    return {}
