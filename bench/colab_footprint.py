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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from warmstart import (
    PROJECT_ROOT,
    wheels,
)
from warmstart.cudalibs import lock_tags
from warmstart.download import Downloader
from warmstart.images import images_of
from warmstart.lock import LockTarget, Pin, needs, parse_lock
from warmstart.pipconfig import IndexSettings


def wheel_size(index: Downloader, pin: Pin, target: LockTarget) -> int:
    files = [f for f in index.project_files(pin.name) if f.sha256 in pin.hashes]
    choice = wheels.best(((f.filename, f) for f in files), wheels.ranking(lock_tags(target)))
    return choice.size or 0 if choice else 0


def footprint(index: Downloader, lock_file: Path, shipped: dict[str, str], target: LockTarget) -> tuple[int, int, int]:
    lock = parse_lock(lock_file)
    found = needs(lock.pins, shipped)
    return len(found.install), sum(wheel_size(index, p, target) for p in found.install), len(lock.pins)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lock", action="append", type=Path, default=[])
    parser.add_argument("--image", action="append", default=[], help="an image name, or none (bare VM)")
    args = parser.parse_args()
    images = {i.name: i for i in images_of("colab", PROJECT_ROOT / "envs").values()}
    cases = list(zip(args.lock, args.image, strict=False))
    if not cases:
        for recipe in ("hyperlpr", "hyperlpr-train"):
            for image in sorted(images.values(), key=lambda i: i.python, reverse=True):
                tag = f"py{image.python.major}{image.python.minor}"
                cases.append((PROJECT_ROOT / "requirements" / image.name / f"{recipe}-{tag}-manylinux_x86_64.txt",
                              image.name))
            cases.append((PROJECT_ROOT / "requirements" / f"{recipe}-py313-manylinux_x86_64.txt", "none"))
    index = Downloader(IndexSettings.from_environ())
    print("| lock | platform | distributions installed (of the lock) | wheels downloaded, MB |")
    print("|---|---|---|---|")
    for lock_file, image_name in cases:
        image = images.get(image_name)
        major, minor = re.search(r"-py(\d)(\d+)", lock_file.name).groups()
        target = LockTarget(f"{major}.{minor}", "manylinux_x86_64")
        count, size, total = footprint(index, lock_file, image.shipped if image else {}, target)
        where = f"Colab {image.name} (Python {image.python})" if image else "bare VM"
        print(f"| {lock_file.relative_to(PROJECT_ROOT) if lock_file.is_relative_to(PROJECT_ROOT) else lock_file.name} "
              f"| {where} | {count} (of {total}) | {size / 1e6:.0f} |")


if __name__ == "__main__":
    main()
