#!/usr/bin/env bash
# The hyperlpr recipe on a lent GPU machine (see the device tool's README): Python 3.12 with
# torch, numpy and opencv, CUDA 13.0 and cuDNN 9 on the loader path (as Colab has CUDA 12.8 and
# cuDNN 9), no network, at most 64 MiB carried per call, files kept while the machine is warm.
# Colab's onnxruntime-gpu 1.26 needs CUDA 12, which that machine lacks: 1.27 and later are the
# CUDA 13 builds, so both runs below use onnxruntime-gpu >= 1.27.
#
# 1. The recipe's patch and checks, and plates per second (bench/hyperlpr_on_gpu.py, bench/hyperlpr.py):
#   here:   bench/hyperlpr_device.sh pack
#             -> .device/hyperlpr/small.tar (hyperlpr3, loguru, invoke, unidiff wheels; the models,
#                with a stand-in recognizer; the photos) and ort-aa..ort-ad: onnxruntime-gpu's
#                wheel unpacked and xz-compressed (195 MiB against the wheel's 244), in 4 parts
#   there:  call 1 carries small.tar and ort-aa: `bash bench/hyperlpr_device.sh stage info`
#           calls 2, 3 carry ort-ab, ort-ac:       `bash bench/hyperlpr_device.sh stage`
#           call 4 carries ort-ad:                 `bash bench/hyperlpr_device.sh stage run`
# 2. The whole bootstrap, offline from a Drive cache, into the machine's own python3:
#   here:   bench/hyperlpr_device.sh pack-bootstrap FACTS   (FACTS: the files `info` wrote to $OUT;
#           the checkout as committed: `git archive HEAD`)
#             -> the machine as a platform image of the docker profile (its pip list and CUDA
#                libraries), the recipe locked for it, the Drive cache (the wheels the image lacks,
#                the assets) and warmstart's wheels: .device/hyperlpr/e2e-aa..e2e-ae
#   there:  calls 1-4 carry e2e-aa..e2e-ad: `stage`; call 5 carries e2e-ae: `stage bootstrap`
#           (which ends with `side-by-side`: the restore against uv from the same wheels, packages
#           only, alternated; again on the warm machine with `side-by-side`)
# What each step printed, and JSON, come back in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
here=.device/hyperlpr
there=/tmp/warmstart-device  # outside the checkout; it stays while the machine is warm
out=${OUT:-$there/out}
site=$there/site

step() { printf '\n== %s\n' "$*"; }

pack() {
    rm -rf "$here" && mkdir -p "$here/small/wheels" "$here/small/data/20230229/onnx" "$here/ort/tree"
    .venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux_2_28_x86_64 --dest "$here/small/wheels" hyperlpr3==0.1.3 loguru invoke unidiff
    .venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux_2_28_x86_64 --dest "$here/ort" 'onnxruntime-gpu>=1.27'
    cp ../shared/hyperlpr/models/20230229/onnx/*.onnx "$here/small/data/20230229/onnx/"
    cp -r ../shared/hyperlpr/images "$here/small/data/images"
    (cd tests && ../.venv/bin/python -c \
        "import sys, conftest; from pathlib import Path; conftest.standin_recognizer(Path(sys.argv[1]))" \
        "../$here/small/data/20230229/onnx/rpv3_mdict_160_r3.onnx")
    # The wheel's files, each checked there against its RECORD: an archive of them packs tighter.
    (cd "$here/ort/tree" && unzip -q ../onnxruntime_gpu-*.whl)
    tar -C "$here/ort/tree" -cf - . | xz -9 -T0 >"$here/ort.tar.xz"
    sha256sum "$here/ort.tar.xz" | sed "s|$here/||" >"$here/small/ort.tar.xz.sha256"
    tar -C "$here/small" -cf "$here/small.tar" .
    split -n 4 "$here/ort.tar.xz" "$here/ort-"
    rm -r "$here/small" "$here/ort" "$here/ort.tar.xz"
    ls -la "$here"
}

stage() {  # move what this call carried out of the checkout
    mkdir -p "$there"
    find "$here" -maxdepth 1 -type f -exec mv {} "$there/" \;
    ls -la "$there"
}

python_site() {  # PYTHONPATH: the site built here, then the checkout (warmstart)
    export PYTHONPATH=$site:$PWD
}

setup() {
    [ -d "$site" ] && return
    mkdir -p "$site" "$there/small" && tar -C "$there/small" -xf "$there/small.tar"
    python3 -m pip install --quiet --no-index --no-deps --no-compile --target "$site" "$there"/small/wheels/*.whl
}

info() {
    mkdir -p "$out"
    # What the machine ships, before anything is added: a platform image's facts (pack-bootstrap).
    python3 -m pip list --format=freeze >"$out/pip-freeze.txt" 2>/dev/null || true
    ldconfig -p | awk '{print $1}' | sort -u >"$out/sonames.txt"
    python3 -c 'import platform; print(platform.python_version())' >"$out/python-version.txt"
    setup && python_site
    step nvidia-smi
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv || true
    step "warmstart gpu --json (NVML, the real driver)"
    python3 -m invoke --search-root "$PWD" gpu --json || true
    step "warmstart bootstrap --recipe hyperlpr --dry-run --offline (the GPU step against the recipe)"
    mkdir -p "$there/drive"
    python3 -m invoke --search-root "$PWD" bootstrap --recipe hyperlpr --drive "$there/drive" --python python3 \
        --offline --dry-run || true
}

run() {
    setup && python_site && mkdir -p "$out"
    step "onnxruntime-gpu: the archive's sha256, then each file against the wheel's RECORD"
    (cd "$there" && cat ort-?? >ort.tar.xz && sha256sum -c small/ort.tar.xz.sha256)
    python3 - "$there/ort.tar.xz" "$site" <<'EOF'
import base64, csv, hashlib, sys, tarfile
from pathlib import Path
archive, site = sys.argv[1], Path(sys.argv[2])
with tarfile.open(archive, "r:xz") as tar:
    tar.extractall(site, filter="data")
record = next(site.glob("onnxruntime_gpu-*.dist-info")) / "RECORD"
checked = 0
for path, digest, _ in csv.reader(record.read_text().splitlines()):
    if digest:
        algo, _, want = digest.partition("=")
        got = base64.urlsafe_b64encode(hashlib.new(algo, (site / path).read_bytes()).digest()).rstrip(b"=").decode()
        assert got == want, f"{path}: {algo} differs from RECORD"
        checked += 1
print(f"{checked} files of {record.parent.name} match its RECORD")
EOF
    mkdir -p "$there/home/.hyperlpr3" "$there/work/samples"
    cp -r "$there/small/data/20230229" "$there/home/.hyperlpr3/"
    cp "$there/small/data/images/test_img.jpg" "$there/work/samples/"
    export HOME=$there/home  # `import hyperlpr3` downloads its models unless ~/.hyperlpr3/20230229 is there
    step "the recipe's checks before and after its patch (bench/hyperlpr_on_gpu.py)"
    python3 bench/hyperlpr_on_gpu.py --site "$site" --workdir "$there/work" --out "$out/hyperlpr-on-gpu.json" || true
    step "plates per second, CPU and CUDA (bench/hyperlpr.py)"
    python3 bench/hyperlpr.py --images "$there/small/data/images" \
        --out "$out/results-hyperlpr.json"
}

# -- the whole bootstrap, offline from a Drive cache, as a wiped VM of that machine would run it --

pack_bootstrap() {  # FACTS: the folder an `info` call wrote (pip-freeze.txt, sonames.txt, python-version.txt)
    local facts=$1 e2e=.device/e2e root=$PWD
    local freeze=$facts/pip-freeze.txt
    rm -rf "$e2e" && mkdir -p "$e2e/ws" "$e2e/tool" "$e2e/drive/.warmstart/v1/wheels" "$e2e/drive/.warmstart/v1/assets"
    git archive HEAD | tar -x -C "$e2e/ws"
    # The machine as a platform image of the docker profile: its pip list, and the CUDA libraries
    # its loader finds (CUDA 13.0 and cuDNN 9, as Colab's image has CUDA 12.8 and cuDNN 9).
    { echo "# CUDA libraries on the loader path of the lent GPU machine (ldconfig -p there)."
      grep -E '^lib(cudart|cublas|cublasLt|cufft|curand|cusolver|cusparse|cupti|nvrtc|nvJitLink|cudnn(_[a-z_]+)?|nccl)\.so\.[0-9]+$' \
          "$facts/sonames.txt"
    } >"$e2e/ws/envs/images/cuda-device.txt"
    # The recipe for CUDA 13: onnxruntime-gpu 1.27 and later; the stand-in recognizer's sha256.
    sed -i 's/^onnxruntime-gpu.*/onnxruntime-gpu>=1.27/' "$e2e/ws/requirements/hyperlpr.in"
    sed -i 's/^min_cuda = .*/min_cuda = "13.0"/' "$e2e/ws/recipes/hyperlpr.toml"
    (cd tests && ../.venv/bin/python -c \
        "import sys, conftest; from pathlib import Path; conftest.standin_recognizer(Path(sys.argv[1]))" \
        "$root/$e2e/standin.onnx")
    sed -i "s/8fb08b5db2adeccf43b05006bbbf409e4659d08d72e46a62631c00ff751eaeb3/$(sha256sum "$e2e/standin.onnx" | cut -c1-64)/" \
        "$e2e/ws/recipes/hyperlpr.toml"
    (cd "$e2e/ws" && "$root/.venv/bin/invoke" image --name device --freeze "$(realpath "$freeze")" \
        --python "$(cat "$facts/python-version.txt")" --profile docker --cuda cuda-device.txt \
        --source "the lent GPU machine's pip list" && "$root/.venv/bin/invoke" lock --recipe hyperlpr --image device)
    # The Drive cache: the lock's wheels the image lacks, and the assets by their sha256.
    local lock=$e2e/ws/requirements/device/hyperlpr-py312-manylinux_x86_64.txt
    .venv/bin/python - "$lock" "$freeze" >"$e2e/wheels.txt" <<'EOF'
import re, sys
from packaging.utils import canonicalize_name as name
pins = re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", open(sys.argv[1]).read(), re.M)
shipped = {(name(n), v) for n, v in re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", open(sys.argv[2]).read(), re.M)}
print("\n".join(f"{n}=={v}" for n, v in pins if (name(n), v) not in shipped))
EOF
    .venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --dest "$e2e/drive/.warmstart/v1/wheels" -r "$e2e/wheels.txt"
    for f in ../shared/hyperlpr/models/20230229/onnx/*.onnx ../shared/hyperlpr/images/test_img.jpg "$e2e/standin.onnx"; do
        cp "$f" "$e2e/drive/.warmstart/v1/assets/$(sha256sum "$f" | cut -c1-64)"
    done
    # warmstart's own wheels, from its lock (hash-checked there).
    .venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --dest "$e2e/tool" -r requirements/warmstart-py312-manylinux_x86_64.txt
    mkdir -p "$here" && tar -C "$e2e" -cf "$e2e.tar" ws tool drive wheels.txt && split -n 5 "$e2e.tar" "$here/e2e-" && rm -r "$e2e.tar" "$e2e"
    ls -la "$here"/e2e-*
}

summary() {  # a bootstrap's JSON report: its outcome and steps
    python3 - "$1" <<'EOF' || true
import json, sys
report = json.load(open(sys.argv[1]))
print("ok:", report["ok"], report.get("error") or "", *report.get("warnings", []), sep="\n  ")
for step in report["steps"]:
    print(f"  {step['name']:<9} {step['seconds']:6.2f} s  {step.get('detail', '')}")
EOF
}

bootstrap() {
    local e2e=$there/e2e tool=$there/e2e/tool-env
    mkdir -p "$e2e" "$out" && cat "$there"/e2e-?? | tar -x -C "$e2e"
    # warmstart in its own environment (as .venv in the README); the target is the machine's python3.
    python3 -m venv --without-pip "$tool"
    python3 -m pip --python "$tool/bin/python" install --quiet --no-index --no-deps --require-hashes \
        --find-links "$e2e/tool" -r "$e2e/ws/requirements/warmstart-py312-manylinux_x86_64.txt"
    cd "$e2e/ws"
    export HOME=$e2e/home && mkdir -p "$HOME"
    local ws=("$tool/bin/python" -m invoke bootstrap --recipe hyperlpr --drive "$e2e/drive" --python python3 --offline)
    step "bootstrap --recipe hyperlpr --offline --wait: a wiped VM of this machine, from the Drive cache"
    TIMEFORMAT="%R s"
    time "${ws[@]}" --wait --json >"$out/bootstrap.json" || true
    summary "$out/bootstrap.json"
    step "the image's CPU onnxruntime under onnxruntime-gpu: the warning's command, as printed, then again"
    local keep
    keep=$(python3 - "$out/bootstrap.json" <<'EOF'
import json, re, sys
print(*(m.group(1) for w in json.load(open(sys.argv[1]))["warnings"] if (m := re.search(r"alone: `([^`]+)`", w))))
EOF
)
    echo "$keep"
    if [ -n "$keep" ]; then
        eval "$keep" && time "${ws[@]}" || true
    fi
    step "a VM without the recipe's packages (uninstalled): restored from the snapshot the first run wrote"
    sed 's/==.*//' "$e2e/wheels.txt" | xargs python3 -m pip uninstall --quiet --yes || true
    time "${ws[@]}" --json >"$out/bootstrap-restore.json" || true
    summary "$out/bootstrap-restore.json"
    step "bootstrap again: a no-op"
    time "${ws[@]}" || true
    step "status"
    "$tool/bin/python" -m invoke status --recipe hyperlpr --drive "$e2e/drive" --python python3 || true
    side_by_side "${ws[@]}"
}

side_by_side() {  # the restore against uv from the same wheels (Drive's), alternated, packages only
    step "side by side: the packages the image lacks removed, then uv from Drive's wheels, or a restore"
    python3 - "$e2e" "$out/side-by-side.json" "$@" <<'EOF'
import json, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path
e2e, report, ws = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
lacked = [line.split("==")[0] for line in (e2e / "wheels.txt").read_text().split()]
lock = e2e / "ws/requirements/device/hyperlpr-py312-manylinux_x86_64.txt"
uv = [shutil.which("uv") or "uv", "pip", "install", "--quiet", "--python", "python3", "--offline", "--no-deps",
      "--no-index", "--find-links", str(e2e / "drive/.warmstart/v1/wheels"), "--require-hashes", "-r", str(lock)]
def timed(argv, **env):
    subprocess.run(["python3", "-m", "pip", "uninstall", "--quiet", "--yes", *lacked], check=True)
    subprocess.run(["sync"])
    start = time.perf_counter()
    done = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True)
    return time.perf_counter() - start, done
rounds = []
for n in range(3):
    for method in (("uv", "restore") if n % 2 == 0 else ("restore", "uv")):
        if method == "uv":
            with tempfile.TemporaryDirectory() as cache:
                seconds, done = timed(uv, UV_CACHE_DIR=cache)
            row = {"method": "uv from Drive's wheels", "seconds": round(seconds, 3), "ok": done.returncode == 0}
        else:
            seconds, done = timed([*ws, "--packages-only", "--json"])
            result = json.loads(done.stdout) if done.stdout.strip() else {}
            steps = {s["name"]: s["seconds"] for s in result.get("steps", [])}
            row = {"method": "warmstart restore", "seconds": round(seconds, 3), "ok": result.get("ok"),
                   "snapshot_step": steps.get("snapshot"), "installed": len(result.get("installed", []))}
        row["round"] = n
        print(row, done.stderr[-300:] if done.returncode else "", flush=True)
        rounds.append(row)
version = subprocess.run(uv[:1] + ["--version"], capture_output=True, text=True).stdout.strip()
report.write_text(json.dumps({"uv": version, "lacked": lacked, "cpus": os.cpu_count(), "rounds": rounds}, indent=1))
EOF
}

side-by-side() {  # again, after bootstrap, on the same warm machine
    local e2e=$there/e2e
    mkdir -p "$out" && cd "$e2e/ws" && export HOME=$e2e/home
    side_by_side "$e2e/tool-env/bin/python" -m invoke bootstrap --recipe hyperlpr --drive "$e2e/drive" --python python3 --offline
}

usage="usage: bench/hyperlpr_device.sh pack | stage [info] [run] | pack-bootstrap FACTS | stage bootstrap | side-by-side"
[ $# -gt 0 ] || { echo "$usage" >&2; exit 2; }
if [ "$1" = pack-bootstrap ]; then
    pack_bootstrap "$2"
    exit
fi
for verb in "$@"; do
    case $verb in
    pack | stage | info | run | bootstrap | side-by-side) "$verb" 2>&1 | tee -a "${OUT:-/tmp}/device-$verb.log" ;;
    *) echo "$usage" >&2; exit 2 ;;
    esac
done
