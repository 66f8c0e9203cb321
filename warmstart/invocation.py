"""The command line the user typed to run warmstart, so that every command it prints (the status
line, the `lock` that makes a missing lock) works pasted where it is printed: in a terminal, or
in a notebook's cell."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from . import PROJECT_ROOT
from .errors import PreconditionUnmet, WarmstartError
from .profiles import Profile, select_profile
from .restart import kernel_process
from .settings import LAUNCHER


def invoked_as(argv0: str | None = None, cwd: Path | None = None,
               environ: Mapping[str, str] = os.environ, interpreter: str | None = None) -> list[str]:
    """The command the user typed for this task: `invoke` (or `warmstart`) when that name finds
    it on PATH, else the path they gave (`.venv/bin/invoke`); `python -m warmstart` (or `python -m
    invoke`) with the interpreter as they typed it (`interpreter`, else this one's). Any other program is
    warmstart.sh's launcher (`python -c` running warmstart.launch, or `python -m invoke` for a
    line it hands invoke; it says how it was run: LAUNCHER), which brings its checkout's tasks;
    else invoke. An `invoke` that would not find this checkout's tasks.py from `cwd` (it was
    given `--search-root`, or run from outside the checkout) is given the checkout as its search
    root."""
    argv0 = argv0 if argv0 is not None else (sys.argv[0] if sys.argv else "")
    if argv0.endswith(os.path.join("warmstart", "__main__.py")):
        return [_as_typed(interpreter or sys.orig_argv[0]), "-m", "warmstart"]
    name = os.path.basename(argv0)
    if name in ("invoke", "inv", "warmstart"):
        words = [_as_typed(argv0)]
    elif argv0.endswith(os.path.join("invoke", "__main__.py")) and not LAUNCHER.get(environ):
        words = [_as_typed(interpreter or sys.orig_argv[0]), "-m", "invoke"]  # whose scripts may not be on PATH
    else:
        return [_as_typed(LAUNCHER.get(environ) or "invoke")]
    if name != "warmstart" and _tasks_found_from(cwd or Path.cwd()) != PROJECT_ROOT:
        words += ["--search-root", str(PROJECT_ROOT)]
    return words


def _as_typed(program: str) -> str:
    """`program` by its bare name where that name finds the same program on PATH (the shorter
    line), else as given."""
    name = os.path.basename(program)
    found = shutil.which(name)
    same = os.sep not in program or (found is not None and os.path.abspath(found) == os.path.abspath(program))
    return name if same else program


def _tasks_found_from(folder: Path) -> Path | None:
    """The folder whose tasks invoke finds from `folder`: the nearest one up holding a tasks module."""
    for candidate in (folder, *folder.parents):
        if (candidate / "tasks.py").is_file() or (candidate / "tasks" / "__init__.py").is_file():
            return candidate
    return None


def command_line(*args: str) -> str:
    """`args` as a command of this warmstart, typed as the user typed theirs, to paste where it
    is printed (`in_notebook`)."""
    return in_cell([*invoked_as(), *args], in_notebook())


def in_notebook(profile: Profile | None = None) -> bool:
    """Whether this run's lines are read in a notebook, to be pasted into its cells: the platform
    runs its commands from cells (Colab, Kaggle), or a notebook kernel started this run (`!invoke`
    in a local Jupyter, whose kernel is an ancestor). `profile`: the run's, else the detected one."""
    if profile is None:
        try:
            profile = select_profile(PROJECT_ROOT)
        except WarmstartError:  # a WARMSTART_PLATFORM that names none: said where the run resolves it
            pass
    return (profile is not None and profile.notebook) or kernel_process() is not None


def in_cell(words: Sequence[str], notebook: bool) -> str:
    """`words` as a command line to paste: in a notebook's cell (`notebook`), run by `!`."""
    return f"!{_ipython_literal(words)}" if notebook else shlex.join(words)


def require_working_folder(environ: Mapping[str, str] = os.environ) -> None:
    """PreconditionUnmet where this process's working folder is gone: removed, or on a mount taken
    away since (a notebook left in Drive's folder when Drive was unmounted). Every program a run
    starts there (the target Python, uv, pip) fails, each in its own words, and so does any
    relative path; the shell's PWD names the folder."""
    try:
        os.getcwd()
    except FileNotFoundError:
        home = Path.home()
        step = cd_cell(home) if in_notebook() else shlex.join(["cd", str(home)])
        was = f" ({environ['PWD']})" if environ.get("PWD") else ""
        raise PreconditionUnmet(f"the current folder{was} no longer exists (it was removed, or lies on a Drive "
                                f"unmounted since): run `{step}` (or change to any folder that exists), then "
                                "run again") from None


def cd_cell(folder: Path) -> str:
    """The notebook cell that moves the notebook into `folder`. `%cd` splits its argument as a
    shell does: unquoted, a path is cut at a quote or a tab, and loses its backslashes."""
    return f"%cd {_ipython_literal([str(folder)])}"


def _ipython_literal(words: Sequence[str]) -> str:
    """`words` quoted for a shell, in a form that IPython passes on as it is from a `!` or `%`
    line. It first replaces `{expression}` with the notebook's value of it (`{{` stays `{`), and
    `$name` too, but only where its pattern sees no open single quote, and there `$$` stays `$`:
    so a `$` is kept from the name after it, by a quote closed and opened again."""
    line = " ".join(shlex.quote(word).replace("$", "$''") for word in words)  # quoted: every `$` lies in '…'
    return line.replace("{", "{{").replace("}", "}}")
