"""Reading warmstart's data files (recipes, platform profiles, images, locks), TOML ones against
a small schema.

A schema is a dict of key -> `Field` or nested schema (a TOML table). Validation fills in
defaults and reports the first problem with the file and the dotted key, plus a suggestion
when an unknown key looks like a typo of a known one.

Every data file is read through `read_bytes`, which takes what `read_ahead` read of it, if it did.
"""

from __future__ import annotations

import difflib
import errno
import io
import math
import re
import sys
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from . import ON_DRIVE
from .errors import BadInput
from .transfer import read_head


@dataclass(frozen=True)
class Field:
    kind: str  # "str", "bool", "number", "str-list"
    required: bool = False
    default: Any = None


@dataclass(frozen=True)
class TableList:
    """An array of tables (`[[assets]]`), each checked against `item`."""

    item: Schema


Schema = dict[str, Union[Field, TableList, "Schema"]]

_KIND_NAMES = {
    "str": "a string",
    "bool": "true or false",
    "number": "a number",
    "str-list": "a list of strings",
}


def _fits(kind: str, value: Any) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "number":  # bool is an int in Python, but `true` is no amount of memory; TOML's nan
        # and inf are none either (nan compares false with anything: `timeout = nan` waited for ever)
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "str-list":
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    raise AssertionError(f"unknown field kind {kind!r}")


def read_toml(path: Path) -> dict[str, Any]:
    return parse_toml(read_toml_bytes(path), path)


# A bootstrap reads some 20 of the project's data files, one after another. From a checkout on
# Drive each open waits (20 ms on the stand-in; on a wiped VM each file's first open asks Drive's
# servers), so a run begins reading those it may need all at once (`reading_ahead`), while the
# rest of warmstart is imported. The files are small (0.3 MB in all for hyperlpr's). `_listed` is
# set once every file the patterns match has its read under way.
_ahead: dict[Path, Future[bytes]] = {}
_listed = threading.Event()
_listed.set()
LISTING_WAIT = 10.0  # seconds a read waits for the listing of what is read ahead; then it reads itself


# A data file (recipe, requirements, lock, patch, image list) is read up to this: the largest here,
# a lock, is about 120 KiB; a shared Drive's recipe folder may hold anything.
INPUT_MOST = 16 << 20


def _read_capped(path: Path) -> bytes:
    """path's bytes; OSError for a file larger than INPUT_MOST, and for what is not a regular
    file (transfer.read_head)."""
    data = read_head(path, INPUT_MOST)
    if len(data) > INPUT_MOST:
        raise OSError(errno.EFBIG, f"larger than {INPUT_MOST >> 20} MiB, which no recipe, requirements, lock or "
                                   "patch file is; put the right file in its place", str(path))
    return data


def _read_on_a_thread(path: Path) -> Future[bytes]:
    """`_read_capped(path)` on a daemon thread: a read that hangs on a Drive that stopped answering
    keeps no process from ending (a pool's threads are waited for at exit)."""
    future: Future[bytes] = Future()

    def read() -> None:
        try:
            future.set_result(_read_capped(path))
        except BaseException as exc:  # raised by read_bytes, in the thread that asks
            future.set_exception(exc)
    threading.Thread(target=read, daemon=True, name="warmstart-read-ahead").start()
    return future


def read_ahead(root: Path, files: Iterable[str] = (), patterns: Iterable[str] = ()) -> None:
    """Begin reading, each on a thread, the `files` under `root` and every file a glob pattern
    matches there (listed on a thread too). What a file's read raises is raised by `read_bytes`
    of it, as if it were read then."""
    forget_ahead()
    for name in files:
        _ahead[root / name] = _read_on_a_thread(root / name)
    _listed.clear()

    def list_and_read() -> None:
        try:
            for pattern in patterns:
                for path in root.glob(pattern):
                    if path not in _ahead:
                        _ahead[path] = _read_on_a_thread(path)
        except OSError:  # a folder that cannot be listed: its files are read when they are needed
            pass
        finally:
            _listed.set()
    threading.Thread(target=list_and_read, daemon=True, name="warmstart-read-ahead").start()


def forget_ahead() -> None:
    """Drop what was read ahead: from now on every file is read when it is asked for."""
    _listed.wait(LISTING_WAIT)
    _ahead.clear()


def read_bytes(path: Path) -> bytes:
    """A data file's bytes: those read ahead (`read_ahead`), else read now."""
    if (ahead := _ahead.get(path)) is None and _listed.wait(LISTING_WAIT):
        ahead = _ahead.get(path)
    return ahead.result() if ahead is not None else _read_capped(path)


@contextmanager
def reading_ahead(root: Path, recipe: str | None) -> Iterator[None]:
    """A run for `recipe` from the project `root`: when that is a checkout on Drive, the data
    files the run may read are read at once as it begins (read_ahead), and dropped as it ends: the
    platform profiles and images, the recipe's file, requirements, patches, check scripts and locks
    (for every Python: the target's is not known yet) and the probe's text. A recipe given as a path is read
    when it is needed."""
    if not ON_DRIVE:
        yield
        return
    files, patterns = ["warmstart/distinfo.py"], ["envs/*.toml", "envs/images/*"]
    if recipe and re.fullmatch(r"[\w.-]+", recipe) and not recipe.endswith(".toml"):  # no glob character
        files += [f"recipes/{recipe}.toml", f"requirements/{recipe}.in"]
        patterns += [f"requirements/{recipe}-py*.txt", f"requirements/*/{recipe}-py*.txt", "recipes/patches/*",
                     "recipes/checks/*"]  # a no-op run fingerprints the check scripts (checks.due)
    read_ahead(root, files, patterns)
    try:
        yield
    finally:
        forget_ahead()


def file_text(path: Path) -> str:
    """`path.read_text(encoding="utf-8")`, through read_bytes (universal newlines, as there)."""
    return io.TextIOWrapper(io.BytesIO(read_bytes(path)), encoding="utf-8").read()


def read_toml_bytes(path: Path) -> bytes:
    """A TOML file's bytes (for parse_toml), or one BadInput line that names it."""
    try:
        return read_bytes(path)
    except FileNotFoundError:
        raise BadInput(f"{path}: file not found") from None
    except IsADirectoryError:
        raise BadInput(f"{path}: is a folder, not a TOML file") from None
    except (OSError, ValueError) as exc:  # unreadable; a NUL in the name
        raise BadInput(f"{path}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None


def parse_toml(raw: bytes, path: Path) -> dict[str, Any]:
    try:  # past a byte-order mark, as some editors save UTF-8 (tomllib: "Invalid statement")
        return tomllib.loads(raw.decode("utf-8-sig"))
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise BadInput(f"{path}: not UTF-8 text, so not a TOML file") from None
    except RecursionError:
        raise BadInput(f"{path}: its tables or arrays are nested too deeply to read") from None


def read_text(path: Path, what: str) -> str:
    """A text input file (past a byte-order mark, as pip reads one), or one BadInput line that names it."""
    try:
        return file_text(path).removeprefix("\ufeff")
    except UnicodeDecodeError:
        raise BadInput(f"{path}: not UTF-8 text, so not {what}") from None
    except FileNotFoundError:
        raise BadInput(f"{path}: file not found") from None
    except (OSError, ValueError) as exc:
        raise BadInput(f"{path}: cannot be read as {what} ({getattr(exc, 'strerror', None) or exc})") from None


def validate(data: dict[str, Any], schema: Schema, path: Path, prefix: str = "") -> dict[str, Any]:
    """Return `data` with defaults filled in, or raise BadInput naming `path` and the key."""
    for key in data:
        if key not in schema:
            dotted = prefix + key
            close = difflib.get_close_matches(key, list(schema), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            known = ", ".join(prefix + k for k in schema)
            raise BadInput(f"{path}: unknown key '{dotted}'{hint}; known keys: {known}")
    result: dict[str, Any] = {}
    for key, spec in schema.items():
        dotted = prefix + key
        if isinstance(spec, dict):
            table = data.get(key, {})
            if not isinstance(table, dict):
                raise BadInput(f"{path}: '{dotted}' must be a table ([{dotted}])")
            result[key] = validate(table, spec, path, dotted + ".")
        elif isinstance(spec, TableList):
            items = data.get(key, [])
            if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                raise BadInput(f"{path}: '{dotted}' must be an array of tables ([[{dotted}]])")
            result[key] = [validate(item, spec.item, path, f"{dotted}[{n}].")
                           for n, item in enumerate(items)]
        elif key in data:
            if not _fits(spec.kind, data[key]):
                raise BadInput(
                    f"{path}: '{dotted}' must be {_KIND_NAMES[spec.kind]}, got {data[key]!r}"
                )
            texts = data[key] if spec.kind == "str-list" else [data[key]] if spec.kind == "str" else []
            if any("\0" in text for text in texts):  # TOML's "\u0000": the OS takes it in no path or argument
                raise BadInput(f"{path}: '{dotted}' holds a NUL character (\\x00), which no name, path or "
                               "command can hold; remove it")
            result[key] = data[key]
        elif spec.required:
            raise BadInput(f"{path}: missing required key '{dotted}'")
        else:
            result[key] = spec.default
    return result
