#!/usr/bin/env bash
# The Colab cycle in containers: a cold bootstrap with a host folder as Drive, then a fresh
# container with no network restoring from that folder, then the recipe's checks and the GPU.
#
#   docker/run.sh [PYTHON_VERSION] [DRIVE_DIR] [RECIPE] [BOOTSTRAP FLAGS...]
#                                   (defaults: 3.12, ./drive-docker, hyperlpr; e.g. --packages-only)
#
# The engine is Docker, else podman (docker/engine.sh; WARMSTART_ENGINE chooses). The image builds
# on the CUDA base; BASE_IMAGE=TAG builds on another one that has Python already (without a
# registry: docker/debian-base.sh makes one from Debian's packages). CA_BUNDLE=FILE hands the
# containers a CA bundle to reach the package index with (behind a TLS-inspecting proxy).
# With the GPUs (the NVIDIA runtime, or CDI for podman) the recipe's GPU checks run; without,
# the runs pass --allow-no-gpu and `invoke gpu` must say there is none.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=docker/engine.sh
source docker/engine.sh

python_version="${1:-3.12}"
drive="$(realpath -m "${2:-drive-docker}")"
recipe="${3:-hyperlpr}"
shift "$(( $# < 3 ? $# : 3 ))"
flags=("$@")
image="warmstart-cuda:py${python_version//./}"
mkdir -p "$drive"

build=(--build-arg "PYTHON_VERSION=$python_version")
if [ -n "${BASE_IMAGE:-}" ]; then
    build+=(--build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg PYTHON_FROM=base)
fi
if [ "$engine" = podman ]; then
    build+=(--format docker)  # SHELL is a Docker-format instruction
fi
"$engine" build -f docker/Dockerfile "${build[@]}" -t "$image" .

net=()
if [ -n "${CA_BUNDLE:-}" ]; then
    net=(-v "$(realpath "$CA_BUNDLE"):/etc/ssl/certs/host-ca.crt:ro" -e SSL_CERT_FILE=/etc/ssl/certs/host-ca.crt
         -e PIP_CERT=/etc/ssl/certs/host-ca.crt)
fi
no_gpu=()
if [ ${#gpu_flags[@]} -eq 0 ]; then
    no_gpu=(--allow-no-gpu)
fi
run=("$engine" run --rm --pull=never "${run_flags[@]}" "${gpu_flags[@]}" -v "$drive:/drive")

echo "== cold bootstrap (network on, empty cache in $drive)"
"${run[@]}" "${net[@]}" "$image" "$recipe" "${no_gpu[@]}" "${flags[@]}" --json
echo "== offline restore in a fresh container (--network none)"
"${run[@]}" --network none "$image" "$recipe" "${no_gpu[@]}" "${flags[@]}" --offline --json
echo "== GPU as NVML sees it"
status=0
"${run[@]}" --network none --entrypoint bash "$image" \
    -c 'bash warmstart.sh warmstart --offline >/dev/null && invoke gpu --json' \
    || status=$?
# With the GPUs, `invoke gpu` must find one (0); without, it must say there is none (3).
expected=3
[ ${#gpu_flags[@]} -gt 0 ] && expected=0
[ "$status" -eq "$expected" ] || { echo "invoke gpu exited $status, expected $expected" >&2; exit 1; }
