"""warmstart: bring a wiped GPU notebook VM back to work from a recipe and a Drive cache."""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import marshal
import os
import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from collections.abc import Mapping
    from concurrent.futures import Future

__version__ = "0.1.0"


def _project_root() -> Path:
    """The folder holding recipes/, requirements/ and envs/: the checkout this package lies in
    (tasks.py lives there too), else the copy an installed wheel carries (see setup.py)."""
    checkout = Path(__file__).resolve().parent.parent
    if all((checkout / folder).is_dir() for folder in ("recipes", "requirements", "envs")):
        return checkout
    return Path(__file__).resolve().parent / "_shipped"


PROJECT_ROOT = _project_root()


class _BytecodeElsewhere(importlib.machinery.SourceFileLoader):
    """Keeps a module's bytecode under `root` (a mirror of its path there), never beside its
    source; writes it there even under PYTHONDONTWRITEBYTECODE (warmstart.sh's own process, recipe
    checks and Drive's background worker run under it)."""

    root = Path()

    def _elsewhere(self, path: str) -> str:
        return str(self.root / Path(path).relative_to(Path(path).anchor))

    # Modules of the package read ahead and not compiled yet, by path (read_ahead).
    sources: ClassVar[dict[str, Future[tuple[os.stat_result, bytes] | None]]] = {}

    def _source_taken(self, path: str) -> tuple[os.stat_result, bytes] | None:
        """This loader's source as read ahead (a stat, then the bytes), taken out of `sources` once."""
        if path != self.path:
            return None
        if not hasattr(self, "_taken"):
            ahead = self.sources.pop(path, None)
            self._taken = ahead.result() if ahead else None
        return self._taken

    def path_stats(self, path: str) -> Mapping[str, Any]:
        read = self._source_taken(path)
        return {"mtime": read[0].st_mtime, "size": read[0].st_size} if read else super().path_stats(path)

    def get_data(self, path: str) -> bytes:
        if path.endswith(".pyc"):
            return super().get_data(self._elsewhere(path))
        read = self._source_taken(path)
        return read[1] if read else super().get_data(path)

    def set_data(self, path: str, data: bytes, *, _mode: int = 0o666) -> None:  # type: ignore[override]
        if path.endswith(".pyc"):  # nothing else is ever written through a loader
            # A cache folder that cannot be made (a read-only HOME) leaves the bytecode unwritten,
            # as the import system does with a folder it cannot write: never a failed import.
            with contextlib.suppress(OSError):
                self.root.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # see warmstart.home.private
                super().set_data(self._elsewhere(path), data, _mode=_mode)

    def source_to_code(self, data: bytes, path: str, *, _optimize: int = -1) -> types.CodeType:  # type: ignore[override]
        code = super().source_to_code(data, path, _optimize=_optimize)
        if sys.dont_write_bytecode:  # get_code writes none then: this module's goes to root all the same
            with contextlib.suppress(OSError, ValueError):
                stats = self.path_stats(path)
                self.keep(code, stats["mtime"], stats["size"])
        return code

    def keep(self, code: types.CodeType, mtime: float, size: int) -> None:
        """Write the bytecode of this loader's source, as of its `mtime` and `size`, under root."""
        header = (importlib.util.MAGIC_NUMBER + bytes(4)  # flags 0: checked by mtime and size (PEP 552)
                  + (int(mtime) & 0xFFFFFFFF).to_bytes(4, "little") + (int(size) & 0xFFFFFFFF).to_bytes(4, "little"))
        self.set_data(importlib.util.cache_from_source(self.path), header + marshal.dumps(code))

    @classmethod
    def read_ahead(cls, package: Path) -> None:
        """Begin reading every module of `package`, at once, a thread each: imported one after the
        other, each would wait for Drive in turn (Drive is slow per file, and a VM's first run
        imports some 50 of them: 1 s at the stand-in's 20 ms an open). On 16 threads they came in
        4 waves, in the listing's order, not the imports': warmstart.sh's imports were done 30
        ms later. An import takes its module's source from there (`path_stats`, `get_data`);
        `compile_rest` compiles the others."""
        from concurrent.futures import ThreadPoolExecutor

        def read(path: Path) -> tuple[os.stat_result, bytes] | None:
            try:  # stat first: a source changed meanwhile is newer than its bytecode says, so compiled again
                return os.stat(path), path.read_bytes()
            except OSError:  # left to the import, which says what is wrong
                return None

        paths = list(package.glob("*.py"))
        pool = ThreadPoolExecutor(max(len(paths), 1))
        for path in paths:
            cls.sources[str(path)] = pool.submit(read, path)
        pool.shutdown(wait=False)

    @classmethod
    def compile_rest(cls) -> None:
        """Compile under root every module read ahead that no import has taken yet."""
        while cls.sources:
            try:
                path, ahead = cls.sources.popitem()
            except KeyError:  # an import took the last one meanwhile
                return
            if read := ahead.result():
                stats, data = read
                with contextlib.suppress(OSError, SyntaxError, ValueError):  # a bad source fails its own import
                    code = compile(data, path, "exec", dont_inherit=True)
                    cls(f"{__name__}.{Path(path).stem}", path).keep(code, stats.st_mtime, stats.st_size)


def cache_home(environ: Mapping[str, str] = os.environ) -> Path:
    """$XDG_CACHE_HOME, when it is an absolute path (the XDG spec ignores a relative one: it would
    be a folder in whatever the working directory is), else ~/.cache. warmstart's own folder lies
    there (warmstart.home)."""
    chosen = environ.get("XDG_CACHE_HOME", "")
    return Path(chosen) if os.path.isabs(chosen) else Path(os.path.expanduser("~/.cache"))


def _on_drive(folder: Path) -> bool:
    """Whether `folder` lies on the mounted Drive (Colab's checkout does), where each open waits.
    Read here, not through warmstart.settings: importing it first would write its bytecode there."""
    return folder.is_relative_to(Path(os.environ.get("WARMSTART_MOUNT_POINT") or "/content/drive"))


# The checkout this package was imported from lies on Drive: its data files are read ahead
# (warmstart.config.read_ahead), its bytecode kept elsewhere (below).
ON_DRIVE = _on_drive(Path(__file__).parent)


# Set by warmstart.sh for its own process (never handed on): see _bytecode_off_drive. Declared
# in warmstart.settings, whose import here would compile it first.
COMPILE_LATER = "WARMSTART_COMPILE_LATER"


def compile_rest() -> None:
    """Compile the modules a VM's first import read ahead and nothing has imported yet (warmstart.sh)."""
    _BytecodeElsewhere.compile_rest()


def _bytecode_off_drive() -> None:
    """The notebook kernel, and the `invoke` launcher, import warmstart from its checkout on Drive:
    its bytecode there would be a Drive write per module that outlives the VM, and none at all
    (PYTHONDONTWRITEBYTECODE, as the launcher once ran) had every run compile warmstart anew
    (0.1 s). From there, warmstart's bytecode lives in its own cache folder on local disk
    (pycache/), compiled by the first import on a VM, all at once (warmstart.sh's own process:
    what it imports as it goes, the rest while it restores its tools); and this file's own
    bytecode, written by this very import, goes."""
    here = Path(__file__).parent
    # warmstart.sh compiles what it imports as it imports it, and the rest while it restores its
    # tools (compile_rest): online, whether it begins uv waits for what it imports
    later = os.environ.pop(COMPILE_LATER, None) is not None
    if not ON_DRIVE:
        return
    # Read here, not through warmstart.home: importing it first would write its bytecode (the
    # folder is home.root()'s).
    _BytecodeElsewhere.root = cache_home() / "warmstart" / "pycache"
    if not (_BytecodeElsewhere.root / here.relative_to(here.anchor) / "__pycache__").is_dir():  # a VM's first import
        _BytecodeElsewhere.read_ahead(here)
        if not later:
            _BytecodeElsewhere.compile_rest()
    finder = importlib.machinery.FileFinder(str(here), (_BytecodeElsewhere, importlib.machinery.SOURCE_SUFFIXES))
    for entry in __path__:
        sys.path_importer_cache[entry] = finder
    cached = globals().get("__cached__")
    if cached and not sys.dont_write_bytecode:
        cache = Path(cached)
        cache.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            cache.parent.rmdir()  # only when nothing else is in it


_bytecode_off_drive()


def load_ipython_extension(ipython: object) -> None:  # `%load_ext warmstart`
    from .magic import register

    register(ipython)
