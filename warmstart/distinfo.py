"""The distributions a sys.path holds, by name and version, read from the headers of their
metadata rather than by parsing it whole: Colab's image holds about 700 distributions, and
importlib.metadata's parse of each (long descriptions included) costs about half a millisecond,
0.4 s a run for the probe and as much again for the check after an install; the headers alone,
0.012 s for 765. They come first and end at the first empty line: a few hundred bytes each.

Also whether an interpreter's packages are its operating system's (PEP 668), which the probe
asks the target and warmstart.sh asks the notebook's python3.

Standard library only, and no syntax newer than Python 3.8's: the probe runs this file's text
in the target interpreter (warmstart.target), whatever its version.
"""

from __future__ import annotations

import os
import sys
import sysconfig


def externally_managed() -> str:
    """This interpreter's PEP 668 marker, where its system's package manager owns its packages
    (Debian's and Ubuntu's python3: outside a virtualenv, the marker in its stdlib folder), and
    installers refuse to change them; "" where none does."""
    marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
    return marker if sys.prefix == sys.base_prefix and os.path.isfile(marker) else ""


def _headers(path: str) -> dict[str, str]:
    """Name and Version from a metadata file's headers (RFC 822: up to the first empty line)."""
    found: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                break
            key, sep, value = line.partition(":")
            if sep and key in ("Name", "Version") and key not in found:
                found[key] = value.strip()
                if len(found) == 2:
                    break
    return found


def _metadata_files(folder: str) -> list[tuple[str, str]]:
    """(metadata file, the folder or file that holds it) of each distribution in a sys.path
    entry, in name order: `.dist-info/METADATA`, `.egg-info/PKG-INFO` or an `.egg-info` file,
    and an `.egg` entry's own `EGG-INFO/PKG-INFO`."""
    if folder.endswith(".egg"):
        return [(os.path.join(folder, "EGG-INFO", "PKG-INFO"), folder)]
    try:
        entries = sorted(os.scandir(folder or "."), key=lambda e: e.name)
    except OSError:
        return []  # a zip file, or gone
    found = []
    for entry in entries:
        if entry.name.endswith(".dist-info"):
            found.append((os.path.join(entry.path, "METADATA"), entry.path))
        elif entry.name.endswith(".egg-info"):
            found.append((os.path.join(entry.path, "PKG-INFO") if entry.is_dir() else entry.path, entry.path))
    return found


def distributions(path: list[str]) -> list[tuple[str, str, str]]:
    """(name, version, where) of each distribution on `path`, a sys.path, in its order: of two
    with one name, the first is the one Python imports. One without readable metadata (half
    installed) is left out, as importlib.metadata leaves it nameless."""
    found = []
    for folder in path:
        for metadata, where in _metadata_files(folder):
            try:
                headers = _headers(metadata)
            except OSError:
                continue
            if headers.get("Name"):
                found.append((headers["Name"], headers.get("Version", ""), where))
    return found
