"""One declaration of bootstrap's options, one resolution of what they leave open, for every entry
point: `invoke` (tasks.py), the `warmstart` console script, warmstart.sh, the kernel API
(`warmstart.colab.bootstrap`) and `%warmstart`.

Each entry point is driven as a user drives it, in this process, up to the one place they all
meet (`warmstart.bootstrap._bootstrap`), which records the settings it got and stops the run
there. Stubbed: warmstart.sh's restore of its own tools (tests/test_fresh_machine.py runs it for
real) and the Drive mount (only a Colab frontend can mount; the profile here is `local`).
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import fields
from pathlib import Path

import pytest
from invoke import Collection, Program

import tasks
import warmstart.bootstrap
from warmstart import colab, magic, tools
from warmstart.commands import program as console_script
from warmstart.errors import PreconditionUnmet
from warmstart.settings import VARIABLES, Options, Settings

PACKAGE = Path(warmstart.__file__).parent
BOOLEANS = [f.name for f in fields(Options) if f.type == "bool"]


class Reached(PreconditionUnmet):
    pass


@pytest.fixture
def seen(monkeypatch, tmp_path):
    """The settings each run reached bootstrap with; a clean environment and home."""
    for variable in VARIABLES:
        monkeypatch.delenv(variable.name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home" / ".cache"))
    monkeypatch.setenv("WARMSTART_PLATFORM", "local")
    got: list[Settings] = []

    def reached(settings, profile, root, report):
        got.append(settings)
        raise Reached("reached")

    monkeypatch.setattr(warmstart.bootstrap, "_bootstrap", reached)
    return got


def _invoke(program: Program, args: list[str]) -> None:
    with pytest.raises(SystemExit) as ended:  # the task exits 3: "reached"
        program.run(["prog", "bootstrap", *args])
    assert ended.value.code == Reached.exit_code


def via_invoke(args: list[str], monkeypatch) -> None:
    _invoke(Program(namespace=Collection.from_module(tasks)), args)


def via_console_script(args: list[str], monkeypatch) -> None:
    _invoke(console_script, args)


def via_warmstart_sh(args: list[str], monkeypatch) -> None:
    """tools.main, as warmstart.sh runs it, hands the flags to `invoke bootstrap` in the tools'
    virtualenv with the Drive it resolved in the environment: that child is run here, in process."""
    def ensure(drive, profile, offline=False, then=lambda: None) -> Path:
        then()  # the snapshot's read begins (nothing to read here: no FUSE Drive)
        return Path(sys.prefix)

    monkeypatch.setattr(tools, "ensure", ensure)
    monkeypatch.setattr(tools, "write_launcher", lambda folder, public: Path("invoke"))

    def child(argv, env):
        assert argv[1:3] == ["-P", "-c"] and argv[5] == "bootstrap"  # warmstart.launch, the checkout, the line
        assert env["WARMSTART_LAUNCHER"] == "invoke"  # the command its printed lines begin with
        for name in (v.name for v in VARIABLES):
            if name in env:
                monkeypatch.setenv(name, env[name])
        via_invoke(argv[6:], monkeypatch)
        return Reached.exit_code

    monkeypatch.setattr(tools, "_bootstrap", child)
    recipe = args[args.index("--recipe") + 1]
    rest = args[:args.index("--recipe")] + args[args.index("--recipe") + 2:]
    assert tools.main([recipe, *rest]) == Reached.exit_code


def via_kernel_api(args: list[str], monkeypatch) -> None:
    flags = vars(magic._parser().parse_args(["bootstrap", *args]))  # the flags, by name, as Python values
    flags = {k: v for k, v in flags.items() if k not in ("command", "restart", "mount_point") and v not in (None, False)}
    with pytest.raises(colab.BootstrapFailed):
        colab.bootstrap(flags.pop("recipe"), **flags)


def via_magic(args: list[str], monkeypatch) -> None:
    magic.warmstart_magic(" ".join(["bootstrap", *args]))
    assert colab.last_report and colab.last_report["error"] == "reached"


ENTRY_POINTS = [via_invoke, via_console_script, via_warmstart_sh, via_kernel_api, via_magic]
IN_KERNEL = (via_kernel_api, via_magic)  # the target is the kernel's interpreter: no --python


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda e: e.__name__)
@pytest.mark.parametrize("flag", BOOLEANS)
def test_each_flag_reaches_its_own_option_through_every_entry_point(seen, monkeypatch, tmp_path, entry, flag):
    team = ["--cache", str(tmp_path / "team")] if flag == "cache_read_only" else []  # it reads one (else exit 2)
    entry(["--recipe", "demo", "--" + flag.replace("_", "-"), *team], monkeypatch)
    [settings] = seen
    assert {name for name in BOOLEANS if getattr(settings.options, name)} == {flag}


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda e: e.__name__)
def test_each_value_reaches_its_own_option_through_every_entry_point(seen, monkeypatch, tmp_path, entry):
    values = {"drive": str(tmp_path / "d"), "cache": str(tmp_path / "team"), "installer": "uv"}
    if entry not in IN_KERNEL:
        values["python"] = sys.executable
    args = ["--recipe", "demo"] + [word for name, value in values.items() for word in (f"--{name}", value)]
    entry(args, monkeypatch)
    [settings] = seen
    assert settings.options.recipe == "demo"
    assert {name: getattr(settings.options, name) for name in values} == values
    assert settings.drive == tmp_path / "d" and settings.team == str(tmp_path / "team")


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda e: e.__name__)
def test_the_environment_is_read_the_same_way_through_every_entry_point(seen, monkeypatch, tmp_path, entry):
    monkeypatch.setenv("WARMSTART_WAIT", "1")
    monkeypatch.setenv("WARMSTART_DRIVE", str(tmp_path / "from-env"))
    monkeypatch.setenv("WARMSTART_CACHE_READ_ONLY", "1")
    entry(["--recipe", "demo"], monkeypatch)
    [settings] = seen
    assert settings.wait and settings.team_read_only
    assert settings.drive == tmp_path / "from-env"


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda e: e.__name__)
@pytest.mark.parametrize(("value", "on"), [("true", True), (" Yes", True), ("0", False), ("off", False), ("", False)])
def test_a_switch_takes_the_usual_words_for_on_and_off_through_every_entry_point(seen, monkeypatch, entry, value, on):
    """WARMSTART_WAIT=true was off, silently: only "1" counted (anything unknown is bad input now,
    test_hostile)."""
    monkeypatch.setenv("WARMSTART_WAIT", value)
    monkeypatch.setenv("WARMSTART_CACHE_READ_ONLY", value)
    entry(["--recipe", "demo"], monkeypatch)
    [settings] = seen
    assert settings.wait is on and settings.team_read_only is on


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda e: e.__name__)
def test_without_flag_or_variable_every_entry_point_uses_the_platforms_drive(seen, monkeypatch, tmp_path, entry):
    entry(["--recipe", "demo"], monkeypatch)
    [settings] = seen
    assert settings.drive == tmp_path / "home" / "warmstart-drive"  # envs/local.toml
    assert not settings.wait and settings.team is None


def test_warmstart_variables_are_named_in_settings_alone():
    """Every WARMSTART_* variable is named (so read) in warmstart.settings only; the package's
    __init__ is the one exception (it runs before any module may be imported; it says so), for
    two that settings declares too."""
    named = [(path.name, node.value) for path in sorted(PACKAGE.glob("*.py"))
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Constant) and isinstance(node.value, str)
             and re.fullmatch(r"WARMSTART_[A-Z_]+", node.value)]
    assert {file for file, _ in named} == {"settings.py", "__init__.py"}, named
    assert sorted(name for file, name in named if file == "__init__.py") == [
        "WARMSTART_COMPILE_LATER", "WARMSTART_MOUNT_POINT"]
    assert sorted(name for file, name in named if file == "settings.py") == sorted(v.name for v in VARIABLES)


def test_the_readme_lists_every_variable_as_settings_declares_it():
    readme = (Path(warmstart.__file__).parent.parent / "README.md").read_text()
    for variable in VARIABLES:
        assert f"| `{variable.name}` | {variable.help} |" in readme, variable.name


def test_the_kernel_api_refuses_an_option_it_does_not_take_in_one_line(capsys):
    """A misspelt keyword (`alow_no_gpu=True`) was Options' TypeError, exit 70 "a bug in
    warmstart"; it is bad input, said before anything is mounted or read."""
    with pytest.raises(colab.BootstrapFailed) as failed:
        colab.bootstrap("demo", alow_no_gpu=True)

    assert failed.value.exit_code == 2
    assert capsys.readouterr().err == (
        "warmstart: error: warmstart.colab.bootstrap() takes no 'alow_no_gpu'; it takes: allow_no_gpu, "
        "allow_unfit_gpu, cache, cache_read_only, drive, dry_run, installer, keep_runtime, offline, packages_only, "
        "wait, restart, mount_point\n")
