#!/usr/bin/env bash
# warmstart's entry point on a wiped VM: restore warmstart's own dependencies from the Drive
# wheel cache (the first time: from the package index, filling the cache), then bootstrap.
#
#   !bash /content/drive/MyDrive/warmstart/warmstart.sh hyperlpr [bootstrap options]
#
# The Drive root is --drive DIR when given, else $WARMSTART_DRIVE, else the folder holding this
# checkout (MyDrive, when warmstart lives in MyDrive/warmstart). $WARMSTART_PYTHON picks the
# interpreter (default: python3). pip verifies every wheel against the hashed lock before use.
set -euo pipefail

say() { echo "warmstart.sh: $*" >&2; }
[ $# -ge 1 ] || { say "usage: $0 RECIPE [bootstrap options]"; exit 2; }
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${WARMSTART_PYTHON:-python3}"
recipe="$1"
shift

drive="${WARMSTART_DRIVE:-$(dirname "$here")}"
offline=0
previous=""
for arg in "$@"; do
    [ "$previous" = "--drive" ] && drive="$arg"
    case "$arg" in
        --drive=*) drive="${arg#--drive=}" ;;
        --offline) offline=1 ;;
    esac
    previous="$arg"
done

tag="$("$python" -c 'import sys; print("py%d%d" % sys.version_info[:2])')"
lock="$here/requirements/warmstart-$tag-manylinux_$(uname -m).txt"
# On Colab (detected as envs/colab.toml does, or forced), the lock compiled against its image:
# warmstart's own tools then add to the notebook's packages and replace none of them.
platform="${WARMSTART_PLATFORM:-}"
[ -z "$platform" ] && [ -n "${COLAB_RELEASE_TAG:-}${COLAB_GPU:-}" ] && platform=colab
if [ "$platform" = colab ] && [ -f "$here/requirements/colab/$(basename "$lock")" ]; then
    lock="$here/requirements/colab/$(basename "$lock")"
fi
wheels="$drive/.warmstart/v1/wheels"

# pip with only what we pass (as warmstart/installer.py does): no pip.conf, constraints or
# find-links from the environment; the index (PIP_INDEX_URL, a mirror) and TLS settings stay.
pip_clean() {
    local drop=()
    for var in $(compgen -e | grep '^PIP_' | grep -Ev '^PIP_(INDEX_URL|EXTRA_INDEX_URL|CERT|TRUSTED_HOST|DEFAULT_TIMEOUT)$'); do
        drop+=(-u "$var")
    done
    env "${drop[@]}" PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 "$python" -m pip "$@"
}

# Copy a wheel into the Drive cache whole or not at all; a differing file of that name
# (damaged) is set aside, not deleted.
cache_wheel() {
    local src="$1" dest
    dest="$wheels/$(basename "$1")"
    if [ -e "$dest" ] && cmp -s "$src" "$dest"; then return; fi
    [ -e "$dest" ] && mv "$dest" "$dest.damaged-$$"
    cp "$src" "$dest.$$.part" && sync "$dest.$$.part" && mv "$dest.$$.part" "$dest"
}

if "$python" -c "import invoke, requests, packaging, pynvml, tqdm, zstandard, filelock" 2>/dev/null; then
    say "warmstart's dependencies are installed already"
else
    [ -f "$lock" ] || { say "no lock for $tag at $lock; make one with: invoke lock --recipe warmstart"; exit 2; }
    if [ -d "$wheels" ] && pip_clean install --quiet --no-index --find-links "$wheels" \
            --no-deps --require-hashes -r "$lock" 2>/dev/null; then
        say "restored warmstart's dependencies from $wheels"
    elif [ "$offline" = 1 ]; then
        say "--offline, but $wheels lacks warmstart's own wheels for $tag; run once without --offline"
        exit 3
    else
        tmp="$(mktemp -d)"
        trap 'rm -rf "$tmp"' EXIT
        pip_clean download --quiet --no-deps --only-binary=:all: --require-hashes -r "$lock" -d "$tmp"
        mkdir -p "$wheels"
        for wheel in "$tmp"/*.whl; do cache_wheel "$wheel"; done
        pip_clean install --quiet --no-index --find-links "$tmp" --no-deps --require-hashes -r "$lock"
        say "installed warmstart's dependencies and cached them in $wheels"
    fi
fi

# warmstart itself runs from this checkout; no bytecode files on Drive (slow for small files).
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" PYTHONDONTWRITEBYTECODE=1 WARMSTART_DRIVE="$drive"
exec "$python" -m invoke --search-root "$here" bootstrap --recipe "$recipe" "$@"
