"""How fast warmstart brings an environment back, against the other ways to do it, side by side.

    python bench/bootstrap.py [--recipe hyperlpr ...] [--rounds 3] [--slow-drive 20,60] [--out F]

For each recipe, on the same lock and machine, in one run, every round:
  pip-index          pip install -r <lock> into a fresh virtualenv, from the index
  uv-index           uv pip install -r <lock>, from the index, empty uv cache
  pip-wheelhouse     pip from a local folder of the lock's wheels
  uv-wheelhouse      uv from that folder, empty uv cache
  tar-limit          tar -x of the installed tree, from the Drive folder: the limit
  warmstart-cold     invoke bootstrap with an empty Drive folder (index -> Drive)
  warmstart-no-op    the same command again
  warmstart-offline  invoke bootstrap --offline after a wipe, network cut (unshare -n)
Every run starts with empty pip/uv caches and a new virtualenv at the same path (a wiped VM
has the same prefix). Prints medians with min-max and the ratios to the limit and to pip,
the peak memory of the warmstart process during the offline restore, and writes JSON.
--slow-drive DELAY_MS,MIB_PER_S puts the Drive folder behind a FUSE layer (bench/slowfs.py)
that delays every open and caps throughput, as a network file system would.
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
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from warmstart import PROJECT_ROOT, target
from warmstart.lock import LockTarget, lock_path
from warmstart.pipconfig import (
    pip_env,
    uv_env,
)
from warmstart.recipe import load_recipe
from warmstart.uv import find_uv

# Runs the warmstart command and reports its own peak RSS (children such as tar and uv excluded).
RSS_WRAPPER = (
    "import atexit, resource, sys\n"
    "atexit.register(lambda: print('peak-rss-kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,"
    " file=sys.stderr))\n"
    "from invoke.main import program\n"
    "program.run(['invoke', *sys.argv[1:]])\n"
)


def run(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=cwd)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, done.stderr


def fresh_venv(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    return path / "bin" / "python"


class Bench:
    def __init__(self, recipe_arg: str, work: Path, drive: Path) -> None:
        recipe = load_recipe(recipe_arg, PROJECT_ROOT)
        self.recipe_arg = recipe_arg
        self.name = recipe.name
        version = target.probe(None).version
        self.lock = lock_path(recipe, LockTarget(f"{version.major}.{version.minor}", target.platform_tag()))
        self.work, self.drive = work, drive
        self.venv = work / "target"  # one prefix for every method, as on a VM
        self.uv = find_uv()

    def env(self, **extra: str) -> dict[str, str]:
        caches = tempfile.mkdtemp(dir=self.work, prefix="cache-")
        return pip_env() | uv_env() | {"XDG_CACHE_HOME": caches, "UV_CACHE_DIR": caches} | extra

    def prepare(self) -> dict[str, int]:
        """Untimed: the wheelhouse, and the installed tree as tar archives on Drive."""
        self.wheelhouse = self.work / "wheelhouse"
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--require-hashes", "-r", str(self.lock), "-d", str(self.wheelhouse)],
                       env=self.env(), check=True)
        python = fresh_venv(self.venv)
        subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                        "--no-index", "--find-links", str(self.wheelhouse), "--no-deps", "--require-hashes",
                        "-r", str(self.lock)], env=self.env(), check=True)
        self.tree = self.drive / f"{self.name}-tree.tar"
        subprocess.run(["tar", "-cf", str(self.tree), "-C", str(self.venv), "lib", "bin"], check=True)
        self.tree_zst = None
        if shutil.which("zstd"):
            self.tree_zst = self.drive / f"{self.name}-tree.tar.zst"
            subprocess.run(["zstd", "-q", "-3", "-T0", "-f", str(self.tree), "-o", str(self.tree_zst)], check=True)
        wheel_bytes = sum(p.stat().st_size for p in self.wheelhouse.iterdir())
        installed = int(subprocess.run(["du", "-sb", str(self.venv)], capture_output=True, text=True)
                        .stdout.split()[0])
        return {"wheels": len(list(self.wheelhouse.iterdir())), "wheel_bytes": wheel_bytes,
                "installed_bytes": installed}

    def one_round(self) -> tuple[dict[str, float], int]:
        lock, times = str(self.lock), {}
        hashed = ["--no-deps", "--require-hashes", "-r", lock]
        pip_cmd = [sys.executable, "-m", "pip", "--python"]
        times["pip-index"], _ = run([*pip_cmd, str(fresh_venv(self.venv)), "install", "-q", *hashed], self.env())
        times["pip-wheelhouse"], _ = run([*pip_cmd, str(fresh_venv(self.venv)), "install", "-q", "--no-index",
                                          "--find-links", str(self.wheelhouse), *hashed], self.env())
        if self.uv:
            uv_cmd = [str(self.uv), "pip", "install", "-q", "--python"]
            times["uv-index"], _ = run([*uv_cmd, str(fresh_venv(self.venv)), *hashed], self.env())
            times["uv-wheelhouse"], _ = run([*uv_cmd, str(fresh_venv(self.venv)), "--no-index",
                                             "--find-links", str(self.wheelhouse), *hashed], self.env())
        fresh_venv(self.venv)
        limits = [run(["tar", "-xf", str(self.tree), "-C", str(self.venv)], self.env())[0]]
        if self.tree_zst:
            fresh_venv(self.venv)
            limits.append(run(["tar", "-I", "zstd", "-xf", str(self.tree_zst), "-C", str(self.venv)],
                              self.env())[0])
        times["tar-limit"] = min(limits)

        cache = self.drive / ".warmstart"
        shutil.rmtree(cache, ignore_errors=True)
        boot = [sys.executable, "-c", RSS_WRAPPER, "--search-root", str(REPO), "bootstrap",
                "--recipe", self.recipe_arg, "--drive", str(self.drive), "--allow-no-gpu", "--json",
                "--packages-only",  # packages are what is measured; assets are their own matter
                "--python", str(self.venv / "bin" / "python")]
        fresh_venv(self.venv)
        same_vm = self.env()  # the no-op re-run happens on the VM the cold run just set up
        times["warmstart-cold"], _ = run(boot, same_vm)
        times["warmstart-no-op"], _ = run(boot, same_vm)
        fresh_venv(self.venv)
        times["warmstart-offline"], err = run(["unshare", "--net", "--", *boot, "--offline"], self.env())
        rss = int(next(line.split()[1] for line in err.splitlines() if line.startswith("peak-rss-kib")))
        return times, rss


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", action="append", help="recipe name or path (repeatable)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slow-drive", metavar="DELAY_MS,MIB_PER_S")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results.json")
    args = parser.parse_args()
    recipes = args.recipe or ["hyperlpr", str(REPO / "bench" / "recipes" / "hyperlpr-plus.toml")]

    results = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
               "rounds": args.rounds, "recipes": {}}
    for recipe_arg in recipes:
        with tempfile.TemporaryDirectory(prefix="warmstart-bench-") as tmp, \
                drive_folder(Path(tmp), args.slow_drive) as (drive, slow):
            bench = Bench(recipe_arg, Path(tmp), drive)
            size = bench.prepare()
            rounds = [bench.one_round() for _ in range(args.rounds)]
        samples = {name: [r[0][name] for r in rounds] for name in rounds[0][0]}
        median = {name: statistics.median(v) for name, v in samples.items()}
        limit, pip = median["tar-limit"], median["pip-index"]
        results["slow_drive"] = slow
        results["recipes"][bench.name] = {
            "size": size, "seconds": samples, "median": median,
            "x_limit": {k: round(v / limit, 2) for k, v in median.items()},
            "x_pip_index": {k: round(v / pip, 3) for k, v in median.items()},
            "offline_restore_peak_rss_mib": round(max(r[1] for r in rounds) / 1024, 1),
        }
        print(f"\n{bench.name}: {size['wheels']} wheels, {size['wheel_bytes'] / 2**20:.0f} MiB of wheels, "
              f"{size['installed_bytes'] / 2**20:.0f} MiB installed; {args.rounds} rounds"
              + (f"; slow drive {slow}" if slow else ""))
        print(f"{'method':<19}{'median s':>9}{'min-max':>15}{'x limit':>9}{'x pip':>8}")
        for name, values in samples.items():
            print(f"{name:<19}{median[name]:>9.2f}{f'{min(values):.2f}-{max(values):.2f}':>15}"
                  f"{median[name] / limit:>9.2f}{median[name] / pip:>8.3f}")
        print(f"peak RSS of warmstart during the offline restore: "
              f"{results['recipes'][bench.name]['offline_restore_peak_rss_mib']} MiB")
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
