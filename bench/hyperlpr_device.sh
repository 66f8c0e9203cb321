#!/usr/bin/env bash
# bench/hyperlpr.py on a lent GPU machine that has Python 3.12 with torch (CUDA 13 libraries, from
# nvidia-* wheels) and no network, and takes at most 64 MiB per call (see the device tool's README).
# Colab's onnxruntime-gpu 1.26 needs CUDA 12, which that machine lacks; onnxruntime-gpu >= 1.27 is
# built for CUDA 13 and finds torch's CUDA 13 wheels through onnxruntime.preload_dlls().
#
#   here:   bench/hyperlpr_device.sh pack
#           -> .device/hyperlpr/part-aa, part-ab, ... (<= 60 MiB each: the wheels, as one tar)
#              and .device/hyperlpr/data/ (the models, the stand-in recognizer, the photos: 8 MiB)
#   there:  one call per part, carrying it (files stay while the machine is warm), the first
#           the last (smallest) carrying data/ too; then: bash bench/hyperlpr_device.sh run
#           (results in $OUT). Six calls of about 40 s each, then the run.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.device/hyperlpr

case "${1:-}" in
pack)
    rm -rf "$out" && mkdir -p "$out/wheels" "$out/data/20230229/onnx"
    .venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux_2_28_x86_64 --dest "$out/wheels" \
        hyperlpr3==0.1.3 'onnxruntime-gpu>=1.27' opencv-python-headless numpy flatbuffers protobuf loguru \
        tqdm requests urllib3 idna charset-normalizer certifi
    tar -C "$out/wheels" -cf - . | split -b 60M - "$out/part-"
    rm -r "$out/wheels"
    cp ../shared/hyperlpr/models/20230229/onnx/*.onnx "$out/data/20230229/onnx/"
    cp -r ../shared/hyperlpr/images "$out/data/images"
    (cd tests && ../.venv/bin/python -c \
        "import sys, conftest; from pathlib import Path; conftest.standin_recognizer(Path(sys.argv[1]))" \
        "../$out/data/20230229/onnx/rpv3_mdict_160_r3.onnx")
    ls -la "$out" "$out/data/20230229/onnx"
    ;;
run)
    scratch=$(mktemp -d)
    mkdir "$scratch/wheels"
    cat "$out"/part-* | tar -x -C "$scratch/wheels"
    python3 -m venv --system-site-packages "$scratch/env"  # torch and its CUDA 13 wheels stay visible
    "$scratch/env/bin/python" -m pip install --quiet --no-index --no-deps "$scratch"/wheels/*.whl
    # `import hyperlpr3` downloads its models unless ~/.hyperlpr3/20230229 is there: a HOME holding them.
    mkdir -p "$scratch/home/.hyperlpr3" && cp -r "$out/data/20230229" "$scratch/home/.hyperlpr3/"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    HOME="$scratch/home" "$scratch/env/bin/python" bench/hyperlpr.py --preload-dlls --images "$out/data/images" \
        --out "${OUT:-$scratch}/results-hyperlpr.json"
    ;;
*)
    echo "usage: bench/hyperlpr_device.sh pack|run" >&2
    exit 2
    ;;
esac
