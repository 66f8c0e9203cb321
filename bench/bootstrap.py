"""How fast warmstart brings an environment back, against the other ways to do it, side by side.

    python bench/bootstrap.py [--recipe hyperlpr ...] [--rounds 3] [--slow-drive 20,60] [--out F]

For each recipe, on the same lock and machine, in one run, every round:
  pip-index            pip install -r <lock> into a fresh virtualenv, from the index
  uv-index             uv pip install -r <lock>, from the index, empty uv cache
  pip-wheelhouse       pip from a local folder of the lock's wheels
  uv-wheelhouse        uv from that folder, empty uv cache
  tar-limit            tar -x of the installed tree, from the Drive folder: the limit
  read-limit           reading warmstart's snapshot archive off the Drive folder (cat): the
                       read-bound time, what a slow Drive allows at best
  zstd-tar-limit       zstd -d | tar -x of that archive: the limit of a restore from it
  warmstart-cold       invoke bootstrap with an empty Drive folder, until it returns with the
                       environment usable (the Drive cache then fills in the background)
  warmstart-cold-wait  the same with --wait: until the Drive cache and snapshot are written
  warmstart-no-op      the same command again
  warmstart-offline    invoke bootstrap --offline after a wipe, network cut (unshare -n)
  warmstart-restore-step  that run's own snapshot step (its --json report): the restore without
                       the command's fixed cost (interpreter, imports, the checks)
  warmstart-online     the same with the index reachable: a snapshot that reads slowly races uv
                       from the index (warmstart.race); the report says which won
  warmstart-team       (--team) invoke bootstrap --cache s3://... after a wipe, with an empty
                       Drive folder and the package index unreachable: everything comes from
                       the team cache, a real S3 server (SeaweedFS) on 127.0.0.1, filled once
                       beforehand; until it returns (Drive then fills in the background)
  warmstart-drive+team (--team) the same after the next wipe: Drive and the team cache both
                       hold the snapshot (the team store is opened only if Drive falls behind)
  warmstart-no-op+team (--team) the same command again: nothing to do, the team store not opened
Every run starts with empty pip/uv caches and a new virtualenv at the same path (a wiped VM
has the same prefix), after a sync (no method pays for the writeback of the one before). The
offline and online restores take turns going first, after one restore that is not timed (the
first restore after the cold runs was the slower on this VM, whichever it was).
--colab IMAGE measures the same on a Colab stand-in as well: the image's Python (pyenv) with
the image's versions of the lock's closure (and of warmstart's tools) preinstalled, so the lock
adds only what the image lacks (pip and uv install just those; no tar-limit, the tree is the image's).
Prints medians with min-max and the ratios to each limit and to uv, the peak memory of the
warmstart process during the offline restore (and, with --team, during the team cache's two
restores), and writes JSON and a chart (PNG, with matplotlib: pip install -e '.[bench]') beside it.
--slow-drive DELAY_MS,MIB_PER_S runs the Drive-bound methods a second time with the Drive folder
behind a FUSE layer (bench/slowfs.py) that delays every open and caps throughput, as Drive does
(repeatable: one run per Drive).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # warmstart, and the test helpers the bench shares

from standin import install_image_versions, pyenv_python

from warmstart import PROJECT_ROOT, target
from warmstart.images import Image, images_of
from warmstart.lock import LockTarget, lock_path, needs, parse_lock
from warmstart.pipconfig import (
    pip_env,
    uv_env,
)
from warmstart.recipe import load_recipe
from warmstart.tools import LAUNCH
from warmstart.uv import find_uv

# Runs the warmstart command as a notebook's `!invoke` runs it (warmstart.sh's launcher: a bootstrap
# line without invoke's program, warmstart.launch; until 6 December the bench ran invoke's program)
# and reports its own peak RSS (children such as tar and uv excluded): VmHWM, its resident peak
# since its exec. getrusage's ru_maxrss would report the bench's own peak whenever that is higher,
# since Linux carries it over the fork and the exec.
RSS_WRAPPER = (
    "import atexit, sys\n"
    "atexit.register(lambda: print('peak-rss-kib', *(line.split()[1] for line in open('/proc/self/status')"
    " if line.startswith('VmHWM:')), file=sys.stderr))\n"
    + LAUNCH + "\n"
)


def run(cmd: list[str], env: dict[str, str], cwd: Path | None = None,
        stdout: Any = subprocess.PIPE) -> tuple[float, str]:
    # Untimed: the writes of the method before reach the disk first. Else its writeback runs
    # during the next one (the offline restore, measured right after the cold run, was 0.2 s
    # slower than the online one after it; alternated with a sync before each, the same).
    os.sync()
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True, cwd=cwd)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, done.stderr


def du(path: Path) -> int:
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True).stdout.split()[0])


class Bench:
    def __init__(self, recipe_arg: str, work: Path, drive: Path, team: dict[str, str] | None = None,
                 image: Image | None = None) -> None:
        recipe = load_recipe(recipe_arg, PROJECT_ROOT)
        self.recipe_arg = recipe_arg
        self.name = recipe.name
        self.work, self.drive, self.image = work, drive, image
        self.venv = work / "target"  # one prefix for every method, as on a VM
        self.template: Path | None = None  # a stand-in VM as it boots, copied for each method
        self.platform = {"WARMSTART_PLATFORM": "colab"} if image else {}
        if image:
            found = pyenv_python(image.python_minor)
            if found is None:
                sys.exit(f"bench: --colab {image.name} needs the pyenv Python {image.python_minor}")
            self.base, self.minor = found, image.python_minor
            self.lock = lock_path(recipe, LockTarget(self.minor, target.platform_tag(), image.name))
            # What pip and uv install on an image: only what it lacks (as its user would name
            # them), with the lock's hashes.
            self.requirements = work / "lacking.txt"
            lacking = needs(parse_lock(self.lock).pins, image.shipped).install
            self.requirements.write_text("".join(p.requirement_line() + "\n" for p in lacking))
        else:
            version = target.probe(None).version
            self.base, self.minor = Path(sys.executable), f"{version.major}.{version.minor}"
            self.lock = self.requirements = lock_path(recipe, LockTarget(self.minor, target.platform_tag()))
        self.uv = find_uv()
        self.races: list[str] = []  # who won each online restore: "snapshot", "index", "not raced"
        # The team cache's environment (WARMSTART_CACHE and the AWS variables), with an index
        # that cannot be reached: the team restore must not need it.
        self.team = team and {**team, "PIP_INDEX_URL": "http://127.0.0.1:9/simple"}

    def env(self, **extra: str) -> dict[str, str]:
        caches = tempfile.mkdtemp(dir=self.work, prefix="cache-")
        env = pip_env() | uv_env() | {"XDG_CACHE_HOME": caches, "UV_CACHE_DIR": caches} | self.platform | extra
        # As on a user's VM, warmstart's own bytecode is kept (a machine-wide "no bytecode" would
        # make every run compile warmstart anew); pip and uv write the same either way.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        return env

    def fresh_venv(self) -> Path:
        """A wiped VM's interpreter, at the one prefix: a new virtualenv, or the stand-in's copy."""
        shutil.rmtree(self.venv, ignore_errors=True)
        if self.template:
            shutil.copytree(self.template, self.venv, symlinks=True)
        else:
            subprocess.run([str(self.base), "-m", "venv", "--without-pip", str(self.venv)], check=True)
        return self.venv / "bin" / "python"

    def prepare(self) -> dict[str, int]:
        """Untimed: the stand-in VM, the wheelhouse, and the installed tree as tar archives on Drive."""
        if self.image:
            python = self.fresh_venv()
            # the image's versions of the lock's closure, and of warmstart's own tools (as the
            # image has them: warmstart.sh copies those instead of reading their wheels off Drive)
            tools = self.lock.with_name(f"warmstart-py{self.minor.replace('.', '')}-{target.platform_tag()}.txt")
            closure = {p.name for lock in (self.lock, tools) if lock.is_file() for p in parse_lock(lock).pins
                       if p.name in self.image.shipped}
            install_image_versions(python, closure, self.image, self.work, self.work / "uv-cache")
            self.template = Path(shutil.copytree(self.venv, self.work / "standin", symlinks=True))
        booted = du(self.venv) if self.template else 0
        self.wheelhouse = self.work / "wheelhouse"
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--python-version", self.minor, "--require-hashes", "-r", str(self.requirements),
                        "-d", str(self.wheelhouse)], env=self.env(), check=True)
        python = self.fresh_venv()
        subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                        "--no-index", "--find-links", str(self.wheelhouse), "--no-deps", "--require-hashes",
                        "-r", str(self.requirements)], env=self.env(), check=True)
        self.tree = self.tree_zst = None
        if not self.template:  # on an image the tree is mostly the image's: no tar of it
            self.tree = self.drive / f"{self.name}-tree.tar"
            subprocess.run(["tar", "-cf", str(self.tree), "-C", str(self.venv), "lib", "bin"], check=True)
            if shutil.which("zstd"):
                self.tree_zst = self.drive / f"{self.name}-tree.tar.zst"
                subprocess.run(["zstd", "-q", "-3", "-T0", "-f", str(self.tree), "-o", str(self.tree_zst)],
                               check=True)
        installed = du(self.venv) - booted
        if self.team:  # one run that fills the team cache: wheels and this prefix's snapshot
            self.fresh_venv()
            run([*self.boot(), "--wait"], self.env(**{k: v for k, v in self.team.items() if k != "PIP_INDEX_URL"}))
            shutil.rmtree(self.drive / ".warmstart", ignore_errors=True)
        wheel_bytes = sum(p.stat().st_size for p in self.wheelhouse.iterdir())
        return {"wheels": len(list(self.wheelhouse.iterdir())), "wheel_bytes": wheel_bytes,
                "installed_bytes": installed}

    def one_round(self, with_pip: bool = True) -> tuple[dict[str, float], dict[str, int]]:
        """Each method's time, and the peak RSS (KiB) of the restores that read a snapshot."""
        times, rss = {}, {}
        fresh_venv = self.fresh_venv
        hashed = ["--no-deps", "--require-hashes", "-r", str(self.requirements)]
        pip_cmd = [sys.executable, "-m", "pip", "--python"]
        if with_pip:  # Drive plays no part: measured once, on the local drive
            times["pip-index"], _ = run([*pip_cmd, str(fresh_venv()), "install", "-q", *hashed], self.env())
            times["pip-wheelhouse"], _ = run([*pip_cmd, str(fresh_venv()), "install", "-q",
                                              "--no-index", "--find-links", str(self.wheelhouse), *hashed],
                                             self.env())
        if self.uv:
            uv_cmd = [str(self.uv), "pip", "install", "-q", "--python"]
            times["uv-index"], _ = run([*uv_cmd, str(fresh_venv()), *hashed], self.env())
            times["uv-wheelhouse"], _ = run([*uv_cmd, str(fresh_venv()), "--no-index",
                                             "--find-links", str(self.wheelhouse), *hashed], self.env())
        if self.tree:
            fresh_venv()
            limits = [run(["tar", "-xf", str(self.tree), "-C", str(self.venv)], self.env())[0]]
            if self.tree_zst:
                fresh_venv()
                limits.append(run(["tar", "-I", "zstd", "-xf", str(self.tree_zst), "-C", str(self.venv)],
                                  self.env())[0])
            times["tar-limit"] = min(limits)

        cache = self.drive / ".warmstart"
        shutil.rmtree(cache, ignore_errors=True)
        boot = self.boot()
        fresh_venv()
        waited = self.env()
        times["warmstart-cold-wait"], _ = run([*boot, "--wait"], waited)
        # The limits of a restore of warmstart's own snapshot archive, as it lies on Drive: reading
        # it (the read-bound time: what a slow Drive allows) and `zstd -d | tar -x` of it.
        archive = max((cache / "v1" / "snapshots").glob("*.tar.zst"), key=lambda p: p.stat().st_size)
        times["read-limit"], _ = run(["cat", str(archive)], self.env(), stdout=subprocess.DEVNULL)
        fresh_venv()
        times["zstd-tar-limit"], _ = run(["bash", "-c", f"zstd -dcq {shlex.quote(str(archive))} | "
                                          f"tar -x -C {shlex.quote(str(self.venv))}"], self.env())
        shutil.rmtree(cache, ignore_errors=True)
        fresh_venv()
        same_vm = self.env()  # the no-op re-run happens on the VM the cold run just set up
        times["warmstart-cold"], _ = run(boot, same_vm)
        wait_for_drive_work(Path(same_vm["XDG_CACHE_HOME"]))  # untimed: the VM stays up meanwhile
        times["warmstart-no-op"], _ = run(boot, same_vm)
        # The offline and online restores take turns going first, after one restore that is not
        # timed: on this VM, whichever restore came first after the cold runs was the slower one
        # (0.7 to 1.0 s more of system CPU), offline or online alike. perf puts the difference in
        # copying the files' bytes into the page cache (33% of the samples against 24% in the
        # next restore); the likely cause is that the VM hands the memory it frees back to its
        # host (virtio-balloon free page reporting), which must back it again on first touch.
        fresh_venv()
        self.restore(boot, offline=True)  # untimed
        offline_first = len(self.races) % 2 == 0  # one online restore a round so far
        for offline in (True, False) if offline_first else (False, True):
            fresh_venv()
            if offline:
                times["warmstart-offline"], rss["offline"], times["warmstart-restore-step"] = \
                    self.restore(boot, offline=True)
            else:
                times["warmstart-online"], _, _ = self.restore(boot, offline=False)
        if self.team:
            shutil.rmtree(cache, ignore_errors=True)
            fresh_venv()
            wiped = self.env(**self.team)
            times["warmstart-team"], err = run(boot, wiped)
            rss["team"] = peak_rss(err)
            wait_for_drive_work(Path(wiped["XDG_CACHE_HOME"]))  # untimed: Drive fills from what came
            fresh_venv()
            with_team = self.env(**self.team)
            times["warmstart-drive+team"], err = run(boot, with_team)  # both hold the snapshot
            rss["drive+team"] = peak_rss(err)
            wait_for_drive_work(Path(with_team["XDG_CACHE_HOME"]))  # its worker records the use, untimed
            times["warmstart-no-op+team"], _ = run(boot, with_team)
        return times, rss

    def restore(self, boot: list[str], offline: bool) -> tuple[float, int, float]:
        """A wiped VM's restore from the snapshot on Drive: offline with the network cut, else
        with the index reachable (a slow read races it; who won is kept). Its time, the peak RSS
        of the warmstart process, and its own snapshot step: the restore without what every run
        of the command costs (the interpreter, the imports, the checks before it), what
        compares with zstd -d | tar -x."""
        report = self.work / "report.json"
        cmd = ["unshare", "--net", "--", *boot, "--offline"] if offline else boot
        with report.open("w") as out:
            seconds, err = run(cmd, self.env(), stdout=out)
        done = json.loads(report.read_text())
        if not offline:
            self.races.append(done["snapshot"].get("race", {}).get("winner", "not raced"))
        rss = peak_rss(err)
        step = next(step["seconds"] for step in done["steps"] if step["name"] == "snapshot")
        return seconds, rss, step

    def boot(self) -> list[str]:
        return [sys.executable, "-P", "-c", RSS_WRAPPER, str(REPO), "bootstrap",
                "--recipe", self.recipe_arg, "--drive", str(self.drive), "--allow-no-gpu", "--json",
                "--packages-only",  # packages are what is measured; assets are their own matter
                "--python", str(self.venv / "bin" / "python")]


def peak_rss(stderr: str) -> int:
    """The warmstart process's peak RSS in KiB, as RSS_WRAPPER printed it."""
    return int(next(line.split()[1] for line in stderr.splitlines() if line.startswith("peak-rss-kib")))


def wait_for_drive_work(cache_home: Path, limit: float = 600) -> None:
    """Until the background Drive writes of a run are done (its job folder is gone)."""
    folder = cache_home / "warmstart" / "drivework"
    deadline = time.monotonic() + limit
    while any(folder.glob("*/*")):
        if time.monotonic() > deadline:
            sys.exit(f"bench: the background Drive writes did not finish in {limit:.0f} s")
        time.sleep(0.05)


# A VM's disk, for every round's folders: a new ext4 with a journal, loop-mounted (GiB, sparse).
# This machine's root file system is an ext4 without one: there each file created right after as
# many were deleted (every round wipes its VM) first scans the recently deleted inodes
# (ext4's recently_deleted, only without a journal), and `perf` put 25 to 30% of a restore's CPU
# there. `zstd -d | tar -x` of hyperlpr's snapshot took 3.0 to 3.3 s there against 1.5 to 1.6 s
# on a journaled ext4 beside it, and an offline restore's system CPU fell from 3.1 to 4.0 s to 1.1
# to 1.5 s (bench/README.md). A wiped VM's disk has no inodes deleted a moment ago.
VM_DISK_GIB = 64


@contextmanager
def vm_disk(tmp: Path, wanted: bool):
    """The folder every round works in, and what it lies on (results.json's machine.disk): with
    `wanted`, as root, a new journaled ext4 (an image in `tmp`, mounted on tmp/vm); else `tmp`."""
    image, folder = tmp / "vm.ext4", tmp / "vm"
    if not (wanted and os.geteuid() == 0 and shutil.which("mkfs.ext4")):
        yield tmp, "the work folder's file system"
        return
    with image.open("wb") as sparse:
        sparse.truncate(VM_DISK_GIB << 30)
    folder.mkdir()
    try:
        subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
        # noinit_itable: no kernel thread zeroes the inode tables during the rounds (the image is
        # sparse: they read as zeros)
        subprocess.run(["mount", "-o", "loop,noinit_itable", str(image), str(folder)], check=True)
    except subprocess.CalledProcessError as exc:
        sys.exit(f"bench: no VM disk of its own ({exc}); --disk here measures on the work folder's")
    try:
        yield folder, "a new ext4 with a journal (loop-mounted)"
    finally:  # lazily: a Drive worker the last round left may still hold a file there
        subprocess.run(["umount", "--lazy", str(folder)], check=False)


@contextmanager
def drive_folder(work: Path, slow: str | None):
    """The folder standing in for Drive, optionally behind the slow FUSE layer."""
    if not slow:
        path = work / "drive"
        path.mkdir()
        yield path, None
        return
    delay_ms, mib_per_s = (float(x) for x in slow.split(","))
    backing, mount = work / "drive-backing", work / "drive"
    backing.mkdir()
    mount.mkdir()
    fuse = subprocess.Popen([sys.executable, str(REPO / "bench" / "slowfs.py"), str(backing), str(mount),
                             str(delay_ms), str(mib_per_s)])
    for _ in range(100):
        if os.path.ismount(mount):
            break
        time.sleep(0.1)
    else:
        fuse.kill()
        sys.exit("bench: the slow FUSE drive did not mount (needs /dev/fuse, libfuse2 and fusepy)")
    try:
        yield mount, {"open_delay_ms": delay_ms, "mib_per_s": mib_per_s}
    finally:
        subprocess.run(["umount", str(mount)], check=False)
        fuse.wait(timeout=10)


@contextmanager
def team_cache(work: Path, wanted: bool):
    """A team cache on a real S3 server on 127.0.0.1 (SeaweedFS, tests/seaweed.py): the variables
    a run needs to use it, or None."""
    if not wanted:
        yield None
        return
    from seaweed import SeaweedS3

    (work / "s3").mkdir()
    with SeaweedS3(work / "s3") as s3:
        yield {**s3.credentials("writer"), "WARMSTART_CACHE": f"s3://{s3.bucket('bench')}/team"}


def summarise(rounds: list[tuple[dict[str, float], dict[str, int]]], size: dict[str, int]) -> dict:
    samples = {name: [r[0][name] for r in rounds] for name in rounds[0][0]}
    median = {name: statistics.median(v) for name, v in samples.items()}
    limit, uv = median.get("tar-limit"), median.get("uv-index")  # no tar-limit on an image
    return {
        "size": size, "seconds": samples, "median": median,
        "x_limit": {k: round(v / limit, 2) for k, v in median.items()} if limit else {},
        "x_uv_index": {k: round(v / uv, 2) for k, v in median.items()} if uv else {},
        "x_zstd_tar": {k: round(v / median["zstd-tar-limit"], 2) for k, v in median.items()},
        "x_read": {k: round(v / median["read-limit"], 2) for k, v in median.items()},
        "offline_restore_peak_rss_mib": round(max(r[1]["offline"] for r in rounds) / 1024, 1),
        **({"team_restore_peak_rss_mib": round(max(r[1][k] for r in rounds for k in ("team", "drive+team")) / 1024, 1)}
           if "team" in rounds[0][1] else {}),
    }


def print_table(name: str, drive: str, result: dict, rounds: int) -> None:
    size = result["size"]
    print(f"\n{name}, {drive}: {size['wheels']} wheels, {size['wheel_bytes'] / 2**20:.0f} MiB of wheels, "
          f"{size['installed_bytes'] / 2**20:.0f} MiB installed; {rounds} rounds")
    print(f"{'method':<24}{'median s':>9}{'min-max':>15}{'x tar':>7}{'x zstd|tar':>11}{'x read':>8}{'x uv':>7}")
    for method, values in result["seconds"].items():
        ratios = [result[k].get(method, float("nan")) for k in ("x_limit", "x_zstd_tar", "x_read", "x_uv_index")]
        print(f"{method:<24}{result['median'][method]:>9.2f}{f'{min(values):.2f}-{max(values):.2f}':>15}"
              + "".join(f"{r:>{w}.2f}" for r, w in zip(ratios, (7, 11, 8, 7), strict=True)))
    print(f"peak RSS of warmstart during the offline restore: {result['offline_restore_peak_rss_mib']} MiB")
    if "team_restore_peak_rss_mib" in result:
        print(f"... during the team cache's restores: {result['team_restore_peak_rss_mib']} MiB")


def markdown(results: dict) -> str:
    """The README's table: each case's restores beside their limits and uv, medians (min-max)."""
    columns = [("uv from the index", "uv-index"), ("uv from a local wheelhouse", "uv-wheelhouse"),
               ("zstd -d \\| tar -x", "zstd-tar-limit"),
               ("read-bound", "read-limit"), ("offline restore (Drive)", "warmstart-offline"),
               ("its restore step", "warmstart-restore-step"),
               ("online restore (races the index)", "warmstart-online"),
               ("team cache only", "warmstart-team"), ("Drive + team", "warmstart-drive+team"),
               ("cold, usable", "warmstart-cold"), ("no-op", "warmstart-no-op"),
               ("no-op, team", "warmstart-no-op+team")]
    lines = ["| case | " + " | ".join(title for title, _ in columns)
             + " | restore / zstd\\|tar | step / zstd\\|tar | restore / read | restore / uv | online / uv"
             + " | rounds raced / won by the index | peak RSS, restore | peak RSS, team restores |",
             "|" + "---|" * (len(columns) + 9)]
    for drive, recipes in results["runs"].items():
        for recipe, result in recipes.items():
            cells = [f"{result['median'][m]:.2f} ({min(result['seconds'][m]):.2f}–{max(result['seconds'][m]):.2f})"
                     if m in result["median"] else "–" for _, m in columns]
            # the read-bound time means something only where reading is slow
            ratios = [f"{result[k][m]:.2f}" if m in result[k] and (k != "x_read" or drive != "local disk") else "–"
                      for k, m in (("x_zstd_tar", "warmstart-offline"), ("x_zstd_tar", "warmstart-restore-step"),
                                   ("x_read", "warmstart-offline"), ("x_uv_index", "warmstart-offline"))]
            online = result["x_uv_index"].get("warmstart-online")
            winners = result.get("online_race_winners", [])
            raced = f"{len(winners) - winners.count('not raced')} / {winners.count('index')} of {len(winners)}"
            lines.append(f"| {recipe}, {drive} | " + " | ".join(cells + ratios)
                         + f" | {f'{online:.2f}' if online else '–'} | {raced}"
                         + f" | {result['offline_restore_peak_rss_mib']:.0f} MiB"
                         + (f" | {team:.0f} MiB |" if (team := result.get("team_restore_peak_rss_mib")) else " | – |"))
    return "\n".join(lines)


def chart(results: dict, out: Path) -> Path | None:
    """The methods side by side, one panel per recipe and Drive; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: no chart (pip install matplotlib)")
        return None
    panels = [(recipe, drive, result) for drive, recipes in results["runs"].items()
              for recipe, result in recipes.items()]
    columns = 2 if len(panels) > 1 else 1
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6.2 * columns, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (recipe, drive, result) in zip(axes.flat, panels, strict=False):
        methods = list(result["median"])
        seconds = [result["median"][m] for m in methods]
        colours = ["#1f77b4" if m.startswith("warmstart") else "#b0b0b0" for m in methods]
        bars = ax.barh(methods, seconds, color=colours)
        ax.invert_yaxis()
        for bar, method in zip(bars, methods, strict=True):
            # a restore against the limit of its own archive, a cold run against uv
            ratio = result["x_uv_index"].get(method) if "cold" in method else result["x_zstd_tar"][method]
            label = f"{bar.get_width():.2f} s" + (f"  ({ratio:.2f}x {'uv' if 'cold' in method else 'zstd|tar'})"
                                                 if method.startswith("warmstart") and ratio else "")
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, " " + label, va="center", fontsize=7)
        ax.set_title(f"{recipe}, {drive}", fontsize=9)
        ax.set_xlabel("seconds (median)")
        ax.set_xlim(0, max(seconds) * 1.45)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"warmstart against pip, uv and tar ({results['rounds']} rounds, {results['machine']['cpus']} CPUs)",
                 fontsize=10)
    fig.tight_layout()
    png = out.with_suffix(".png")
    fig.savefig(png, dpi=110)
    return png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", action="append", help="recipe name or path (repeatable)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slow-drive", metavar="DELAY_MS,MIB_PER_S", action="append", default=[])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results.json")
    parser.add_argument("--chart-only", action="store_true",
                        help="print the README's table and draw the chart of --out again, measure nothing")
    parser.add_argument("--team", action="store_true",
                        help="also restore from a team cache on a local S3 server (needs the test extra)")
    parser.add_argument("--disk", choices=("vm", "here"), default="vm",
                        help="vm (the default, as root): every round on a new journaled ext4 of its own, as a "
                             "VM's disk; here: on the temporary folder's file system")
    parser.add_argument("--colab", metavar="IMAGE", action="append", default=[],
                        help="also on a Colab stand-in of IMAGE (colab-2026.07, colab-latest; repeatable)")
    args = parser.parse_args()
    if args.chart_only:
        results = json.loads(args.out.read_text())
        print(markdown(results))
        print(f"wrote {chart(results, args.out)}")
        return
    recipes = args.recipe or ["hyperlpr", str(REPO / "bench" / "recipes" / "hyperlpr-plus.toml")]

    results: dict = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                     "rounds": args.rounds, "runs": {}}
    images = images_of("colab", PROJECT_ROOT / "envs")
    unknown = [name for name in args.colab if name not in images]
    if unknown:
        parser.error(f"--colab {unknown[0]}: no such image (one of {', '.join(sorted(images))})")
    for name in args.colab:  # said before the first round, not as a traceback after the bare ones
        for recipe_arg in recipes:
            recipe = load_recipe(recipe_arg, PROJECT_ROOT)
            wanted = lock_path(recipe, LockTarget(images[name].python_minor, target.platform_tag(), name))
            if not wanted.is_file():
                parser.error(f"--colab {name}: {recipe.name} has no lock for that image ({wanted}); make it with "
                             f"`invoke lock --recipe {recipe_arg} --image {name}`, or name the --recipe to measure")
    for slow in [None, *args.slow_drive]:
        label = "local disk" if slow is None else "slow Drive {} ms/open, {} MiB/s".format(*slow.split(","))
        for recipe_arg, image in [(r, None) for r in recipes] + [(r, images[n]) for n in args.colab for r in recipes]:
            with tempfile.TemporaryDirectory(prefix="warmstart-bench-") as tmp, \
                    vm_disk(Path(tmp), args.disk == "vm") as (work, disk), \
                    drive_folder(work, slow) as (drive, _slow), team_cache(work, args.team) as team:
                results["machine"]["disk"] = disk
                bench = Bench(recipe_arg, work, drive, team, image)
                size = bench.prepare()
                rounds = [bench.one_round(with_pip=slow is None) for _ in range(args.rounds)]
            name = f"{bench.name} on {image.name}" if image else bench.name
            result = results["runs"].setdefault(label, {})[name] = summarise(rounds, size)
            result["online_race_winners"] = bench.races
            print_table(name, label, result, args.rounds)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print("\n" + markdown(results))
    png = chart(results, args.out)
    print(f"\nwrote {args.out}" + (f" and {png}" if png else ""))


if __name__ == "__main__":
    main()
