"""A wiped Colab VM's first cell, `warmstart.sh`, side by side with its user's own `uv pip install`.

    sudo python bench/wiped_vm.py [--colab colab-2026.07] [--recipe hyperlpr] [--rounds 5] [--slow-drive 20,60]

bench/bootstrap.py times `invoke bootstrap` on a VM that has warmstart's tools, from a checkout
on local disk. On Colab a wiped VM has neither: its first cell is `warmstart.sh`, from the
checkout on Drive, which restores the tools, then the recipe. Here, as there: the Colab stand-in
(the image's Python, with the image's versions of the recipe's closure and of warmstart's tools
preinstalled), and the checkout and its Drive cache in MyDrive/ on the Drive folder, a mount
point (a bind mount, or bench/slowfs.py's FUSE layer with --slow-drive). Once, untimed, `warmstart.sh` online on a first
VM caches the tools' wheels and makes the recipe's snapshot. Then every round, each on a wiped
VM (the stand-in copied anew, an empty HOME), taking turns going first:

  uv-index           uv pip install of what the image lacks, from the index, empty uv cache:
                     the user's own cell without warmstart
  warmstart.sh       bash MyDrive/warmstart/warmstart.sh RECIPE --offline, network cut: the
                     tools from Drive, then the recipe's snapshot (packages only)
  warmstart.sh-online  the same with the index reachable (a slow read races it)
  read-limit         cat of the snapshot archive off the Drive folder: the read-bound time of
                     the recipe alone (the wheels of the 6 tools the image lacks add 0.5 MB)

It prints medians with min-max and the ratios, and keeps every sample in bench/results-wiped.json
(one entry per image and Drive: the latest run of each).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from bootstrap import REPO, Bench, drive_folder, run, vm_disk  # bench/bootstrap.py
from standin import machine_network
from tools import tools_lock  # bench/tools.py

from warmstart import PROJECT_ROOT
from warmstart.images import images_of
from warmstart.uv import find_uv

FLAGS = ["--allow-no-gpu", "--packages-only", "--json"]


@contextmanager
def mounted(folder: Path, slow: bool):
    """`folder` as a mount point, as Colab's Drive is (warmstart.sh refuses an unmounted one)."""
    if slow:  # the FUSE layer is one
        yield
        return
    subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=False)


class WipedVM:
    def __init__(self, bench: Bench, drive: Path, work: Path) -> None:
        self.bench, self.drive, self.work = bench, drive, work
        self.checkout = drive / "MyDrive" / "warmstart"
        self.bin = work / "bin"  # uv, as Colab ships it
        self.bin.mkdir()
        uv = find_uv()
        if uv is None:
            sys.exit("bench: needs uv (pip install -e '.[uv]')")
        (self.bin / "uv").symlink_to(uv)
        self.races: list[str] = []  # who won each online cell's race: "snapshot", "index", "not raced"

    def first_vm(self) -> float:
        """Untimed setup: the checkout (the files a clone has) and, as a first VM's warmstart.sh
        would have cached them, the tools' wheels on Drive (the stand-in has no pip to fetch them
        with); then warmstart.sh online, until its snapshot is written."""
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True)
        for name in filter(None, listed.stdout.split("\0")):
            if (REPO / name).is_file():
                (self.checkout / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / name, self.checkout / name)
        wheels = self.drive / "MyDrive" / ".warmstart" / "v1" / "wheels"
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--python-version", self.bench.minor, "--require-hashes",
                        "-r", str(tools_lock(self.bench.minor)), "-d", str(wheels)], env=self.bench.env(), check=True)
        seconds, _ = self.cell(wait="1")
        return seconds

    def env(self) -> dict[str, str]:
        """A wiped VM's: its notebook Python first on PATH, an empty HOME, the machine's network
        settings only."""
        home = Path(tempfile.mkdtemp(dir=self.work, prefix="home-"))
        return machine_network() | self.bench.platform | {
            "PATH": f"{self.bench.venv / 'bin'}:{self.bin}:/usr/bin:/bin", "HOME": str(home),
            "PIP_CONFIG_FILE": os.devnull, "WARMSTART_MOUNT_POINT": str(self.drive)}

    def cell(self, *args: str, offline: bool = False, wait: str = "") -> tuple[float, dict]:
        """warmstart.sh on a wiped VM: its time and its --json report."""
        self.bench.fresh_venv()
        cmd = ["bash", str(self.checkout / "warmstart.sh"), self.bench.recipe_arg, *FLAGS, *args]
        report = self.work / "report.json"
        with report.open("w") as out:
            seconds, _ = run(["unshare", "--net", "--", *cmd] if offline else cmd,
                             self.env() | ({"WARMSTART_WAIT": wait} if wait else {}), cwd=self.work, stdout=out)
        return seconds, json.loads(report.read_text())

    def one_round(self, turn: int) -> dict[str, float]:
        times: dict[str, float] = {}
        uv_cmd = [str(self.bin / "uv"), "pip", "install", "-q", "--no-deps", "--require-hashes",
                  "-r", str(self.bench.requirements)]

        def uv_index() -> None:
            times["uv-index"], _ = run([*uv_cmd, "--python", str(self.bench.fresh_venv())], self.bench.env())

        def offline() -> None:
            times["warmstart.sh"], done = self.cell("--offline", offline=True)
            if not done["snapshot"].get("used"):
                sys.exit(f"bench: the wiped VM did not restore the snapshot: {done['snapshot']}")

        def online() -> None:
            times["warmstart.sh-online"], done = self.cell()
            self.races.append(done["snapshot"].get("race", {}).get("winner", "not raced"))

        methods = [uv_index, offline, online]
        for method in methods[turn % 3:] + methods[:turn % 3]:
            method()
        archive = max((self.drive / "MyDrive" / ".warmstart" / "v1" / "snapshots").glob("*.tar.zst"),
                      key=lambda p: p.stat().st_mtime)
        times["read-limit"], _ = run(["cat", str(archive)], self.bench.env(), stdout=subprocess.DEVNULL)
        return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="hyperlpr")
    parser.add_argument("--colab", default="colab-2026.07", metavar="IMAGE")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--slow-drive", metavar="DELAY_MS,MIB_PER_S")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: run as root (a mount point for Drive, unshare for the network cut)")
    image = images_of("colab", PROJECT_ROOT / "envs")[args.colab]
    with tempfile.TemporaryDirectory(prefix="bench-wiped-") as tmp, vm_disk(Path(tmp), True) as (work, _), \
            drive_folder(work, args.slow_drive) as (drive, _), mounted(drive, bool(args.slow_drive)):
        bench = Bench(args.recipe, work, drive, None, image)
        bench.prepare()
        vm = WipedVM(bench, drive, work)
        print(f"first VM: {vm.first_vm():.2f} s", flush=True)
        rounds = []
        for turn in range(args.rounds):
            rounds.append(vm.one_round(turn))
            print(f"round {turn + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in rounds[-1].items()), flush=True)
    samples = {name: [r[name] for r in rounds] for name in rounds[0]}
    median = {name: statistics.median(values) for name, values in samples.items()}
    drive_label = f"slow Drive {args.slow_drive}" if args.slow_drive else "local disk"
    print(f"\n{args.recipe} on {args.colab}, a wiped VM's first cell, {drive_label}, {args.rounds} rounds:")
    for name, values in samples.items():
        print(f"  {name:20s} {median[name]:.2f} s ({min(values):.2f}-{max(values):.2f})")
    ratios = {"warmstart.sh / uv-index": median["warmstart.sh"] / median["uv-index"],
              "warmstart.sh-online / uv-index": median["warmstart.sh-online"] / median["uv-index"]}
    if args.slow_drive:  # from local disk the archive comes out of the page cache
        ratios["warmstart.sh / read-limit"] = median["warmstart.sh"] / median["read-limit"]
    for name, ratio in ratios.items():
        print(f"  {name:32s} {ratio:.2f}")
    print(f"  online races won by: {', '.join(vm.races)}")
    out = REPO / "bench" / "results-wiped.json"
    results = json.loads(out.read_text()) if out.is_file() else {}
    results[f"{args.recipe} on {args.colab}, {drive_label}"] = {
        "rounds": args.rounds, "seconds": samples, "median": median, "ratios": ratios,
        "online_race_winners": vm.races, "cpus": os.cpu_count()}
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
