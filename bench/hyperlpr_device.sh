#!/usr/bin/env bash
# The hyperlpr recipe on a lent GPU machine: Python 3.12 with torch, its CUDA 13 libraries (from
# nvidia-* wheels), numpy and opencv; no network; at most 64 MiB carried per call, files kept
# while the machine stays warm (see the device tool's README). Colab's onnxruntime-gpu 1.26 needs
# CUDA 12, which that machine lacks; onnxruntime-gpu >= 1.27 is built for CUDA 13.
#
#   here:   bench/hyperlpr_device.sh pack
#             -> .device/hyperlpr/small.tar (hyperlpr3, loguru, invoke, unidiff wheels; the models,
#                with a stand-in recognizer; the photos) and ort-aa..ort-ad: onnxruntime-gpu's
#                wheel unpacked and xz-compressed (195 MiB against the wheel's 244), in 4 parts
#   there:  call 1 carries small.tar and ort-aa: `bash bench/hyperlpr_device.sh stage info`
#           calls 2, 3 carry ort-ab, ort-ac:       `bash bench/hyperlpr_device.sh stage`
#           call 4 carries ort-ad:                 `bash bench/hyperlpr_device.sh stage run`
#           (what each step printed, and JSON, in $OUT)
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
    setup && python_site && mkdir -p "$out"
    step nvidia-smi
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv || true
    python3 -m pip list --format=freeze >"$out/pip-freeze.txt" 2>/dev/null || true
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
    # The CUDA 13 libraries of torch's nvidia-* wheels, on the library path as an image has them.
    cuda_libs=$(python3 - <<'EOF'
import pathlib
try:
    import nvidia
except ImportError:  # no nvidia-* wheels: the system's libraries alone
    nvidia = None
print(":".join(sorted({str(p.parent) for d in getattr(nvidia, "__path__", ()) for p in pathlib.Path(d).rglob("lib*.so*")})))
EOF
)
    echo "the CUDA libraries' folders: ${cuda_libs:-none}"
    mkdir -p "$there/home/.hyperlpr3" "$there/work/samples"
    cp -r "$there/small/data/20230229" "$there/home/.hyperlpr3/"
    cp "$there/small/data/images/test_img.jpg" "$there/work/samples/"
    export HOME=$there/home  # `import hyperlpr3` downloads its models unless ~/.hyperlpr3/20230229 is there
    step "the recipe's checks before and after its patch (bench/hyperlpr_on_gpu.py)"
    python3 bench/hyperlpr_on_gpu.py --site "$site" --workdir "$there/work" --cuda-libs "$cuda_libs" \
        --out "$out/hyperlpr-on-gpu.json" || true
    step "plates per second, CPU and CUDA (bench/hyperlpr.py)"
    LD_LIBRARY_PATH=$cuda_libs python3 bench/hyperlpr.py --images "$there/small/data/images" \
        --out "$out/results-hyperlpr.json"
}

[ $# -gt 0 ] || { echo "usage: bench/hyperlpr_device.sh pack | stage [info] [run]" >&2; exit 2; }
for verb in "$@"; do
    case $verb in
    pack | stage | info | run) "$verb" 2>&1 | tee -a "${OUT:-/tmp}/device-$verb.log" ;;
    *) echo "usage: bench/hyperlpr_device.sh pack | stage [info] [run]" >&2; exit 2 ;;
    esac
done
