"""Lock files: parsing, stripping excluded packages, and detecting stale inputs."""

from __future__ import annotations

import hashlib

import pytest

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
    # the digest a snapshot is keyed by, from the text read once: the file's own, as before
    assert lock.sha256 == hashlib.sha256(lock.path.read_bytes()).hexdigest()
