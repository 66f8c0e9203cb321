#!/usr/bin/env bash
# The Colab cycle in containers: a cold bootstrap with a host folder as Drive, then a fresh
# container with no network restoring from that folder, then the recipe's checks and the GPU.
#
#   docker/run.sh [PYTHON_VERSION] [DRIVE_DIR] [RECIPE]      (defaults: 3.12, ./drive-docker, hyperlpr)
#
# Uses --gpus all when Docker has the NVIDIA runtime; without it the GPU steps run with
# --allow-no-gpu and `invoke gpu` is expected to say there is none.
set -euo pipefail
cd "$(dirname "$0")/.."

python_version="${1:-3.12}"
drive="$(realpath -m "${2:-drive-docker}")"
recipe="${3:-hyperlpr}"
image="warmstart-cuda:py${python_version//./}"
mkdir -p "$drive"

docker build -f docker/Dockerfile --build-arg "PYTHON_VERSION=$python_version" -t "$image" .

gpu=(--gpus all)
no_gpu=()
if ! docker info --format '{{json .Runtimes}}' | grep -q nvidia; then
    gpu=()
    no_gpu=(--allow-no-gpu)
fi

echo "== cold bootstrap (network on, empty cache in $drive)"
docker run --rm "${gpu[@]}" -v "$drive:/drive" "$image" "$recipe" "${no_gpu[@]}" --json
echo "== offline restore in a fresh container (--network none)"
docker run --rm "${gpu[@]}" --network none -v "$drive:/drive" "$image" "$recipe" "${no_gpu[@]}" --offline --json
echo "== GPU as NVML sees it"
status=0
docker run --rm "${gpu[@]}" --network none -v "$drive:/drive" --entrypoint bash "$image" \
    -c 'bash warmstart.sh warmstart --offline >/dev/null && invoke gpu --json' \
    || status=$?
# With a GPU, `invoke gpu` must find it (0); without one it must say so (3).
expected=3
[ ${#gpu[@]} -gt 0 ] && expected=0
[ "$status" -eq "$expected" ] || { echo "invoke gpu exited $status, expected $expected" >&2; exit 1; }
