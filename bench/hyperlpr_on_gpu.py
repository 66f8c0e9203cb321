"""The hyperlpr recipe's promise on a real GPU, through warmstart's own patch and check code.

    PYTHONPATH=SITE:. python3 bench/hyperlpr_on_gpu.py --site SITE --workdir W [--out F]

SITE holds hyperlpr3 0.1.3 as published and onnxruntime-gpu; HOME holds the models
(~/.hyperlpr3/20230229/onnx) and W the recipe's sample photo (samples/test_img.jpg). Three steps,
each printed with what the recipe's checks printed:
  1. hyperlpr3 as published: the CUDA check must pass and the HyperLPR3 check fail, as hyperlpr3
     asks onnxruntime for the CPU alone;
  2. the recipe's patch applied by warmstart.patches.sync, as a bootstrap does after an install;
  3. both checks again: each must pass, every session on CUDA.
Exit 0 only when each step went as stated; JSON of the steps to --out. bench/hyperlpr_device.sh
prepares SITE on a GPU machine without network.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from packaging.utils import canonicalize_name

from warmstart.checks import run_checks
from warmstart.patches import sync
from warmstart.recipe import load_recipe


def checks(recipe, python: Path, workdir: Path) -> list[dict]:
    """The recipe's checks as a bootstrap runs them, each printed whole."""
    results = run_checks(recipe.checks, python, workdir)
    for result in results:
        print(f"  {'ok    ' if result.ok else 'FAILED'} {result.name} ({result.seconds:.1f} s)")
        print("    " + result.output.replace("\n", "\n    "))
    return [result.as_json() for result in results]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--site", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("hyperlpr-on-gpu.json"))
    args = parser.parse_args()

    recipe = load_recipe("hyperlpr", ROOT)
    python = Path(sys.executable)
    steps: dict[str, list[dict]] = {}
    print("1. hyperlpr3 as published")
    steps["unpatched"] = checks(recipe, python, args.workdir)
    print("2. the recipe's patch, applied by warmstart.patches.sync")
    before = sync(recipe.patches, (str(args.site),), args.site, {canonicalize_name("hyperlpr3")})
    print("  " + "; ".join(f"{s.distribution} {s.version}: was {s.state}" for s in before))
    print("3. patched")
    steps["patched"] = checks(recipe, python, args.workdir)

    cuda, lpr = 0, 1  # the recipe's checks, in its order
    as_stated = (steps["unpatched"][cuda]["ok"] and not steps["unpatched"][lpr]["ok"]
                 and all(c["ok"] for c in steps["patched"]))
    args.out.write_text(json.dumps({"as_stated": as_stated, "steps": steps}, indent=1) + "\n")
    print(f"every step as stated: {'yes' if as_stated else 'NO'}; wrote {args.out}")
    return 0 if as_stated else 1


if __name__ == "__main__":
    sys.exit(main())
