"""Lock files: parsing, stripping excluded packages, and detecting stale inputs."""

from __future__ import annotations

import hashlib
import http.server
import io
import shutil
import sys
import tarfile
import threading
from pathlib import Path

import pytest
from conftest import cli_env, run_cli, serve_folder, write_simple_index
from packaging.utils import canonicalize_name
from packaging.version import Version

from warmstart import PROJECT_ROOT
from warmstart.compiling import _without_excluded
from warmstart.errors import BadInput
from warmstart.lock import LockTarget, check_fresh, lock_path, parse_lock, target_image
from warmstart.recipe import load_recipe

COMPILED = """\
alpha==1.0 \\
    --hash=sha256:{a}
    # via -r requirements/demo.in
cpu-only==1.0 \\
    --hash=sha256:{c} \\
    --hash=sha256:{d}
    # via
    #   alpha
    #   other
beta==2.0 \\
    --hash=sha256:{b}
    # via alpha
""".format(a="a" * 64, b="b" * 64, c="c" * 64, d="d" * 64)


def test_excluded_block_removed_with_its_hashes_and_annotations():
    text = _without_excluded(COMPILED, ("cpu-only",))
    assert "cpu-only" not in text and "c" * 64 not in text and "#   other" not in text
    assert "alpha==1.0" in text and "beta==2.0" in text and "# via alpha" in text


def signed(body: str) -> str:
    return f"# inputs-sha256: {'e' * 64}\n# lock-sha256: {hashlib.sha256(body.encode()).hexdigest()}\n{body}"


def test_parse_lock_reads_pins_and_hashes(tmp_path):
    path = tmp_path / "demo-py311-manylinux_x86_64.txt"
    path.write_text(signed(COMPILED))
    lock = parse_lock(path)
    assert lock.inputs_sha256 == "e" * 64
    assert [(p.name, p.version) for p in lock.pins] == [("alpha", "1.0"), ("cpu-only", "1.0"), ("beta", "2.0")]
    assert lock.pins[1].hashes == {"c" * 64, "d" * 64}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("alpha>=1.0 --hash=sha256:" + "a" * 64 + "\n", "'alpha>=1.0' is not pinned"),
        ("alpha==1.0\n", "'alpha' has no --hash"),
        ("al pha==1.0 --hash=sha256:" + "a" * 64 + "\n", "cannot read requirement"),
    ],
)
def test_bad_lock_lines_name_the_package(tmp_path, body, message):
    path = tmp_path / "lock.txt"
    path.write_text(signed(body))
    with pytest.raises(BadInput, match=message) as caught:
        parse_lock(path)
    assert str(path) in str(caught.value)


def test_a_lock_edited_by_hand_is_refused(tmp_path):
    path = tmp_path / "lock.txt"
    path.write_text(signed(COMPILED).replace("b" * 64, "f" * 64))
    with pytest.raises(BadInput, match="edited by hand"):
        parse_lock(path)
    path.write_text(COMPILED)
    with pytest.raises(BadInput, match="not written by `invoke lock`"):
        parse_lock(path)


@pytest.mark.parametrize("target", [LockTarget("3.11", "manylinux_x86_64"),
                                    LockTarget("3.13", "manylinux_x86_64", "colab-latest")], ids=str)
def test_committed_hyperlpr_lock_is_fresh_and_complete(target):
    recipe = load_recipe("hyperlpr", PROJECT_ROOT)
    lock = parse_lock(lock_path(recipe, target))
    check_fresh(lock, recipe, target, target_image(target))
    names = {p.name for p in lock.pins}
    assert {"hyperlpr3", "onnxruntime-gpu", "opencv-python-headless"} <= names
    assert not {"onnxruntime", "opencv-python"} & names
    assert all(p.hashes for p in lock.pins)
    # onnxruntime-gpu's CUDA 12 build, as read from its wheel when the lock was made.
    assert lock.wheels["onnxruntime-gpu"].needs >= {"libcudart.so.12", "libcudnn.so.9"}
    # the digest a snapshot is keyed by: its body's, which its header states
    text = lock.path.read_text()
    assert f"# lock-sha256: {lock.body_sha256}\n" in text
    assert lock.body_sha256 == hashlib.sha256(text.partition(f"{lock.body_sha256}\n")[2].encode()).hexdigest()


@pytest.mark.parametrize("resolver", ["pip-tools", "uv"])
def test_an_image_s_version_is_held_where_the_requirements_admit_it_and_said_where_they_do_not(
        demo, index, monkeypatch, resolver):
    """A lock for an image keeps what the image ships where the recipe's requirements allow it
    (beta 1.6: alpha asks for beta>=1.5), and says which shipped version they rule out, in one
    line that ends with the resolver's conclusion (beta 1.0). uv indents its explanation: the
    line said its last line with that indentation."""
    from warmstart import compiling
    from warmstart.images import Image

    monkeypatch.setenv("PIP_INDEX_URL", index.url)
    recipe = load_recipe(str(demo), demo.parent.parent)
    current = LockTarget.current()
    other = "3.13" if current.python_version == "3.12" else "3.12"  # uv resolves for a Python other than this one
    target = current if resolver == "pip-tools" else LockTarget(other, current.platform)
    said: list[str] = []
    run = compiling._Resolver(recipe, target, "", False, (), said.append)
    assert run.tool == resolver
    free, _ = run.run({})
    assert free is not None and "beta==2.0" in free

    def image(beta: str) -> Image:
        return Image("test-image", "test", Version(f"{target.python_version}.1"), {canonicalize_name("beta"): beta},
                     frozenset(), "test", demo, "0" * 64)

    held = compiling._hold_image_versions(run, free, image("1.6"))
    assert "beta==1.6" in held and said == ["held at the image's versions: beta==1.6"]

    said.clear()
    kept = compiling._hold_image_versions(run, free, image("1.0"))
    assert "beta==2.0" in kept
    [line] = said
    assert line.startswith(f"beta 1.0 (the image's) is ruled out by the recipe's requirements ({resolver}: "), line
    assert line.endswith(")") and "  " not in line and "Traceback" not in line, line
    assert ("conflicting dependencies" if resolver == "pip-tools" else "alpha depend on beta>=1.5") in line, line


def source_distribution(folder: Path, name: str, version: str) -> Path:
    """A real sdist: reading its metadata means building it, with setuptools from the index."""
    path = folder / f"{name}-{version}.tar.gz"
    files = {"PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             "pyproject.toml": '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
                               f'[project]\nname = "{name}"\nversion = "{version}"\n',
             f"{name}/__init__.py": ""}
    with tarfile.open(path, "w:gz") as tf:
        for member, text in files.items():
            info = tarfile.TarInfo(f"{name}-{version}/{member}")
            info.size = len(text.encode())
            tf.addfile(info, io.BytesIO(text.encode()))
    return path


@pytest.mark.parametrize("resolver", ["pip-tools", "uv"])
def test_a_lock_takes_the_newest_version_with_a_wheel_not_a_newer_source_distribution(demo, tmp_path, index,
                                                                                      resolver):
    """A bootstrap installs wheels only (each checked against the files the lock records from
    it), so a newer version published as a source distribution alone (beta 3.0) is passed over
    for beta 2.0. Both resolvers took beta 3.0 and tried to build it to read its metadata (with
    setuptools, which this index lacks): `invoke lock` failed. (--upgrade: no pin of the lock
    there is preferred.)"""
    root = tmp_path / "index"
    shutil.copytree(index.files.parent, root)
    source_distribution(root / "files", "beta", "3.0")
    write_simple_index(root)
    url, server = serve_folder(root)
    other = "3.12" if sys.version_info[:2] != (3, 12) else "3.13"
    version = other if resolver == "uv" else f"{sys.version_info.major}.{sys.version_info.minor}"
    try:
        result = run_cli("lock", "--recipe", str(demo), "--upgrade",
                         *(["--python-version", other] if resolver == "uv" else []), env=cli_env(f"{url}/simple"))
    finally:
        server.shutdown()

    assert result.code == 0, result.stderr
    assert f"with {resolver}" in result.stderr
    lock = parse_lock(demo.parent.parent / "requirements" / f"demo-py{version.replace('.', '')}-manylinux_x86_64.txt")
    assert {pin.name: pin.version for pin in lock.pins} == {"alpha": "1.0", "beta": "2.0", "gpu-build": "1.0"}


def test_a_resolver_s_long_explanation_is_said_by_its_conclusion():
    """uv explains a conflict with a tree of versions (50 lines for ultralytics against a held
    torch); the line keeps its conclusion, not the tree's first 300 characters."""
    from warmstart.compiling import _conflict

    tree = "\n".join(f"             ultralytics>=8.{n}.0,<=8.{n}.9" for n in range(60))
    why = (f"error: No solution found when resolving dependencies\n  cause: Because all of:\n{tree}\n"
           "         depend on torch>=1.7.0 and torch==0.0.1, we can conclude that all of: ...\n"
           "         And because ultralytics==8.4.44 was yanked and you require ultralytics, we can conclude "
           "that your requirements are unsatisfiable.")

    assert _conflict(why) == ("... because ultralytics==8.4.44 was yanked and you require ultralytics, we can "
                              "conclude that your requirements are unsatisfiable.")
    assert _conflict("") == "no resolution"


class _Refusing(http.server.BaseHTTPRequestHandler):
    """A proxy that lets nothing through: it records each request (CONNECT host:443 for HTTPS)
    and answers 403."""

    asked: list[str]

    def _refuse(self) -> None:
        self.asked.append(f"{self.command} {self.path}")
        self.send_error(403)

    do_CONNECT = do_GET = do_HEAD = _refuse

    def log_message(self, *_args: object) -> None:
        pass


@pytest.mark.parametrize("resolver", ["pip-tools", "uv"])
def test_a_lock_asks_the_index_alone_and_writes_in_warmstart_s_folder_alone(demo, index, tmp_path, resolver):
    """uv, resolving for a Python it found no interpreter of on PATH, fetched one from GitHub
    (python-build-standalone) into ~/.local/share/uv: a host besides the index, a folder besides
    warmstart's, and where that host was out of reach 10 s of retries per resolution (an image's
    lock takes up to three); pip-tools kept its cache in ~/.cache/pip-tools. Here PATH holds no
    interpreter of the other Python, and every request but the index's (127.0.0.1) goes to a
    proxy that records it and lets nothing through."""
    handler = type("Refusing", (_Refusing,), {"asked": []})
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    other = "3.12" if sys.version_info[:2] != (3, 12) else "3.13"
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python3").symlink_to(sys.executable)
    home = tmp_path / "home"
    home.mkdir()
    via = f"http://127.0.0.1:{proxy.server_address[1]}"
    env = cli_env(index.url, HTTPS_PROXY=via, HTTP_PROXY=via, NO_PROXY="127.0.0.1,localhost", HOME=str(home),
                  XDG_CACHE_HOME=str(home / ".cache"), PATH=f"{tmp_path / 'bin'}:/bin")
    try:
        result = run_cli("lock", "--recipe", str(demo), *(["--python-version", other] if resolver == "uv" else []),
                         env=env)
    finally:
        proxy.shutdown()

    assert result.code == 0, result.stderr
    assert f"with {resolver}" in result.stderr
    assert handler.asked == [], "only the index was asked"
    assert [p.name for p in home.iterdir()] == [".cache"]
    assert [p.name for p in (home / ".cache").iterdir()] == ["warmstart"], "warmstart's own folder alone"
