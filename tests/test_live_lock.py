"""A runtime no committed lock was compiled for (#23): Colab drifts weekly, and a VM may differ
from every published image in the recipe's own closure. Here a test image of the colab profile
ships beta 2.0; the VM has beta 1.6 (which the recipe accepts); the committed lock for the image
would replace it. Online, warmstart makes a lock for this runtime (beta 1.6 kept), keeps it on
Drive, and a wiped VM of the same runtime restores with it offline; the committed lock is never
touched. Real pip, uv, `invoke lock` and a package index on 127.0.0.1; warmstart runs from a copy
of the checkout whose envs/ holds the test image (the real Colab images are other Pythons)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import (
    CACHE_HOME,
    NETNS,
    Result,
    cli_env,
    installed,
    make_venv,
    needs_mountns,
    needs_netns,
    on_a_small_disk,
)
from test_fresh_machine import copy_checkout

from warmstart.lock import parse_lock


@pytest.fixture
def runtime(tmp_path, demo, index):
    """(invoke in a checkout with the test image, the demo recipe locked for that image)"""
    checkout = tmp_path / "checkout"
    copy_checkout(checkout)
    python = f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    (checkout / "envs" / "images" / "colab-test.freeze.txt").write_text("beta==2.0\nsix==1.16.0\n")
    (checkout / "envs" / "images" / "colab-test.toml").write_text(
        f'name = "colab-test"\nprofile = "colab"\npython = "{python}"\nfreeze = "colab-test.freeze.txt"\n'
        'cuda = "cuda-12.8.txt"\nsource = "a test image"\n')

    def invoke(*args: str, offline_net: bool = False, around: Callable[[list[str]], list[str]] | None = None,
               **extra: str) -> Result:
        env = cli_env(index.url, PYTHONPATH=str(checkout), WARMSTART_PLATFORM="colab", **extra)
        cmd = [sys.executable, "-m", "invoke", "--search-root", str(checkout), *args]
        if offline_net:
            cmd = [*NETNS, "--", *cmd]
        if around:
            cmd = around(cmd)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=checkout, timeout=600)
        return Result(done.returncode, done.stdout, done.stderr)

    made = invoke("lock", "--recipe", str(demo), "--image", "colab-test")
    assert made.code == 0, made.stderr
    return invoke


def vm_with_beta_16(path: Path, index_url: str) -> Path:
    python = make_venv(path)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--index-url",
                    index_url, "beta==1.6"], check=True, env=cli_env())
    return python


@needs_netns
def test_a_drifted_runtime_gets_a_lock_of_its_own_kept_on_drive_for_the_next_vm(runtime, demo, drive, tmp_path,
                                                                                index):
    committed = next((demo.parent.parent / "requirements" / "colab-test").glob("demo-py*.txt"))
    before = committed.read_bytes()
    assert {p.name: p.version for p in parse_lock(committed).pins}["beta"] == "2.0", "the image's beta"
    python = vm_with_beta_16(tmp_path / "vm1", index.url)

    first = runtime("bootstrap", "--recipe", str(demo), "--drive", str(drive), "--python", str(python), "--json")

    assert first.code == 0, first.stderr
    assert "made on this runtime now" in first.stderr
    assert first.report["replaced"] == {} and installed(python)["beta"] == "1.6", "the runtime's beta stays"
    assert first.report["image_drift"]["closure"] == {"beta": {"image": "2.0", "installed": "1.6"}}
    assert first.report["image"].startswith("live-")
    (stored,) = (drive / ".warmstart" / "v1" / "locks").iterdir()
    assert stored.name.startswith("demo-py3") and "beta==1.6" in stored.read_text()
    assert committed.read_bytes() == before, "a committed lock is never changed by a VM"
    shown = runtime("status", "--recipe", str(demo), "--drive", str(drive), "--python", str(python))
    assert shown.code == 0, shown.stdout + shown.stderr
    assert f"lock      {stored}" in shown.stdout and "made on this runtime" in shown.stdout, shown.stdout
    listed = runtime("cache", "--drive", str(drive))
    # the demo recipe lies outside the checkout and its Drive folder: no recipe here owns the lock
    assert f"lock made for a runtime: {stored.name} (no recipe here)" in listed.stdout, listed.stdout

    # A wiped VM of the same runtime, no network at all: the lock for it comes from Drive.
    python2 = vm_with_beta_16(tmp_path / "vm2", index.url)
    second = runtime("bootstrap", "--recipe", str(demo), "--drive", str(drive), "--python", str(python2),
                     "--offline", "--keep-runtime", "--json", offline_net=True)

    assert second.code == 0, second.stderr
    assert "made on this runtime, from Drive" in second.stderr
    assert second.report["replaced"] == {} and installed(python2)["beta"] == "1.6"
    assert {k: installed(python2)[k] for k in ("alpha", "gpu-build")} == {"alpha": "1.0", "gpu-build": "1.0"}


@needs_netns
def test_offline_without_a_lock_for_the_runtime_says_what_it_replaces_and_keep_runtime_refuses(
        runtime, demo, drive, tmp_path, index):
    # Drive filled by a VM that matches the image (no lock of its own needed)
    matching = make_venv(tmp_path / "matching")
    assert runtime("bootstrap", "--recipe", str(demo), "--drive", str(drive), "--python", str(matching)).code == 0
    assert not (drive / ".warmstart" / "v1" / "locks").exists() or not any((drive / ".warmstart" / "v1" / "locks").iterdir())
    python = vm_with_beta_16(tmp_path / "vm", index.url)

    planned = runtime("bootstrap", "--recipe", str(demo), "--drive", str(drive), "--python", str(python),
                      "--offline", "--dry-run", offline_net=True)
    assert "replaces beta 1.6 with 2.0" in planned.stderr, planned.stderr

    refused = runtime("bootstrap", "--recipe", str(demo), "--drive", str(drive), "--python", str(python),
                      "--offline", "--keep-runtime", "--json", offline_net=True)
    assert refused.code == 3, refused.stderr
    assert "--keep-runtime, but" in refused.report["error"] and "beta 1.6 -> 2.0" in refused.report["error"]
    assert "run once without --offline (warmstart then makes a lock for this runtime" in refused.report["error"]
    assert installed(python)["beta"] == "1.6"


def test_a_lock_for_the_runtime_on_drive_that_does_not_check_out_is_not_used(runtime, demo, drive, tmp_path, index):
    """One edited on Drive (a hash of a release the committed lock names, changed; its own digest
    recomputed) is refused with a warning, and a new one is made."""
    python = vm_with_beta_16(tmp_path / "vm1", index.url)
    assert runtime("bootstrap", "--recipe", str(demo), "--drive", str(drive), "--python", str(python)).code == 0
    (stored,) = (drive / ".warmstart" / "v1" / "locks").iterdir()
    committed = next((demo.parent.parent / "requirements" / "colab-test").glob("demo-py*.txt"))
    alpha = next(p for p in parse_lock(committed).pins if p.name == "alpha")
    text = stored.read_text().replace(sorted(alpha.hashes)[0], "0" * 64)
    head, body = text.split("\n# lock-sha256: ", 1)
    body = body.split("\n", 1)[1]
    stored.write_text(f"{head}\n# lock-sha256: {hashlib.sha256(body.encode()).hexdigest()}\n{body}")
    python2 = vm_with_beta_16(tmp_path / "vm2", index.url)

    again = runtime("bootstrap", "--recipe", str(demo), "--drive", str(drive), "--python", str(python2), "--json")

    assert again.code == 0, again.stderr
    assert "cannot be used: its hashes for alpha==1.0 are not the committed lock's" in json.dumps(again.report)
    assert "made on this runtime now" in again.stderr, again.stderr
    names = sorted(p.name for p in (drive / ".warmstart" / "v1" / "locks").iterdir())
    assert names[0] == stored.name and names[1].startswith(f"{stored.name}.damaged-"), names
    assert "beta==1.6" in stored.read_text() and "0" * 64 not in stored.read_text(), "the new one took its place"


@needs_netns
@needs_mountns
def test_a_full_local_disk_as_the_lock_from_drive_is_copied_is_said_as_the_local_disk(runtime, demo, drive,
                                                                                     tmp_path, index):
    """The lock for this runtime comes off Drive into warmstart's own folder; when that local
    disk is full, the run ends (exit 3) naming the local file, and Drive's lock is left as it
    is: not "cannot be read" off Drive (whose meaning of a full disk is Drive's quota), nor set
    aside. The local disk: a real 4 KiB tmpfs over the folder, filled first."""
    python = vm_with_beta_16(tmp_path / "vm1", index.url)
    assert runtime("bootstrap", "--recipe", str(demo), "--drive", str(drive), "--python", str(python)).code == 0
    (stored,) = (drive / ".warmstart" / "v1" / "locks").iterdir()
    kept = stored.read_bytes()
    local = Path(CACHE_HOME) / "warmstart" / "live-locks"
    local.mkdir(parents=True, exist_ok=True)
    filled = ["sh", "-c", 'head -c 4096 /dev/zero > "$0/filler" && exec "$@"', str(local)]
    python2 = vm_with_beta_16(tmp_path / "vm2", index.url)

    full = runtime("bootstrap", "--recipe", str(demo), "--drive", str(drive), "--python", str(python2),
                   "--offline", "--keep-runtime", "--json", offline_net=True,
                   around=lambda cmd: on_a_small_disk(local, [*filled, *cmd]))

    assert full.code == 3, full.stderr
    error = full.report["error"]
    assert error.startswith(f"{local}/.{stored.name}.") and "No space left on device [errno 28]" in error, error
    assert "lock for this runtime on Drive" not in full.stdout + full.stderr, full.stderr
    assert [p.name for p in stored.parent.iterdir()] == [stored.name] and stored.read_bytes() == kept
    assert installed(python2)["beta"] == "1.6"
