#!/usr/bin/env bash
# warmstart's entry point on a wiped VM (or the first time):
#
#   !bash /content/drive/MyDrive/warmstart/warmstart.sh hyperlpr [bootstrap options]
#
# Restores warmstart's own tools into a private folder (~/.cache/warmstart/tools/), from the
# Drive wheel cache or, the first time, from the package index (filling the cache), then
# bootstraps the recipe and prints the `!invoke ...` line that works from any folder afterwards.
# The notebook's own packages are never touched by the tools. All of it is warmstart/tools.py
# (standard library only), after warmstart/prefetch.py's guess at the snapshot to read; this
# script only finds the interpreter.
#
# The Drive root is --drive DIR when given, else $WARMSTART_DRIVE, else the platform profile's
# folder (on Colab the mounted MyDrive, wherever this checkout is). $WARMSTART_PYTHON is the
# notebook's interpreter (default: python3). `warmstart.sh --help` lists the options.
# Run by `sh warmstart.sh` (dash on Ubuntu and Debian, which knows no pipefail): the same in bash.
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# No bytecode on Drive (slow for small files). This checkout takes the place on sys.path of the
# working directory (which may hold another warmstart, or a project's json.py): `-c` puts none
# there, where PYTHONSAFEPATH is set, as it is here for this process alone (the program drops it
# again, so that the programs a run starts keep Python's default). Without it, Python 3.13.0 to
# 3.13.2 look for that folder at an import that misses a module attribute, and fail where it was
# removed since (CPython gh-130932), before warmstart could say so.
# warmstart compiles (to local disk) the modules this process imports as it imports them, and the
# rest while it restores its tools (warmstart/__init__.py).
export PYTHONDONTWRITEBYTECODE=1
if [ -z "${PYTHONSAFEPATH+set}" ]; then export PYTHONSAFEPATH=warmstart.sh; fi
python="${WARMSTART_PYTHON:-python3}"
if ! command -v "$python" >/dev/null; then
    echo "warmstart.sh: no Python interpreter $python here: set WARMSTART_PYTHON to the notebook's (default: python3)" >&2
    exit 3
fi
# warmstart.sh reads its TOML files with the standard library's tomllib (3.11): an older
# interpreter is a precondition unmet (exit 3), said in one line (in words Python 2 reads too).
WARMSTART_COMPILE_LATER=1 exec "$python" -c '
import sys
if sys.version_info < (3, 11):
    sys.stderr.write("warmstart.sh: needs Python 3.11 or newer; %s is %s: set WARMSTART_PYTHON to a newer "
                     "interpreter\n" % (sys.executable, sys.version.split()[0]))
    sys.exit(3)
# before any other import: signal imports enum, which a project of the folder may shadow
sys.path[:] = [sys.argv.pop(1)] + [entry for entry in sys.path if entry]
import os
if os.environ.get("PYTHONSAFEPATH") == "warmstart.sh":
    del os.environ["PYTHONSAFEPATH"]
import signal
signal.signal(signal.SIGTERM, signal.default_int_handler)  # a notebook stop, a kill: as Ctrl-C
try:
    from warmstart.prefetch import guess
    guess(sys.argv[1:])  # the archive a wiped VM restores, read while the rest of warmstart is imported
    from warmstart.tools import main
    code = main(sys.argv[1:])
except KeyboardInterrupt:  # before main could say it (its imports), or after
    sys.stderr.write("warmstart.sh: interrupted\n")
    code = 130
sys.exit(code)' "$here" "$@"
