#!/usr/bin/env bash
# A base image made from Debian's packages alone, no registry: debootstrap's minimal bookworm,
# a Python of this machine as its system `python3` (like Colab's), and uv. For docker/Dockerfile
# with `--build-arg BASE_IMAGE=TAG --build-arg PYTHON_FROM=base`, where the CUDA image cannot be
# pulled.
#
#   docker/debian-base.sh PYTHON TAG [CACHE_DIR]
#
# PYTHON: an interpreter built for this Debian release whose prefix can be copied as is (pyenv's:
# "$(pyenv root)/versions/3.12.1/bin/python3.12"); it keeps its path in the image. The Debian
# root file system is made once and kept in CACHE_DIR (default: $TMPDIR/warmstart-debian-base).
# Needs root and debootstrap (apt-get install debootstrap podman runc).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=docker/engine.sh
source "$here/engine.sh"

python="$(realpath "$1")"
tag="$2"
cache="${3:-${TMPDIR:-/tmp}/warmstart-debian-base}"
prefix="$(dirname "$(dirname "$python")")"
minor="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
uv="${UV:-$(command -v uv || true)}"  # UV=PATH: the uv binary to put in the image
mkdir -p "$cache"

# What the interpreter's own modules load (ssl, ctypes, lzma, bz2, sqlite3, readline), and what
# warmstart runs (tar, zstd).
packages=ca-certificates,libssl3,libffi8,libsqlite3-0,libbz2-1.0,liblzma5,libreadline8,libncursesw6,tar,zstd
if [ ! -s "$cache/bookworm.tar" ]; then
    rootfs="$(mktemp -d "$cache/rootfs.XXXXXX")"
    debootstrap --variant=minbase --include="$packages" bookworm "$rootfs" http://deb.debian.org/debian >"$cache/debootstrap.log"
    tar -C "$rootfs" -cf "$cache/bookworm.tar.part" .
    mv "$cache/bookworm.tar.part" "$cache/bookworm.tar"
    rm -rf "$rootfs"
fi

image="$(mktemp -d "$cache/image.XXXXXX")"
trap 'rm -rf "$image"' EXIT
tar -C "$image" -xf "$cache/bookworm.tar"
# The interpreter at its own path (its RUNPATH names it), without its test suite or this host's
# site-packages additions; pip stays (warmstart.sh installs warmstart's tools with it).
mkdir -p "$image$prefix"
tar -C "$prefix" --exclude="./lib/python$minor/test" --exclude='__pycache__' --exclude='*.pth' -cf - . \
    | tar -C "$image$prefix" -xf -
chmod a+rx "$image/root"  # a pyenv prefix lies under /root: other users run it too
# Marked externally managed (PEP 668), as Debian marks its own python3: an image built on a
# distribution's Python must install all the same (docker/Dockerfile).
printf '[externally-managed]\nError=The system Python of this Debian base is managed by its packages.\n' \
    >"$image$prefix/lib/python$minor/EXTERNALLY-MANAGED"
ln -sf "$python" "$image/usr/local/bin/python3"
ln -sf "$python" "$image/usr/local/bin/python$minor"
if [ -n "$uv" ]; then
    cp "$uv" "$image/usr/local/bin/uv"
fi
# Its bin folder on PATH, as /usr/bin is on Colab: warmstart.sh writes the `invoke` launcher there.
path="$prefix/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
tar -C "$image" -c . | "$engine" import --change "ENV PATH=$path" - "$tag" >/dev/null
echo "$tag: Debian bookworm, Python $minor${uv:+ and uv}"
