"""The interpreter whose environment receives the packages (`--python`), seen from outside.

One subprocess asks it for its version and its installed distributions; wheel tags are
computed here with `packaging`, since the target runs on this same machine but need not have
`packaging` installed. The bootstrap task asks before it imports the rest of warmstart
(`begin_probe`): the child answers on the other CPU meanwhile.
"""

from __future__ import annotations

import base64
import csv
import functools
import hashlib
import io
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

from packaging import tags
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import InvalidVersion, Version

from . import distinfo, settings
from .background import NEUTRAL_CWD, kill_session
from .config import file_text
from .disks import real
from .errors import PreconditionUnmet, WarmstartError, ended
from .home import state_file
from .transfer import atomic_write_text

# distinfo.py's text, then what the probe asks: run by the target interpreter, whatever its version.
_PROBE = file_text(Path(distinfo.__file__)) + """
import json, sys, sysconfig
# `python -c` puts the working directory first on sys.path; what lies there is not installed.
sys.path = [p for p in sys.path if p not in ("", os.getcwd())]
installed = {}
for name, version, _ in distributions(sys.path):
    installed.setdefault(name, version)
print(json.dumps({
    "version": list(sys.version_info[:3]),
    "implementation": sys.implementation.name,
    "executable": sys.executable,
    "prefix": sys.prefix,
    "platform": sysconfig.get_platform(),
    "soabi": sysconfig.get_config_var("SOABI") or "",
    "path": sys.path,
    "purelib": sysconfig.get_path("purelib"),
    "installed": installed,
    "externally_managed": externally_managed(),
}))
"""


@dataclass(frozen=True)
class TargetPython:
    executable: Path
    version: Version
    implementation: str
    prefix: Path
    installed: dict[NormalizedName, str]
    platform: str = ""  # sysconfig.get_platform(): linux-x86_64
    soabi: str = ""  # cpython-311-x86_64-linux-gnu: the ABI compiled extensions are built for
    path: tuple[str, ...] = ()  # its sys.path: where its distributions' metadata lies
    purelib: str = ""  # where an installer puts pure-Python distributions (site-packages)
    externally_managed: str = ""  # its PEP 668 marker, where its system's package manager owns it
    # what it prints on stdout as it starts, before any code runs (a .pth file, sitecustomize):
    # its first line; uv reads an interpreter's answer to its question as JSON, and cannot then
    says_at_start: str = ""

    @property
    def tag(self) -> str:
        """`py311`: names the lock made for this interpreter."""
        return f"py{self.version.major}{self.version.minor}"

    @property
    def is_running_interpreter(self) -> bool:
        return Path(sys.prefix) == self.prefix and self.version == Version(platform.python_version())

    def supported_tags(self) -> list[tags.Tag]:
        """Wheel tags this interpreter accepts, most specific first."""
        if self.is_running_interpreter:
            return list(tags.sys_tags())
        if self.implementation != "cpython":
            raise PreconditionUnmet(
                f"{self.executable} is {self.implementation}; warmstart supports CPython targets"
            )
        version = (self.version.major, self.version.minor)
        return [*tags.cpython_tags(version), *tags.compatible_tags(version, f"cp{version[0]}{version[1]}")]


def platform_tag() -> str:
    """`manylinux_x86_64`: the platform part of a lock's name (the lock holds hashes for all
    wheels of a version, so one lock serves every glibc of an architecture)."""
    system = {"linux": "manylinux", "darwin": "macos", "win32": "win"}.get(sys.platform, sys.platform)
    return f"{system}_{platform.machine().lower()}"


def target_executable(executable: str | Path | None) -> Path:
    """--python as given (a bare command name is looked up on PATH), else WARMSTART_PYTHON (the
    notebook's interpreter, set by warmstart's launcher), else this interpreter."""
    chosen = settings.target_python(str(executable) if executable else None)
    if os.sep not in chosen:
        found = shutil.which(chosen)
        if not found and not os.path.exists(chosen):  # else it names a file here, as a path does
            raise PreconditionUnmet(f"cannot run the target Python {chosen}: no command of that name on PATH; "
                                    "pass --python with a working interpreter (its path, or a command on PATH)")
        chosen = found or chosen
    # abspath, not resolve(): a virtualenv's python is a symlink to the base interpreter.
    exe = Path(os.path.abspath(settings.user_path(chosen, f"--python (or {settings.PYTHON.name})")))
    if exe.is_dir():  # a virtualenv's folder, given for its interpreter
        inside = exe / "bin" / "python"
        hint = f"give its interpreter, --python {shlex.quote(str(inside))}" if inside.exists() else \
            "give an interpreter's path"
        raise PreconditionUnmet(f"cannot run the target Python {exe}: it is a folder; {hint}")
    return exe


def real_prefix(executable: str | Path | None) -> Path:
    """The target's sys.prefix with every link resolved: one name per environment. A virtualenv
    says so without running it, as CPython finds its own prefix: a pyvenv.cfg beside the
    interpreter's folder (bin/python, bin/python3 and a link to the folder are one prefix)."""
    exe = target_executable(executable)
    venv = exe.parent.parent
    if (venv / "pyvenv.cfg").is_file():
        return Path(os.path.realpath(venv))
    if (begun := _begun_target(exe, use_up=False)) is not None:
        return Path(os.path.realpath(begun.prefix))
    return Path(os.path.realpath(_ask(exe, "import sys; print(sys.prefix)").strip()))


# How long the target has to answer a question: it lists its distributions in well under a
# second, so one that has said nothing by then is hung.
ANSWER_WAIT = 60.0
# The probe's code needs Python 3.7 (`from __future__ import annotations`); any Python says this.
PROBE_READS = Version("3.7")
_VERSION = "import sys; sys.stdout.write('%d.%d.%d' % tuple(sys.version_info[:3]))"


class TooOld(PreconditionUnmet):
    """A target Python older than the probe reads (2.7, 3.6): its syntax error said nothing of why."""

    def __init__(self, executable: Path, version: Version) -> None:
        super().__init__(f"the target Python {executable} is {version}, older than warmstart installs into "
                         f"({PROBE_READS} and newer); pass --python with a newer interpreter")
        self.executable, self.version = executable, version


def probe(executable: str | Path | None) -> TargetPython:
    exe = target_executable(executable)
    if (begun := _begun_target(exe, use_up=True)) is not None:
        return begun
    try:
        return _target(exe, _ask(exe, _PROBE))  # none begun, or it failed: asked again, and said
    except Unanswered:
        raise
    except PreconditionUnmet:
        # only once it failed: a Python too old for the probe is said as such
        if (version := _version_of(exe)) is not None and version < PROBE_READS:
            raise TooOld(exe, version) from None
        raise


def _version_of(exe: Path) -> Version | None:
    """The Python version `exe` says it is, in words any Python reads; None for no answer or none
    a Python gives."""
    try:
        return Version(_ask(exe, _VERSION))
    except (PreconditionUnmet, InvalidVersion):
        return None


class Unanswered(PreconditionUnmet):
    """A target that said nothing within ANSWER_WAIT (an interpreter on a Drive that stopped
    answering, a wrapper waiting on something): asked again, it would keep the run as long again."""

    def __init__(self, executable: Path) -> None:
        super().__init__(_cannot_run(executable, f"it did not answer within {ANSWER_WAIT:g} s"))


def _cannot_run(exe: Path, why: str) -> str:
    return f"cannot run the target Python {exe}: {why}; pass --python with a working interpreter"


def _started(exe: Path, code: str, stderr: int = subprocess.PIPE) -> subprocess.Popen[str]:
    """The target running `code`, in a session of its own: one that does not answer is ended with
    all it started (a launcher script's interpreter outlived the script's kill)."""
    return subprocess.Popen([str(exe), "-c", code], stdout=subprocess.PIPE, stderr=stderr, text=True,
                            cwd=NEUTRAL_CWD, start_new_session=True)


def _ended(child: subprocess.Popen[str]) -> None:
    """A probe not waited for to its end (it did not answer, or the run was interrupted) ended
    with its whole session, whether its interpreter has ended or not: what it started may hold its
    output open, waiting on whatever hung it. Only while the child is not yet reaped: its pid, the
    session's id, is not given to another process until then."""
    if child.returncode is None:
        kill_session(child)
        child.wait()


def _ask(exe: Path, code: str) -> str:
    """What the target prints when it runs `code`."""
    try:
        child = _started(exe, code)
    except OSError as exc:
        raise PreconditionUnmet(_cannot_run(exe, exc.strerror or type(exc).__name__)) from None
    try:
        out, err = child.communicate(timeout=ANSWER_WAIT)
    except subprocess.TimeoutExpired:
        raise Unanswered(exe) from None
    finally:  # not in time, or interrupted: nothing it started stays
        _ended(child)
    if child.returncode != 0:
        raise PreconditionUnmet(_cannot_run(exe, _failed(child.returncode, err, code))) from None
    return out


def _failed(returncode: int, stderr: str, code: str) -> str:
    """Why the target could not answer, in a few words: never the `code` it was asked to run (the
    probe's is 3 KB), which a program that is no Python quotes back (`ls: cannot access '<code>'`)."""
    said = [line.strip() for line in (stderr or "").splitlines() if line.strip()]
    # A Python's error ends with what went wrong (a traceback's last line, a SyntaxError's); a
    # launcher's begins with it (pyenv's shim: "pyenv: python3.12: command not found", then advice).
    python_said = said and (said[0].startswith(("Traceback", "File ")) or re.match(r"\w*(Error|Exception)\b", said[-1]))
    why = (said[-1] if python_said else said[0])[:200] if said else ""
    if _quotes(why, code):
        return f"it exited with status {returncode}, quoting the code it was to run: no Python interpreter"
    if returncode < 0:
        return f"it was {ended(returncode)}"
    return f"it exited with status {returncode}" + (f" ({why})" if why else "")


def _target(exe: Path, answer: str) -> TargetPython:
    """The target as the probe's `answer` describes it: its last line (what the interpreter
    printed as it started comes before)."""
    *before, last = answer.rstrip("\n").split("\n")
    try:
        facts = json.loads(last)
        return TargetPython(
            executable=exe,
            version=Version(".".join(map(str, facts["version"]))),
            implementation=facts["implementation"],
            prefix=Path(facts["prefix"]),
            platform=facts["platform"],
            soabi=facts["soabi"],
            # with where installs go, which sys.path lacks until it exists (a system Python's, at
            # times): what the run installs there is read back from the same list
            path=tuple(dict.fromkeys([*facts["path"], *filter(None, [facts.get("purelib")])])),
            purelib=facts.get("purelib", ""),
            externally_managed=facts.get("externally_managed", ""),
            installed={canonicalize_name(k): v for k, v in facts["installed"].items()},
            says_at_start=next((line.strip()[:80] for line in before if line.strip()), ""),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        printed = "its question back" if _quotes(answer, _PROBE) else repr(answer.strip()[:60])
        raise PreconditionUnmet(f"{exe} did not answer like a Python interpreter (it printed {printed}); "
                                "pass --python with a CPython interpreter") from None


def _quotes(said: str, code: str) -> bool:
    """Whether a program said `code` back (`echo`, `ls: cannot access '<code>'`): no Python."""
    return code.strip().splitlines()[0][:24] in said


class _Begun:
    """The probe of one interpreter, begun before the run asks (begin_probe)."""

    def __init__(self, exe: Path) -> None:
        self.exe = exe
        self.child = _started(exe, _PROBE, stderr=subprocess.DEVNULL)

    @functools.cached_property
    def target(self) -> TargetPython | Unanswered | None:
        """Its answer; None when the child failed (the run's own probe then says why, asking
        again), Unanswered when it said nothing in time (asked again, it would wait as long)."""
        try:
            out = self.child.communicate(timeout=ANSWER_WAIT)[0]
        except subprocess.TimeoutExpired:
            self.end()
            return Unanswered(self.exe)
        if self.child.returncode != 0:
            return None
        try:
            return _target(self.exe, out)
        except PreconditionUnmet:
            return None

    def end(self) -> None:
        _ended(self.child)


_begun: _Begun | None = None


def begin_probe(executable: str | Path | None) -> None:
    """Start the probe of the target `executable` now, for `probe` and `real_prefix` to take."""
    global _begun
    forget_begun()
    try:
        _begun = _Begun(target_executable(executable))
    except (OSError, WarmstartError):
        pass  # the run's own probe says why


def forget_begun() -> None:
    """Another run held the target (what the probe begun before says is installed may be past),
    or the run is over: a begun probe is ended unused."""
    global _begun
    if _begun is not None:
        _begun.end()
        _begun = None


def _begun_target(exe: Path, use_up: bool) -> TargetPython | None:
    """The begun probe's answer for `exe`, if there is one (raising Unanswered where it had none
    in time); `use_up`: later ones probe anew."""
    global _begun
    begun = _begun
    if begun is None or begun.exe != exe:
        return None
    if use_up:
        _begun = None
    if isinstance(answer := begun.target, Unanswered):
        raise answer
    return answer


def installed_now(target: TargetPython) -> dict[NormalizedName, str]:
    """The target's distributions as they are now, read from its sys.path here (metadata is
    files): what the probe would answer, without starting the interpreter again."""
    found: dict[NormalizedName, str] = {}
    for name, version, _ in distinfo.distributions(list(target.path)):
        found.setdefault(canonicalize_name(name), version)
    return found


def installed_files(target: TargetPython, names: list[str]) -> dict[NormalizedName, list[Path]]:
    """The files each named distribution installed, as its RECORD lists them (absolute).
    Read here, from the target's sys.path: metadata is files, no need to run the target."""
    wanted, files = set(names), {}
    for raw, _, where in distinfo.distributions(list(target.path)):
        name = canonicalize_name(raw)
        info = Path(where)
        if name in wanted and name not in files and info.suffix == ".dist-info" and (info / "RECORD").is_file():
            files[name] = _record_files(info)
    return files


def shared_files(target: TargetPython, names: Sequence[str],
                 others: Sequence[str]) -> dict[tuple[NormalizedName, NormalizedName], list[Path]]:
    """The files that each named distribution's RECORD lists and another's lists too: two
    distributions that install one module folder (onnxruntime and onnxruntime-gpu), where the
    one installed last overwrote the other's files. (name, other) -> the shared files, sorted."""
    if not others:
        return {}
    files = installed_files(target, [*names, *others])
    shared = {}
    for name in map(canonicalize_name, names):
        mine = set(files.get(name, ()))
        for other in map(canonicalize_name, others):
            both = mine.intersection(files.get(other, ())) if other != name else set()
            if both:
                shared[name, other] = sorted(both)
    return shared


def dist_name(info: PurePath) -> NormalizedName:
    """The distribution a `.dist-info` folder belongs to (`onnxruntime_gpu-1.26.0.dist-info`)."""
    return canonicalize_name(info.name.removesuffix(".dist-info").rsplit("-", 1)[0])


def dist_version(info: PurePath) -> str:
    return info.name.removesuffix(".dist-info").rsplit("-", 1)[-1]


# -- RECORD: csv rows of path, `sha256=<urlsafe base64, unpadded>`, size -----------------------

def record_rows(text: str) -> list[list[str]]:
    return [row for row in csv.reader(io.StringIO(text)) if row]


def read_record(info: Path) -> list[list[str]]:
    with open(info / "RECORD", newline="", encoding="utf-8") as fh:
        return [row for row in csv.reader(fh) if row]


def record_text(rows: list[list[str]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def record_digest(sha256_hex: str) -> str:
    """RECORD's spelling of a sha256 given in hex."""
    return "sha256=" + base64.urlsafe_b64encode(bytes.fromhex(sha256_hex)).rstrip(b"=").decode()


def record_hash(data: bytes) -> str:
    """RECORD's spelling of the sha256 of `data`."""
    return record_digest(hashlib.sha256(data).hexdigest())


def _record_files(info: Path) -> list[Path]:
    return list(map(Path, _record_paths(info)))


def _record_paths(info: Path) -> list[str]:
    """The files a RECORD lists, as absolute paths: strings, as a check of thousands wants them
    (pathlib took 0.1 s for the 1,600 files of the Colab image's packages in hyperlpr's lock)."""
    parent = str(info.parent)
    return [os.path.normpath(os.path.join(parent, row[0])) for row in read_record(info)]


def _verified_file(prefix: Path) -> Path:
    return state_file("verified", prefix)


Signatures = dict[str, list[int]]  # dist-info folder -> [mtime_ns, size] of a RECORD found whole


def broken_distributions(target: TargetPython, names: list[str]) -> tuple[dict[NormalizedName, Path], Signatures]:
    """Those of `names` left half-installed (a killed install): a dist-info folder without its
    METADATA or RECORD, or whose RECORD lists files that are gone. Bytecode is left out: it is
    rebuilt on import. Returns name -> dist-info folder, and the RECORDs found whole.

    Checking every file costs a stat each (tens of thousands for a big environment), so a RECORD
    found whole is remembered by its mtime and size (`remember_whole`, in ~/.cache/warmstart/
    verified/); any install that touches a distribution rewrites its RECORD, and it is checked
    again. Reading only: `prepare` changes nothing."""
    try:
        verified = json.loads(_verified_file(target.prefix).read_text())
    except (OSError, ValueError):
        verified = {}
    wanted, broken, whole = set(names), {}, {}
    for folder in map(Path, target.path):
        for info in folder.glob("*.dist-info") if folder.is_dir() else ():
            name = dist_name(info)
            if name not in wanted:
                continue
            record = info / "RECORD"
            if not ((info / "METADATA").is_file() and record.is_file()):
                broken[name] = info
                continue
            stat = record.stat()
            signature = [stat.st_mtime_ns, stat.st_size]
            if verified.get(str(info)) != signature and any(
                    not f.endswith(".pyc") and not os.path.lexists(f) for f in _record_paths(info)):
                broken[name] = info
            else:
                whole[str(info)] = signature
    return broken, whole


def remember_whole(prefix: Path, whole: Signatures) -> None:
    """Keep the RECORDs found whole for the next run's `broken_distributions`."""
    path = _verified_file(prefix)
    try:
        if json.loads(path.read_text()) == whole:
            return
    except (OSError, ValueError):
        pass
    try:
        atomic_write_text(path, json.dumps(whole))
    except OSError:
        pass  # only a shortcut for the next run


def remove_broken(infos: list[Path], prefix: Path) -> list[Path]:
    """Remove half-installed distributions as an uninstall would: the files their RECORD lists
    (what of it exists), then the dist-info folder itself. A RECORD is data (one may come from
    Drive): a path that resolves outside the target's prefix (absolute, `..`, through a link)
    is never touched, as pip refuses it too. Returns those left alone."""
    root = real(prefix)
    refused = []
    for info in infos:
        if not real(info).is_relative_to(root):
            refused.append(info)
            continue
        if (info / "RECORD").is_file():
            for path in _record_files(info):
                inside = Path(os.path.realpath(path.parent)) / path.name
                if not inside.is_relative_to(root):
                    refused.append(path)
                elif path.is_file() or path.is_symlink():
                    path.unlink()
        shutil.rmtree(info, ignore_errors=True)
    return refused
