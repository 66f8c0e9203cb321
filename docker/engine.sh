# shellcheck shell=bash
# shellcheck disable=SC2034  # engine, run_flags and gpu_flags are for the scripts that source this
# Sourced by docker/run.sh and docker/debian-base.sh: the container engine that answers (Docker,
# else podman; WARMSTART_ENGINE=docker|podman chooses), the flags each `run` takes, and its GPUs.
engine="${WARMSTART_ENGINE:-}"
if [ -z "$engine" ]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
        engine=docker
    elif command -v podman >/dev/null && podman info >/dev/null 2>&1; then
        engine=podman
    else
        echo "no container engine answers (docker info, podman info); install Docker, or podman (apt-get install podman runc)" >&2
        exit 3
    fi
fi
# An engine's default limits on open files and processes can exceed what this host lets its
# processes have ("setrlimit: Operation not permitted"): ask for the host's own hard limits
# (processes: no more than there can be pids; some hosts refuse more).
nproc="$(ulimit -Hu)"
pid_max="$(cat /proc/sys/kernel/pid_max 2>/dev/null || echo unlimited)"
if [ "$nproc" = unlimited ] || { [ "$pid_max" != unlimited ] && [ "$pid_max" -lt "$nproc" ]; }; then
    nproc="$pid_max"
fi
run_flags=()
for limit in "nofile:$(ulimit -Hn)" "nproc:$nproc"; do
    if [ "${limit#*:}" != unlimited ]; then
        run_flags+=(--ulimit "${limit%%:*}=${limit#*:}:${limit#*:}")
    fi
done
# The GPUs, where the engine can give them: Docker with the NVIDIA runtime, podman with the
# NVIDIA CDI spec (nvidia-ctk cdi generate); else none, and the runs say so (--allow-no-gpu).
gpu_flags=()
if [ "$engine" = docker ] && docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q nvidia; then
    gpu_flags=(--gpus all)
elif [ "$engine" = podman ] && ls /etc/cdi/nvidia.yaml /var/run/cdi/nvidia.yaml >/dev/null 2>&1; then
    gpu_flags=(--device nvidia.com/gpu=all)
fi
