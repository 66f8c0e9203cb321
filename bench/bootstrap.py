"""Wall times of bootstrapping the real `hyperlpr` recipe, against plain pip in the same run.

    python bench/bootstrap.py [--recipe hyperlpr] [--rounds 1]

Runs, each with an empty pip cache (as on a wiped VM):
  baseline  `pip install --require-hashes --no-deps -r <lock>` into a fresh virtualenv, from the index
  cold      `invoke bootstrap` into a fresh virtualenv with an empty Drive folder
  no-op     the same command again
  offline   `invoke bootstrap --offline` into a wiped virtualenv, network cut with `unshare -n`
and prints each time with its ratio to the baseline, plus a JSON line for tooling.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from warmstart import PROJECT_ROOT, target  # noqa: E402
from warmstart.installer import pip_env  # noqa: E402
from warmstart.lock import lock_path  # noqa: E402
from warmstart.recipe import load_recipe  # noqa: E402


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


def fresh_venv(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    return path / "bin" / "python"


def one_round(recipe_name: str, work: Path) -> dict[str, float]:
    recipe = load_recipe(recipe_name, PROJECT_ROOT)
    lock = lock_path(recipe, target.probe(None).tag, target.platform_tag())
    drive = work / "drive"
    drive.mkdir()

    def env() -> dict[str, str]:  # an empty pip cache for every run, as on a wiped VM
        return pip_env() | {"XDG_CACHE_HOME": tempfile.mkdtemp(dir=work)}

    bootstrap = [sys.executable, "-m", "invoke", "--search-root", str(REPO), "bootstrap",
                 "--recipe", recipe_name, "--drive", str(drive), "--allow-no-gpu"]
    times = {}
    times["baseline"] = timed([sys.executable, "-m", "pip", "--python", str(fresh_venv(work / "base")),
                               "install", "--quiet", "--require-hashes", "--no-deps", "-r", str(lock)], env())
    venv = fresh_venv(work / "venv")
    times["cold"] = timed([*bootstrap, "--python", str(venv)], env())
    times["no-op"] = timed([*bootstrap, "--python", str(venv)], env())
    venv = fresh_venv(work / "venv")
    times["offline"] = timed(["unshare", "--net", "--", *bootstrap, "--python", str(venv), "--offline"], env())
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="hyperlpr")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()

    rounds = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="warmstart-bench-") as tmp:
            rounds.append(one_round(args.recipe, Path(tmp)))
    best = {name: min(r[name] for r in rounds) for name in rounds[0]}
    base = best["baseline"]
    print(f"{'run':<10}{'seconds':>10}{'x baseline':>12}   (best of {args.rounds}, {os.cpu_count()} CPUs)")
    for name, seconds in best.items():
        print(f"{name:<10}{seconds:>10.2f}{seconds / base:>12.2f}")
    print(json.dumps({"recipe": args.recipe, "seconds": best,
                      "ratio_to_baseline": {k: round(v / base, 3) for k, v in best.items()}}))


if __name__ == "__main__":
    main()
