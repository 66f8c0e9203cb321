"""warmstart.sh's first step on a wiped VM, side by side: warmstart's own tools restored from the
Drive cache by uv (which Colab ships) and by the notebook's pip, into a new folder each time.

    python bench/tools.py [--python 3.12] [--rounds 5] [--slow-drive 20,60]

It fetches the wheels of the tools' lock (the newest Colab image's for that Python) into a Drive
folder once, from the index; then, alternating which goes first, it runs warmstart.tools.restore
as warmstart.sh does (that Python's pyenv interpreter as the notebook's, --offline, an empty HOME
as after a wipe) with uv on PATH and without it, and prints the medians, min-max and uv / pip.
`--slow-drive DELAY_MS,MIB_PER_S` puts the Drive folder behind bench/slowfs.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bootstrap import REPO, drive_folder  # bench/bootstrap.py: the Drive folder, slow or not
from standin import pyenv_python

from warmstart.pipconfig import pip_env
from warmstart.uv import find_uv

RESTORE = (
    "import sys, time; from pathlib import Path\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "from warmstart import tools\nfrom warmstart.store import DriveStore\n"
    "start = time.perf_counter()\n"
    "said = tools.restore(Path(sys.argv[2]), Path(sys.argv[3]), DriveStore(Path(sys.argv[4])), offline=True)\n"
    "print(time.perf_counter() - start, tools.find_uv(), said, sep='\\n')\n"
)


def tools_lock(minor: str) -> Path:
    name = f"warmstart-py{minor.replace('.', '')}-manylinux_x86_64.txt"
    found = sorted(REPO.glob(f"requirements/colab-*/{name}"))
    if not found:
        sys.exit(f"bench: no Colab lock {name} in requirements/")
    return found[-1]


def restore(python: Path, lock: Path, drive: Path, work: Path, with_uv: bool) -> float:
    """One wiped VM's restore of the tools, in seconds (restore() alone: the interpreter's start
    and imports are the same for both)."""
    home = Path(tempfile.mkdtemp(dir=work, prefix="home-"))
    path = "/usr/bin:/bin"
    if with_uv:
        (home / "bin").mkdir()
        (home / "bin" / "uv").symlink_to(find_uv())
        path = f"{home / 'bin'}:{path}"
    env = {"PATH": path, "HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1", "PIP_CONFIG_FILE": os.devnull}
    os.sync()
    done = subprocess.run([str(python), "-c", RESTORE, str(REPO), str(home / "tools"), str(lock), str(drive)],
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"bench: the restore failed ({'uv' if with_uv else 'pip'}):\n{done.stderr[-3000:]}")
    seconds, found, _said = done.stdout.splitlines()[:3]
    if (found != "None") != with_uv:  # the installer measured is the one named (no uv on /usr/bin, say)
        sys.exit(f"bench: the {'uv' if with_uv else 'pip'} run found uv at {found}")
    return float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", default="3.12", help="the notebook's Python (a pyenv version)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--slow-drive", metavar="DELAY_MS,MIB_PER_S")
    args = parser.parse_args()
    python = pyenv_python(args.python)
    if python is None or find_uv() is None:
        sys.exit(f"bench: needs pyenv's Python {args.python} and uv")
    lock = tools_lock(args.python)
    times: dict[str, list[float]] = {"uv": [], "pip": []}
    with (tempfile.TemporaryDirectory(prefix="bench-tools-") as tmp,
          drive_folder(Path(tmp), args.slow_drive) as (drive, _)):
        wheels = drive / ".warmstart" / "v1" / "wheels"
        wheels.mkdir(parents=True)
        subprocess.run([str(python), "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--require-hashes", "-r", str(lock), "-d", str(wheels)], env=pip_env(), check=True)
        for round_ in range(args.rounds):
            for name in (("uv", "pip") if round_ % 2 == 0 else ("pip", "uv")):
                times[name].append(restore(python, lock, drive, Path(tmp), with_uv=name == "uv"))
                print(f"round {round_ + 1} {name}: {times[name][-1]:.2f} s", flush=True)
        wheel_count = len(list(wheels.glob("*.whl")))
    median = {name: statistics.median(seconds) for name, seconds in times.items()}
    print(f"\nwarmstart's tools ({wheel_count} wheels, {lock.relative_to(REPO)}), Python {args.python}, "
          f"Drive {args.slow_drive or 'local disk'}, {args.rounds} rounds:")
    for name, seconds in times.items():
        print(f"  {name:3s} {median[name]:.2f} s ({min(seconds):.2f}-{max(seconds):.2f})")
    print(f"  uv / pip {median['uv'] / median['pip']:.2f}")
    out = REPO / "bench" / "results-tools.json"  # one entry per Drive, the latest run of each
    results = json.loads(out.read_text()) if out.is_file() else {}
    results[args.slow_drive or "local disk"] = {"python": args.python, "lock": str(lock.relative_to(REPO)),
                                                "wheels": wheel_count, "seconds": times, "median": median}
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
