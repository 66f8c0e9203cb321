"""HyperLPR3 plates per second on the CPU and on CUDA, side by side in one run.

    PYTHON bench/hyperlpr.py [--images ../shared/hyperlpr/images] [--batch 32] [--rounds 5] [--out F]

Run it with the interpreter of an environment the hyperlpr recipe bootstrapped (hyperlpr3,
onnxruntime-gpu, opencv), with the models in ~/.hyperlpr3/20230229/onnx. It builds HyperLPR3's
own pipeline (`LicensePlateCatcher()`), reads the photos and a batch made from them (each photo
mirrored and scaled, repeated up to --batch images), and times the whole pipeline (detection,
then recognition and classification of each plate found) over the batch on each provider:
  cpu    every session on onnxruntime's CPU provider
  cuda   every session on the CUDA provider (CPU for what CUDA cannot take), when this
         onnxruntime has it and an NVIDIA GPU answers
The same models, code and images for both: only the sessions' providers differ. A warm-up pass
precedes the timed rounds (CUDA sessions allocate on their first run). It prints medians with
min-max, the CUDA/CPU ratio, and which provider each session really ran on (onnxruntime falls
back to the CPU silently), and writes JSON (default: bench/results-hyperlpr.json).

On a GPU machine without network, bench/hyperlpr_device.sh prepares the environment from wheels
carried there in parts, and runs this. The recognizer model cannot be had everywhere: when the
folder holds a stand-in (tests/conftest.py: standin_recognizer), the JSON says so by its sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "recipes" / "checks"))

from onnxruntime_cuda import gpu_count  # the recipe check's own NVML probe

REAL_RECOGNIZER = "8fb08b5db2adeccf43b05006bbbf409e4659d08d72e46a62631c00ff751eaeb3"  # rpv3_mdict_160_r3.onnx
PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def batch_of(images: list, size: int) -> list:
    """The photos, each also mirrored and at 3/4 scale, repeated up to `size` images."""
    import cv2

    variants = []
    for image in images:
        h, w = image.shape[:2]
        variants += [image, cv2.flip(image, 1), cv2.resize(image, (w * 3 // 4, h * 3 // 4))]
    return [variants[n % len(variants)] for n in range(size)]


MODELS = {"detector": "y5fu_320x_sim.onnx", "recognizer": "rpv3_mdict_160_r3.onnx",
          "classifier": "litemodel_cls_96x_r1.onnx"}


def on(catcher, providers: list[str], folder: Path, options=None) -> list[str]:
    """Give each of the pipeline's sessions these providers; returns what each really got."""
    import onnxruntime as ort

    got = []
    for part, model in MODELS.items():
        stage = getattr(catcher.pipeline, part)
        stage.session = ort.InferenceSession(str(folder / model), options, providers=providers)
        got.append(stage.session.get_providers()[0])
    return got


def nodes_on(catcher, providers: list[str], folder: Path, image) -> dict[str, dict[str, int]]:
    """Per session, how many of its nodes ran on each provider in one pass over `image`, read
    from onnxruntime's profiler: what ran, node by node, not the providers a session was given."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    on(catcher, providers, folder, options)
    catcher(image)
    counted = {}
    for part in MODELS:
        profile = Path(getattr(catcher.pipeline, part).session.end_profiling())
        nodes: dict[str, set[str]] = {}
        for event in json.loads(profile.read_text()):
            if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
                nodes.setdefault(event["args"].get("provider", "?"), set()).add(event["name"])
        profile.unlink()
        counted[part] = {provider: len(names) for provider, names in sorted(nodes.items())}
    return counted


def measure(catcher, batch: list, rounds: int) -> dict:
    plates = sum(len(catcher(image)) for image in batch)  # warm-up; also counts the plates
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for image in batch:
            catcher(image)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"seconds": round(median, 4), "min": round(min(times), 4), "max": round(max(times), 4),
            "images_per_s": round(len(batch) / median, 2), "plates_per_s": round(plates / median, 2),
            "plates": plates}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, default=HERE.parent.parent / "shared" / "hyperlpr" / "images")
    parser.add_argument("--models", type=Path, default=Path("~/.hyperlpr3/20230229/onnx").expanduser())
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=HERE / "results-hyperlpr.json")
    parser.add_argument("--preload-dlls", action="store_true",
                        help="load the CUDA libraries of nvidia-* wheels first (onnxruntime >= 1.21)")
    args = parser.parse_args()

    import cv2
    import onnxruntime as ort

    if args.preload_dlls:
        ort.preload_dlls()
    import hyperlpr3 as lpr3

    photos = sorted(args.images.glob("*.jpg"))
    if not photos:
        print(f"no photos (*.jpg) in {args.images}: pass --images", file=sys.stderr)
        return 2
    batch = batch_of([cv2.imread(str(p)) for p in photos], args.batch)
    catcher = lpr3.LicensePlateCatcher(folder=str(args.models.parent.parent))  # <folder>/20230229/onnx
    recognizer = hashlib.sha256((args.models / "rpv3_mdict_160_r3.onnx").read_bytes()).hexdigest()
    gpus = gpu_count()
    runs = ["cpu"] + (["cuda"] if gpus and "CUDAExecutionProvider" in ort.get_available_providers() else [])
    results = {
        "onnxruntime": ort.__version__, "hyperlpr3": lpr3.__version__ if hasattr(lpr3, "__version__") else "",
        "python": sys.version.split()[0], "nvidia_gpus": gpus, "images": [p.name for p in photos],
        "batch": len(batch), "rounds": args.rounds,
        "recognizer": "real" if recognizer == REAL_RECOGNIZER else f"stand-in (sha256 {recognizer[:12]})",
        "runs": {},
    }
    for name in runs:
        nodes = nodes_on(catcher, PROVIDERS[name], args.models, batch[0])
        ran_on = on(catcher, PROVIDERS[name], args.models)
        results["runs"][name] = {"ran_on": ran_on, "nodes_on": nodes, **measure(catcher, batch, args.rounds)}
        row = results["runs"][name]
        print(f"{name:5} {row['plates_per_s']:8.1f} plates/s  {row['images_per_s']:8.1f} images/s  "
              f"median {row['seconds']:.3f} s ({row['min']:.3f}-{row['max']:.3f}) for {len(batch)} images; "
              f"sessions on {', '.join(ran_on)}")
        print("      nodes run, per provider: " + "; ".join(
            f"{part} " + ", ".join(f"{n} on {p.removesuffix('ExecutionProvider')}" for p, n in counts.items())
            for part, counts in nodes.items()))
    if "cuda" in results["runs"]:
        ratio = results["runs"]["cpu"]["seconds"] / results["runs"]["cuda"]["seconds"]
        results["cuda_speedup"] = round(ratio, 2)
        print(f"CUDA is {ratio:.1f}x the CPU's speed")
    else:
        print("no CUDA run: " + ("no NVIDIA GPU answers here" if not gpus else "this onnxruntime has no CUDA provider"))
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
