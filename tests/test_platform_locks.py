"""Platform images and the locks compiled against them: pure parts, tested in milliseconds.

The Colab stand-in and real ELF files are in test_colab_image.py and test_cuda_check.py.
"""

from __future__ import annotations

import builtins
import io
import os
import sys
from pathlib import Path

import pytest
from conftest import ALL_COLAB_IMAGES, bootstrap, cli_env, make_venv, pyenv_python, run_cli
from packaging.utils import canonicalize_name
from packaging.version import Version

from warmstart import PROJECT_ROOT
from warmstart.cudalibs import lock_tags, platforms_for, problems
from warmstart.errors import BadInput
from warmstart.images import images_of, load_image, parse_freeze, write_image
from warmstart.lock import LockTarget, Pin, WheelLibs, needs, parse_pins, select_lock
from warmstart.recipe import GpuNeeds, load_recipe


def pin(name: str, version: str = "1.0", via: tuple[str, ...] = (), root: bool | None = None) -> Pin:
    return Pin(name, version, frozenset({name[0] * 64}), frozenset(via), not via if root is None else root)


@pytest.mark.parametrize(("installed", "locked", "expected"), [
    ("2.11.0", "2.11.0", True),
    ("2.11.0+cu128", "2.11.0", True),   # PEP 440: a local build meets a pin without a local part
    ("2.11", "2.11.0", True),           # zero padding
    ("2.11.1", "2.11.0", False),
    ("2.11.0", "2.11.0+cu128", False),  # a pin with a local part wants that build
    (None, "1.0", False),
    ("not a version", "1.0", False),
])
def test_a_pin_is_met_as_pip_decides(installed, locked, expected):
    assert pin("torch", locked).satisfied_by(installed) is expected


# A lock of the hyperlpr-train shape: PyPI's torch (CUDA 13) with its runtime wheel, and a
# package both torch and the recipe's own ultralytics need.
TRAIN = (
    pin("ultralytics"),
    pin("torch", "2.11.0", via=("ultralytics",)),
    pin("nvidia-cuda-runtime", "13.0.96", via=("torch",)),
    pin("sympy", "1.14.0", via=("torch",)),
    pin("numpy", "2.1.3", via=("torch", "ultralytics")),
    pin("coloredlogs", "15.0", via=("onnxruntime",)),  # only an excluded package asks for it
)


def names(pins) -> list[str]:
    return sorted(p.name for p in pins)


def test_a_bare_vm_installs_the_whole_lock():
    found = needs(TRAIN, {})
    assert names(found.install) == names(TRAIN)
    assert found.provided == {} and found.left == ()


def test_the_platforms_own_build_serves_the_pin_and_keeps_its_dependencies():
    found = needs(TRAIN, {"torch": "2.11.0+cu128", "sympy": "1.14.0", "numpy": "2.1.3"})

    assert found.provided == {"torch": "2.11.0+cu128"}
    assert names(found.left) == ["nvidia-cuda-runtime", "sympy"]  # only torch asks for them
    assert names(found.install) == ["coloredlogs", "ultralytics"]  # numpy is there already
    assert "numpy" in names(found.wanted) and "torch" in names(found.wanted)


def test_a_dependency_another_root_needs_is_installed_even_below_a_provided_build():
    found = needs(TRAIN, {"torch": "2.11.0+cu128"})
    assert "numpy" in names(found.install)  # ultralytics asks for it too
    assert "sympy" not in names(found.install)


def test_the_same_version_installed_is_not_a_provided_build():
    found = needs(TRAIN, {"torch": "2.11.0"})
    assert found.provided == {}
    assert "nvidia-cuda-runtime" in names(found.install)  # torch's deps are still the lock's


def test_via_lines_of_both_resolvers_become_the_graph(tmp_path):
    text = (
        "anyio==4.16.0 \\\n    --hash=sha256:" + "a" * 64 + "\n    # via httpx\n"
        "certifi==2026.1 \\\n    --hash=sha256:" + "c" * 64 + "\n    # via\n    #   httpcore\n    #   requests\n"
        "hyperlpr3==0.1.3 \\\n    --hash=sha256:" + "d" * 64 + "\n    # via -r requirements/hyperlpr.in\n"
        "torch==2.11.0 \\\n    --hash=sha256:" + "e" * 64 + "\n    # via\n    #   -r requirements/x.in\n    #   ultralytics\n"
        "plain==1.0 --hash=sha256:" + "f" * 64 + "\n"
    )
    pins = {p.name: p for p in parse_pins(text, tmp_path / "lock.txt")}
    assert pins["anyio"].via == {"httpx"} and not pins["anyio"].root
    assert pins["certifi"].via == {"httpcore", "requests"}
    assert pins["hyperlpr3"].root and pins["hyperlpr3"].via == set()
    assert pins["torch"].root and pins["torch"].via == {"ultralytics"}
    assert pins["plain"].root  # no via lines: kept, as before the graph existed


def test_wheel_lines_round_trip():
    libs = WheelLibs("onnxruntime-gpu", "1.26.0", "0" * 64, frozenset({"libcudart.so.12", "libcudnn.so.9"}))
    assert WheelLibs.parse(libs.line()) == libs
    assert WheelLibs.parse("#   numpy==2.1.3 sha256:" + "1" * 64 + " needs=- provides=-").needs == frozenset()


class FakeRecipe:
    path = Path("recipes/demo.toml")
    name = "demo"

    def __init__(self, min_cuda: str | None = "12.0") -> None:
        self.gpu = GpuNeeds(True, min_cuda=Version(min_cuda) if min_cuda else None)


CUDA12 = frozenset({"libcudart.so.12", "libcublas.so.12", "libcublasLt.so.12", "libcudnn.so.9"})
TARGET = LockTarget("3.13", "manylinux_x86_64")


def facts(*wheels: WheelLibs) -> tuple[tuple[Pin, ...], dict[str, WheelLibs]]:
    return tuple(Pin(w.name, w.version, frozenset({w.sha256})) for w in wheels), {w.name: w for w in wheels}


def test_a_cuda_13_wheel_on_a_cuda_12_platform_is_refused_naming_wheel_and_library():
    pins, wheels = facts(WheelLibs("onnxruntime-gpu", "1.31.1", "a" * 64,
                                   frozenset({"libcudart.so.13", "libcublas.so.13"})))
    found = problems(FakeRecipe(), TARGET, pins, wheels, {"the colab image colab-latest": CUDA12})
    assert any("onnxruntime-gpu==1.31.1 needs libcublas.so.13, libcudart.so.13" in p
               and "the colab image colab-latest" in p for p in found)
    assert any('min_cuda is 12.0' in p and 'set min_cuda = "13.0"' in p for p in found)


def test_the_locks_own_runtime_wheels_satisfy_what_the_platform_lacks():
    pins, wheels = facts(
        WheelLibs("torch", "2.11.0", "a" * 64, frozenset({"libcudart.so.13"})),
        WheelLibs("nvidia-cuda-runtime", "13.0.96", "b" * 64, provides=frozenset({"libcudart.so.13"})))
    assert problems(FakeRecipe("13.0"), TARGET, pins, wheels, {"docker": CUDA12}) == []


def test_a_platform_that_declares_no_cuda_is_not_judged_but_min_cuda_still_is():
    pins, wheels = facts(WheelLibs("x", "1", "a" * 64, frozenset({"libcudart.so.12"})))
    assert problems(FakeRecipe("12.0"), TARGET, pins, wheels, {"local": None}) == []
    assert problems(FakeRecipe(None), TARGET, pins, wheels, {"local": None})  # min_cuda unset


def test_a_wheel_without_recorded_facts_is_a_problem():
    pins, _ = facts(WheelLibs("x", "1", "a" * 64))
    assert "no CUDA facts for x==1" in problems(FakeRecipe(), TARGET, pins, {}, {})[0]


def test_colab_images_are_the_published_ones_with_provenance():
    images = images_of("colab", PROJECT_ROOT / "envs")
    assert sorted(images) == ["colab-2026.04", "colab-2026.07", "colab-latest"]
    latest, pinned, older = images["colab-latest"], images["colab-2026.07"], images["colab-2026.04"]
    assert latest.python == Version("3.13.15") and pinned.python == older.python == Version("3.12.13")
    assert latest.shipped["numpy"] == "2.1.3" and pinned.shipped["numpy"] == "2.0.2"
    assert latest.shipped["torch"] == "2.11.0+cu128" and older.shipped["torch"] == "2.10.0+cu128"
    assert "a72407924822" in latest.source and "ec53f93fe44a" in pinned.source and "77d5dbef56d7" in older.source
    assert "libcudart.so.12" in latest.cuda and "libcudart.so.13" not in latest.cuda


def test_each_file_of_the_images_is_read_once(monkeypatch):
    """A checkout on Drive waits on every open: the images share one CUDA list, read once, and
    each image file is parsed from the bytes its digest is taken of."""
    opened: list[str] = []

    def counting(real_open):
        def opening(file, *args, **kwargs):
            if not isinstance(file, int):  # a descriptor os.open gave: counted there
                opened.append(Path(file).name)
            return real_open(file, *args, **kwargs)
        return opening

    monkeypatch.setattr(io, "open", counting(io.open))  # pathlib's
    monkeypatch.setattr(builtins, "open", counting(builtins.open))
    monkeypatch.setattr(os, "open", counting(os.open))  # transfer.read_head's
    images_of("colab", PROJECT_ROOT / "envs")
    assert opened.count("cuda-12.8.txt") == 1
    assert sorted(name for name in opened if name.endswith(".toml")) == \
        ["colab-2026.04.toml", "colab-2026.07.toml", "colab-latest.toml"]


def test_bare_locks_serve_every_profile_without_an_image_for_that_python():
    served = platforms_for(LockTarget("3.13", "manylinux_x86_64"), None)
    assert served["the docker platform"] and served["the local platform"] is None
    assert "the colab platform" not in served  # colab has its own image for 3.13
    assert "the colab platform" in platforms_for(LockTarget("3.11", "manylinux_x86_64"), None)


def test_lock_tags_fit_colabs_glibc_and_python():
    found = {str(t) for t in lock_tags(LockTarget("3.12", "manylinux_x86_64"))}
    assert "cp312-cp312-manylinux_2_35_x86_64" in found and "py3-none-any" in found
    assert {"py3-none-manylinux2014_x86_64", "py3-none-manylinux1_x86_64"} <= found  # legacy names
    assert not any("cp313" in t for t in found) and "cp312-cp312-manylinux_2_36_x86_64" not in found


def test_parse_freeze_keeps_pins_and_skips_direct_references():
    shipped = parse_freeze("# header\nNumPy==2.1.3\ngoogle-colab @ file:///x.tar.gz\ntorch==2.11.0+cu128\n")
    assert shipped == {"numpy": "2.1.3", "torch": "2.11.0+cu128"}


def envs_with_a_cuda_list(tmp_path: Path) -> tuple[Path, Path]:
    """An envs/ folder whose images/ holds a CUDA library list, and a provider's freeze list."""
    envs = tmp_path / "envs"
    (envs / "images").mkdir(parents=True)
    (envs / "images" / "cuda-12.8.txt").write_text("libcudart.so.12\n")
    freeze = tmp_path / "freeze.txt"
    freeze.write_text("numpy==2.3.0\n")
    return envs, freeze


def test_image_task_writes_an_image_another_may_share_its_python(tmp_path):
    envs, freeze = envs_with_a_cuda_list(tmp_path)

    path = write_image(envs, "colab-next", "colab", freeze, "3.14.1", 'repo@abc "quoted"', "cuda-12.8.txt")

    image = load_image(path)
    assert image.shipped == {"numpy": "2.3.0"} and image.cuda == {"libcudart.so.12"}
    assert image.source == 'repo@abc "quoted"'
    write_image(envs, "colab-other", "colab", freeze, "3.14.2", "x", None)  # two runtimes, one Python
    assert sorted(images_of("colab", envs)) == ["colab-next", "colab-other"]
    with pytest.raises(BadInput) as no_list:  # it said "fix the 'cuda' key of the image that names it"
        write_image(envs, "colab-x", "colab", freeze, "3.15.0", "x", "cuda-13.0.txt")
    assert str(no_list.value) == (f"--cuda 'cuda-13.0.txt' names no file in {envs / 'images'} (there are: "
                                  "cuda-12.8.txt); add the image's CUDA library list there, or name one of them")
    assert not (envs / "images" / "colab-x.toml").exists()
    with pytest.raises(BadInput, match="no `name==version` lines"):
        freeze.write_text("nothing here\n")
        write_image(envs, "colab-x", "colab", freeze, "3.15.0", "x", None)


def test_an_image_s_unreadable_lists_are_one_line_naming_them_and_another_profile_s_are_not_read(tmp_path):
    """A freeze list that is not UTF-8, or a CUDA list that is missing, is one BadInput line that
    names the image file, its key and what to do, never a traceback. The lists of another
    profile's images are not read at all (a workstation has no use for Colab's)."""
    envs, freeze = envs_with_a_cuda_list(tmp_path)
    path = write_image(envs, "colab-next", "colab", freeze, "3.14.1", "repo@abc", "cuda-12.8.txt")
    (envs / "images" / "colab-next.freeze.txt").write_bytes(b"numpy==2.3.0\n\xff\xfe\n")

    assert images_of("local", envs) == {}, "another profile's lists are not read"
    with pytest.raises(BadInput) as bad:
        images_of("colab", envs)
    assert str(bad.value) == (f"{path}: 'freeze' names {envs / 'images' / 'colab-next.freeze.txt'}, which cannot "
                              "be read (not UTF-8 text); write the image again from its provider's list "
                              "(see `invoke image --help`)")
    (envs / "images" / "colab-next.freeze.txt").write_text("numpy==2.3.0\n")
    (envs / "images" / "cuda-12.8.txt").unlink()
    with pytest.raises(BadInput) as missing:
        load_image(path)
    assert str(missing.value).startswith(f"{envs / 'images' / 'cuda-12.8.txt'}: cannot read the CUDA library list "
                                         "(No such file or directory); restore the file")


def test_of_two_runtimes_on_one_python_the_vm_gets_the_lock_of_the_one_it_matches():
    """Colab's 2026.04 and 2026.07 runtimes are both Python 3.12: what the VM has installed tells
    them apart (numpy, opencv, torch differ), and its lock follows."""
    recipe = load_recipe("hyperlpr", PROJECT_ROOT)
    images = images_of("colab", PROJECT_ROOT / "envs")
    on_312 = [images["colab-2026.07"], images["colab-2026.04"]]
    for name in ("colab-2026.04", "colab-2026.07"):
        vm = dict(images[name].shipped)
        vm[canonicalize_name("numpy")] = "9.9"  # a VM matches no list exactly; the nearest still wins
        chosen, image, warning = select_lock(recipe, on_312, "3.12", "manylinux_x86_64", vm)
        assert (chosen.image, image.name if image else None, warning) == (name, name, None)
        # a VM holding only a few of the image's packages (a stand-in) still tells them apart
        few = {n: images[name].shipped[n] for n in map(canonicalize_name, ("numpy", "opencv-python", "torch"))}
        assert select_lock(recipe, on_312, "3.12", "manylinux_x86_64", few)[1] == images[name]


def test_a_vm_without_its_platform_lock_falls_back_to_the_bare_one_and_says_so(tmp_path):
    recipe = load_recipe("hyperlpr", PROJECT_ROOT)
    latest = images_of("colab", PROJECT_ROOT / "envs")["colab-latest"]
    chosen, image, warning = select_lock(recipe, [latest], "3.13", "manylinux_x86_64", latest.shipped)
    assert chosen.image == "colab-latest" and image == latest and warning is None
    chosen, image, warning = select_lock(recipe, [latest], "3.13", "manylinux_aarch64", {})  # no lock of either
    assert chosen.image == "colab-latest" and warning is None  # the message then names the image's lock
    chosen, image, warning = select_lock(recipe, [], "3.13", "manylinux_x86_64", {})
    assert chosen.image is None and image is None and warning is None


def test_without_a_colab_lock_the_bare_one_is_used_with_the_command_to_make_it(tmp_path):
    import shutil

    shutil.copytree(PROJECT_ROOT / "recipes", tmp_path / "recipes")
    shutil.copytree(PROJECT_ROOT / "requirements", tmp_path / "requirements",
                    ignore=shutil.ignore_patterns("colab-*"))
    recipe = load_recipe(str(tmp_path / "recipes" / "hyperlpr.toml"), PROJECT_ROOT)
    latest = images_of("colab", PROJECT_ROOT / "envs")["colab-latest"]

    chosen, image, warning = select_lock(recipe, [latest], "3.13", "manylinux_x86_64", latest.shipped)

    assert chosen.image is None and image is None
    assert "hyperlpr has no lock for the colab image colab-latest" in warning
    assert f"invoke lock --recipe {tmp_path / 'recipes' / 'hyperlpr.toml'} --image colab-latest" in warning


def test_a_python_no_published_image_has_takes_the_bare_lock_and_says_why(demo, drive, tmp_path, index):
    """Colab's 2025.07 runtime is Python 3.11, for which no image is shipped here: this Python,
    or pyenv's 3.11 where this one is an image's (3.12, 3.13), with a bare lock made for it."""
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    python = Path(sys.executable)
    if any(image.python_minor == minor for image in ALL_COLAB_IMAGES.values()):
        minor, python = "3.11", pyenv_python("3.11")
        if python is None:
            pytest.skip("this Python is a Colab image's, and there is no pyenv Python 3.11 to take instead")
        locked = run_cli("lock", "--recipe", str(demo), "--python-version", minor, env=cli_env(index.url))
        assert locked.code == 0, locked.stderr
    result = bootstrap(demo, drive, make_venv(tmp_path / "venv", python), "--dry-run",
                       env=cli_env(index.url, WARMSTART_PLATFORM="colab"))

    assert result.code == 0, result.stderr
    assert f"warning: the colab platform has no published image for Python {minor} (it has: colab-2026.04 " \
           "(3.12), colab-2026.07 (3.12), colab-latest (3.13)); the bare lock may replace" in result.stderr
