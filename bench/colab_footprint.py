"""What each shipped recipe installs on Colab's images against a bare VM: distributions and MB.

For every lock, the distributions it installs on a platform (warmstart's own rule,
`warmstart.lock.needs`, against the image's published `pip freeze`, or against nothing on a
bare VM) and the size of the wheel each one downloads, as the package index (PEP 691) lists it.

    .venv/bin/python bench/colab_footprint.py [--lock PATH --image colab-latest|none ...]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from warmstart import PROJECT_ROOT  # noqa: E402
from warmstart.cudalibs import lock_tags  # noqa: E402
from warmstart.fetch import best_wheel  # noqa: E402
from warmstart.images import images_of  # noqa: E402
from warmstart.lock import LockTarget, Pin, needs, parse_lock  # noqa: E402

INDEX = "https://pypi.org/simple"


def wheel_size(session: requests.Session, pin: Pin, target: LockTarget) -> int:
    page = session.get(f"{INDEX}/{pin.name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"},
                       timeout=60).json()
    sizes = {f["hashes"].get("sha256"): f.get("size", 0) for f in page["files"]}
    files = [(f["filename"], f["url"], f["hashes"].get("sha256", "")) for f in page["files"]
             if f["hashes"].get("sha256") in pin.hashes and f["filename"].endswith(".whl")]
    choice = best_wheel(files, lock_tags(target))
    return sizes[choice[2]] if choice else 0


def footprint(session, lock_file: Path, shipped: dict[str, str], target: LockTarget) -> tuple[int, int, int]:
    lock = parse_lock(lock_file)
    found = needs(lock.pins, shipped)
    return len(found.install), sum(wheel_size(session, p, target) for p in found.install), len(lock.pins)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lock", action="append", type=Path, default=[])
    parser.add_argument("--image", action="append", default=[], help="an image name, or none (bare VM)")
    args = parser.parse_args()
    images = {i.name: i for i in images_of("colab", PROJECT_ROOT / "envs").values()}
    cases = list(zip(args.lock, args.image))
    if not cases:
        for recipe in ("hyperlpr", "hyperlpr-train"):
            for image in sorted(images.values(), key=lambda i: i.python, reverse=True):
                tag = f"py{image.python.major}{image.python.minor}"
                cases.append((PROJECT_ROOT / "requirements" / "colab" / f"{recipe}-{tag}-manylinux_x86_64.txt",
                              image.name))
            cases.append((PROJECT_ROOT / "requirements" / f"{recipe}-py313-manylinux_x86_64.txt", "none"))
    session = requests.Session()
    print("| lock | platform | distributions installed (of the lock) | wheels downloaded, MB |")
    print("|---|---|---|---|")
    for lock_file, image_name in cases:
        image = images.get(image_name)
        major, minor = re.search(r"-py(\d)(\d+)", lock_file.name).groups()
        target = LockTarget(f"{major}.{minor}", "manylinux_x86_64")
        count, size, total = footprint(session, lock_file, image.shipped if image else {}, target)
        where = f"Colab {image.name} (Python {image.python})" if image else "bare VM"
        print(f"| {lock_file.relative_to(PROJECT_ROOT) if lock_file.is_relative_to(PROJECT_ROOT) else lock_file.name} "
              f"| {where} | {count} (of {total}) | {size / 1e6:.0f} |")


if __name__ == "__main__":
    main()
