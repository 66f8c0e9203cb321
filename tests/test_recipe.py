"""Recipe loading and validation: every problem names the file and the key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from warmstart import PROJECT_ROOT
from warmstart.errors import BadInput
from warmstart.recipe import load_recipe

GOOD = """\
name = "demo"
python = ">=3.10"
[gpu]
required = true
min_memory_gib = 2
min_compute_capability = "6.0"
min_cuda = "12.0"
[requirements]
in = "requirements/demo.in"
exclude = ["OnnxRuntime", "opencv_python"]
[drive]
workdir = "Demo/run"
"""


@pytest.fixture
def project(tmp_path):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "requirements").mkdir()
    (tmp_path / "requirements" / "demo.in").write_text("alpha\n")
    return tmp_path


def write(project, text):
    path = project / "recipes" / "demo.toml"
    path.write_text(text)
    return path


def test_good_recipe_loads_with_normalised_names(project):
    recipe = load_recipe(str(write(project, GOOD)), project)
    assert recipe.name == "demo"
    assert recipe.exclude == ("onnxruntime", "opencv-python")
    assert recipe.requirements_in == project / "requirements" / "demo.in"
    assert recipe.gpu.min_memory_gib == 2 and str(recipe.gpu.min_compute_capability) == "6.0"
    assert "3.11" in recipe.python and "3.9" not in recipe.python


def test_a_recipe_and_its_requirements_saved_with_a_byte_order_mark_load(project):
    """Notepad saved UTF-8 with a byte-order mark until 2019 (and "UTF-8 with BOM" still): tomllib
    called the recipe "Invalid statement (at line 1, column 1)", and the .in's first line was
    "'\\ufeffalpha' is not a valid requirement", naming nothing the user can see. pip and uv read
    past the mark, and so does warmstart."""
    path = project / "recipes" / "demo.toml"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    (project / "requirements" / "demo.in").write_bytes(b"\xef\xbb\xbfalpha\r\n")
    assert load_recipe(str(path), project).exclude == ("onnxruntime", "opencv-python")


def test_recipe_found_by_name(project):
    write(project, GOOD)
    assert load_recipe("demo", project).path == project / "recipes" / "demo.toml"


def test_unknown_recipe_name_lists_known_ones(project):
    write(project, GOOD)
    with pytest.raises(BadInput, match=r"no recipe named .demi. \(did you mean .demo.\?\).*known recipes: demo"):
        load_recipe("demi", project)


def test_a_recipe_named_in_another_case_is_suggested(project):
    """HyperLPR is the recipe's workdir on Drive, and what a user may type for its name."""
    write(project, GOOD)
    with pytest.raises(BadInput, match=r"no recipe named 'Demo' \(did you mean 'demo'\?\)"):
        load_recipe("Demo", project)


@pytest.mark.parametrize("given", ["demo.toml", "recipes/demo", "elsewhere/demo.toml"])
def test_a_missing_file_named_as_a_known_recipe_points_at_its_name(project, tmp_path, monkeypatch, given):
    write(project, GOOD)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BadInput) as refused:
        load_recipe(given, project)
    assert str(refused.value) == (f"{tmp_path / given}: file not found; the recipe named 'demo' is "
                                  f"{project / 'recipes' / 'demo.toml'}: --recipe demo finds it")


def test_a_url_is_no_recipe_and_is_said_so(project):
    with pytest.raises(BadInput, match=r"--recipe 'https://example.org/demo.toml': a recipe is a name or a file "
                                       r"here, not a URL: download it"):
        load_recipe("https://example.org/demo.toml", project)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("min_memory_gib = 2", "min_memory_gib = true"), "'gpu.min_memory_gib' must be a number"),
        # TOML's nan and inf are no amounts: nan compares false with anything (a check's `timeout = nan`
        # waited for ever), and `max_unpacked_mib = inf` ended in int()'s OverflowError, a bug's exit 70
        (("min_memory_gib = 2", "min_memory_gib = nan"), "'gpu.min_memory_gib' must be a number, got nan"),
        (('workdir = "Demo/run"\n', 'workdir = "Demo/run"\n[[checks]]\nname = "c"\nrun = "true"\ntimeout = nan\n'),
         "'checks\\[0\\].timeout' must be a number, got nan"),
        (('workdir = "Demo/run"\n', f'workdir = "Demo/run"\n[[assets]]\nurl = "https://example.org/d.tar.gz"\n'
                                    f'sha256 = "{"0" * 64}"\ndest = "d"\nunpack = true\nmax_unpacked_mib = inf\n'),
         "'assets\\[0\\].max_unpacked_mib' must be a number, got inf"),
        (("min_memory_gib = 2", "min_memory_gib = -1"), "'gpu.min_memory_gib' must be the GiB of memory the GPU "
                                                         "needs, 0 or more, got -1"),
        (("min_memory_gib = 2", "min_memory_gb = 2"), "unknown key 'gpu.min_memory_gb'.*did you mean 'gpu.min_memory_gib'"),
        (('exclude = ["OnnxRuntime", "opencv_python"]', 'exclude = "onnxruntime"'), "'requirements.exclude' must be a list of strings"),
        (('python = ">=3.10"', 'python = "three"'), "'python' must be a PEP 440 specifier"),
        (('min_cuda = "12.0"', 'min_cuda = "twelve"'), "'gpu.min_cuda' must be a version"),
        (('in = "requirements/demo.in"', 'in = "requirements/nope.in"'), "'requirements.in' names .*nope.in, which does not exist"),
        (('name = "demo"', 'name = "Demo Recipe"'), "'name' must be lower-case"),
        (('workdir = "Demo/run"', 'workdir = "../elsewhere"'), "'drive.workdir' must be a folder relative"),
        (('name = "demo"\n', ""), "missing required key 'name'"),
        (("[drive]", "drive = 1\n[other]"), "unknown key 'other'"),
        (("required = true", "required = "), "not valid TOML"),
        *[(('workdir = "Demo/run"\n', f'workdir = "Demo/run"\n[[assets]]\nurl = "https://example.org/m.onnx"\nsha256 = "{"0" * 64}"\n'
             f'dest = "m.onnx"\nsize = {size}\n'), "'assets\\[0\\].size' must be the file's size in bytes")
          for size in ("0", "-1", "1.5")],
    ],
)
def test_bad_recipe_names_file_and_key(project, change, message):
    path = write(project, GOOD.replace(*change, 1))
    with pytest.raises(BadInput, match=message) as caught:
        load_recipe(str(path), project)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    ("table", "files", "message"),
    [
        ('[[checks]]\nname = "c"\npython = "1"\nscript = "c.py"\n', {"c.py": ""}, "exactly one of 'python', 'script' or 'run'"),
        ('[[checks]]\nname = "c"\nscript = "checks/c.py"\n', {}, "'checks\\[0\\].script' names .*c.py, which does not exist"),
        ('[[patches]]\ndistribution = "alpha"\ndiff = "nope.diff"\n', {}, "'patches\\[0\\].diff' names .*nope.diff, which does not exist"),
        ('[[patches]]\ndistribution = "OnnxRuntime"\ndiff = "p.diff"\n', {"p.diff": ""}, "'patches\\[0\\].distribution' 'OnnxRuntime' is no package"),
        ('[[patches]]\ndistribution = "alpha"\n', {}, "missing required key 'patches\\[0\\].diff'"),
        ('[[patches]]\ndistribution = "alpha"\ndiff = "p.diff"\n', {"p.diff": "just words\n"}, "p.diff: holds no file changes"),
        ('[[patches]]\ndistribution = "alpha"\ndiff = "p.diff"\n', {"p.diff": "--- a/x\n+++ b/x\n@@ -1,2 +1,1 @@\n-a\n"},
         "p.diff: not a unified diff"),
        ('[[patches]]\ndistribution = "alpha"\ndiff = "p.diff"\n', {"p.diff": b"\xff\xfe"}, "p.diff: cannot be read as a UTF-8 diff"),
    ],
)
def test_bad_checks_and_patches_name_the_file_and_key(project, table, files, message):
    for name, content in files.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    path = write(project, GOOD + "\n" + table)
    with pytest.raises(BadInput, match=message):
        load_recipe(str(path), project)


def asset(dest: str, url: str = "https://example.org/models/m.onnx", unpack: bool = False) -> str:
    return (f'[[assets]]\nurl = "{url}"\nsha256 = "{"0" * 64}"\ndest = "{dest}"\n'
            f"unpack = {'true' if unpack else 'false'}\n")


@pytest.mark.parametrize(("dest", "example"), [("", "m.onnx"), (".", "m.onnx"), ("./", "m.onnx"), ("~", "~/m.onnx"),
                                               ("~/", "~/m.onnx"), ("models/", "models/m.onnx"),
                                               ("models/.", "models/m.onnx")])
def test_a_file_assets_dest_that_can_only_be_a_folder_is_refused_naming_a_file_to_give(project, dest, example):
    """Before, "" and "." placed the file where the workdir is, "~" where the home folder is (the
    run then told the user to move that folder away), and "models/" made a file named models."""
    path = write(project, GOOD + "\n" + asset(dest))
    with pytest.raises(BadInput) as caught:
        load_recipe(str(path), project)
    assert str(caught.value) == (f"{path}: 'assets[0].dest' {dest!r} names a folder (the workdir, a home folder, a "
                                 f"trailing '/'); a file asset's dest is the file it becomes, e.g. {example!r}")


def test_an_archive_asset_may_be_unpacked_into_the_workdir_or_a_folder_another_archive_fills_too(project):
    url = "https://example.org/data.tar.gz"
    path = write(project, GOOD + "\n" + asset("", url, unpack=True) + asset(".", url.replace("data", "more"), unpack=True)
                 + asset("m.onnx"))
    assert [a.dest for a in load_recipe(str(path), project).assets] == ["", ".", "m.onnx"]


@pytest.mark.parametrize(("first", "second"), [("m.onnx", "m.onnx"), ("m.onnx", "./m.onnx"),
                                               ("~/models/m.onnx", str(Path.home() / "models" / "m.onnx"))])
def test_two_file_assets_with_one_destination_are_refused(project, first, second):
    """Before, each run placed one over the other, both for ever "placed"."""
    path = write(project, GOOD + "\n" + asset(first) + asset(second, "https://example.org/other.onnx"))
    with pytest.raises(BadInput) as caught:
        load_recipe(str(path), project)
    assert str(caught.value) == (f"{path}: 'assets[1].dest' {second!r} is where assets[0] goes too; give each "
                                 "file asset a dest of its own")


@pytest.mark.parametrize(("names", "said"), [
    (["", "a"], "'checks[0].name' is empty; name what the check proves"),
    (["a", " "], "'checks[1].name' is empty; name what the check proves"),
    (["gpu", "cpu", "gpu"], "'checks[2].name' 'gpu' is checks[0]'s name too; give each check a name of its own"),
])
def test_a_check_needs_a_name_of_its_own(project, names, said):
    """The record of passed checks and the report know a check by its name: two of one name had
    the first run again by every run that installs nothing."""
    path = write(project, GOOD + "".join(f'\n[[checks]]\nname = "{name}"\nrun = "true"\n' for name in names))
    with pytest.raises(BadInput) as caught:
        load_recipe(str(path), project)
    assert str(caught.value) == f"{path}: {said}"


@pytest.mark.parametrize("given", ["", "checks", "."])
def test_a_file_a_recipe_names_that_is_a_folder_is_said_to_be_one(project, given):
    """Before: "names PROJECT, which does not exist" of the project's own folder."""
    (project / "checks").mkdir()
    path = write(project, GOOD + f'\n[[checks]]\nname = "c"\nscript = "{given}"\n')
    with pytest.raises(BadInput) as caught:
        load_recipe(str(path), project)
    folder = project / given
    assert str(caught.value) == (f"{path}: 'checks[0].script' names {folder.resolve()}, which is a folder, not a "
                                 f"file; fix the path (relative to {project}: the folder that holds the recipe's "
                                 "recipes/ folder, or, outside one, the recipe's own folder)")


def test_a_missing_file_of_a_recipe_outside_a_recipes_folder_is_said_relative_to_the_recipes_own_folder(tmp_path):
    """Its paths are read from its own folder, which the line names. Before, it sent the user to
    "the folder that holds recipes/", where there is none."""
    path = tmp_path / "mine" / "app.toml"
    path.parent.mkdir()
    path.write_text(GOOD)
    with pytest.raises(BadInput) as caught:
        load_recipe(str(path), tmp_path)
    assert str(caught.value).startswith(f"{path}: 'requirements.in' names {path.parent / 'requirements' / 'demo.in'}, "
                                        "which does not exist; create it or fix the path (relative to "
                                        f"{path.parent}: ")


def test_a_file_a_recipe_names_that_is_a_pipe_is_said_to_be_none(project):
    """Before: "which does not exist" of a FIFO that `ls` shows."""
    os.mkfifo(project / "check.py")
    path = write(project, GOOD + '\n[[checks]]\nname = "c"\nscript = "check.py"\n')
    with pytest.raises(BadInput, match=r"'checks\[0\].script' names .*check.py, which is no regular file \(a pipe"):
        load_recipe(str(path), project)


NUL_CASES = [('name = "demo"', 'name = "de\\u0000mo"', "name"),
             ('python = ">=3.10"', 'python = ">=3.10"\ndescription = "\\u0000"', "description"),
             ('exclude = ["OnnxRuntime", "opencv_python"]', 'exclude = ["a\\u0000"]', "requirements.exclude"),
             ('in = "requirements/demo.in"', 'in = "requirements/demo.in\\u0000"', "requirements.in"),
             ('workdir = "Demo/run"', 'workdir = "Demo\\u0000"', "drive.workdir"),
             ('workdir = "Demo/run"', 'workdir = "Demo/run"\n[[checks]]\nname = "c"\npython = "print(1)\\u0000"',
              "checks[0].python")]


@pytest.mark.parametrize(("old", "new", "key"), NUL_CASES, ids=[key for *_, key in NUL_CASES])
def test_a_nul_character_in_any_string_is_refused_naming_the_key(project, old, new, key):
    """TOML's "\\u0000" is a string like any: in requirements.in it ended in os.stat's ValueError
    ("embedded null byte"), a bug's exit 70; in a check's command, in Popen's."""
    path = write(project, GOOD.replace(old, new, 1))
    with pytest.raises(BadInput) as caught:
        load_recipe(str(path), project)
    assert str(caught.value) == (f"{path}: '{key}' holds a NUL character (\\x00), which no name, path or command "
                                 "can hold; remove it")


@pytest.mark.parametrize("key", ["requirements.in", "drive.workdir", "assets[0].dest", "checks[0].script",
                                 "patches[0].diff"])
@pytest.mark.parametrize("bad", ["newline", "long name"])
def test_a_recipes_path_the_os_or_a_printed_command_cannot_take_is_refused_naming_the_key(project, key, bad):
    """A name over 255 bytes ended in the OS's "File name too long", naming the path, not the key
    (exit 3); a newline in the workdir split the `cd` line warmstart prints."""
    text = "Demo\\nrun" if bad == "newline" else "models/" + "é" * 128
    tables = {"assets[0].dest": asset("x"), "checks[0].script": '[[checks]]\nname = "c"\nscript = "x"\n',
              "patches[0].diff": '[[patches]]\ndistribution = "alpha"\ndiff = "x"\n'}
    recipe = GOOD + "\n" + tables.get(key, "")
    if key in tables:
        recipe = recipe.replace('"x"', f'"{text}"')
    else:
        line = next(line for line in GOOD.splitlines() if line.startswith(key.split(".")[1] + " ="))
        recipe = recipe.replace(line, f'{key.split(".")[1]} = "{text}"')
    path = write(project, recipe)
    with pytest.raises(BadInput) as caught:
        load_recipe(str(path), project)
    said = ("holds a control character ('\\n'); name the path without it" if bad == "newline" else
            "holds a name of 256 bytes, and a file or folder's name has at most 255; shorten it")
    assert str(caught.value).startswith(f"{path}: '{key}' ") and str(caught.value).endswith(said)


def test_shipped_recipes_load():
    recipe = load_recipe("hyperlpr", PROJECT_ROOT)
    assert set(recipe.exclude) == {"onnxruntime", "opencv-python"}
    assert recipe.gpu.required
    assert [(p.distribution, [f.path for f in p.files][:1]) for p in recipe.patches] == [
        ("hyperlpr3", ["hyperlpr3/inference/base/base.py"])]
    assert [c.script.name for c in recipe.checks if c.script] == ["onnxruntime_cuda.py", "hyperlpr_gpu.py"]
