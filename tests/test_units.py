"""The pure parts, in milliseconds: the plan, wheel choice, redaction, prune selection, pip's
settings, the store's rules and the one declaration of bootstrap's options. No subprocess, no
network, no venv: each test builds its facts in memory (a few files in tmp_path for the store)."""

from __future__ import annotations

import errno
import hashlib
import inspect
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path, PurePosixPath

import pytest
from conftest import (
    REPO,
    WAIT_FOR_A_SIGNAL,
    cli_env,
    in_a_removed_folder,
    make_venv,
    needs_mountns,
    on_a_small_disk,
    process_running,
    run_cli,
    wait_until,
    with_ctrl_c,
)
from packaging.specifiers import SpecifierSet
from packaging.tags import Tag
from packaging.utils import canonicalize_name
from packaging.version import Version

from warmstart import PROJECT_ROOT, checks, commands, pipconfig, snapshot, wheels
from warmstart import status as status_module
from warmstart.background import ChildRead, child_write
from warmstart.console import counted
from warmstart.errors import BadInput, PreconditionUnmet, WarmstartError, redact
from warmstart.gpu import Device, GpuReport, GpuVerdict, judge
from warmstart.images import Image, drift, images_of
from warmstart.installer import _run as run_installer
from warmstart.invocation import invoked_as
from warmstart.lock import Lock, Pin, needs
from warmstart.maintenance import Entry, prunable
from warmstart.pipconfig import DEFAULT_INDEX, IndexSettings, pip_env, uv_env
from warmstart.plan import Facts, installing_of, make_plan
from warmstart.profiles import load_profile
from warmstart.recipe import Asset, Check, GpuNeeds, Recipe
from warmstart.settings import Options, parse_command_line
from warmstart.snapshot import Snapshot
from warmstart.store import DriveStore, StoredFile
from warmstart.target import TargetPython
from warmstart.transfer import copy_hashed, part_name

H = {c: c * 64 for c in "abcdef"}
A = Pin(canonicalize_name("alpha"), "1.0", frozenset({H["a"]}))
B = Pin(canonicalize_name("beta"), "2.0", frozenset({H["b"]}))
TORCH = Pin(canonicalize_name("torch"), "2.11.0", frozenset({H["c"]}))
CUDA_RT = Pin(canonicalize_name("nvidia-cuda-runtime"), "13.0", frozenset({H["d"]}),
              via=frozenset({TORCH.name}), root=False)
T4 = Device(0, "Tesla T4", "GPU-1", 15360, 15000, "7.5", False)


def recipe(gpu: GpuNeeds = GpuNeeds(required=False), assets: tuple[Asset, ...] = ()) -> Recipe:
    return Recipe("demo", "a demo", SpecifierSet(">=3.10"), gpu, Path("requirements/demo.in"), (),
                  PurePosixPath("Work"), Path("recipes/demo.toml"), Path("."), assets)


def facts(installed: dict[str, str] | None = None, pins: tuple[Pin, ...] = (A, B), *,
          cached: dict[str, str] | None = None, gpu: GpuReport = GpuReport(), needs_gpu: bool = False,
          snapshot_found: bool = False, image: Image | None = None,
          assets: dict[Asset, tuple[Path, str]] | None = None, python: str = "3.11.7") -> Facts:
    """The facts of a VM, as prepare would find them."""
    have = {canonicalize_name(k): v for k, v in (installed or {}).items()}
    target = TargetPython(Path("/venv/bin/python"), Version(python), "cpython", Path("/venv"), have)
    the_recipe = recipe(GpuNeeds(required=needs_gpu), tuple(assets or ()))
    found = needs(pins, have)
    installing = installing_of(found, {})
    lock = Lock(Path("requirements/demo-py311-manylinux_x86_64.txt"), None, pins, "0" * 64)
    return Facts(recipe=the_recipe, profile=load_profile(PROJECT_ROOT / "envs" / "local.toml"), drive=Path("/drive"),
                 target=target, gpu=gpu, verdict=judge(the_recipe.gpu, gpu), lock=lock, image=image,
                 cached={canonicalize_name(k): v for k, v in (cached or {}).items()}, assets=dict(assets or {}),
                 broken={}, needs=found, snapshot=Snapshot("demo-py311-0123", {}) if installing else None,
                 snapshot_found=snapshot_found, installer="uv")


ONLINE = Options("demo")
OFFLINE = Options("demo", offline=True)


# -- the plan -------------------------------------------------------------------------------

def test_a_fresh_vm_installs_every_pin_and_downloads_what_the_cache_lacks():
    plan = make_plan(facts(cached={"beta": "beta-2.0-py3-none-any.whl"}), ONLINE)
    assert [p.name for p in plan.to_install] == ["alpha", "beta"]
    assert [p.name for p in plan.to_download] == ["alpha"]
    assert not plan.nothing_to_do and not plan.use_snapshot


def test_an_environment_matching_the_lock_with_a_full_cache_is_a_no_op():
    cached = {"alpha": "alpha-1.0-py3-none-any.whl", "beta": "beta-2.0-py3-none-any.whl"}
    plan = make_plan(facts({"alpha": "1.0", "beta": "2.0"}, cached=cached), ONLINE)
    assert plan.nothing_to_do and plan.to_install == () and plan.to_download == ()


def test_a_matching_environment_still_fills_an_empty_cache_for_the_next_vm():
    plan = make_plan(facts({"alpha": "1.0", "beta": "2.0"}), ONLINE)
    assert plan.to_install == () and {p.name for p in plan.to_download} == {"alpha", "beta"}


def test_another_version_installed_is_replaced_and_named():
    plan = make_plan(facts({"alpha": "0.9", "beta": "2.0"}), ONLINE)
    assert [p.name for p in plan.to_install] == ["alpha"]
    assert plan.replaced == {"alpha": ("0.9", "1.0")}


def test_a_platform_build_of_the_locked_version_is_kept_with_what_only_it_needs():
    """Colab's torch 2.11.0+cu128 meets the lock's torch==2.11.0; PyPI torch's CUDA runtime wheel,
    which only that build asks for, is the platform's business."""
    plan = make_plan(facts({"torch": "2.11.0+cu128"}, pins=(TORCH, CUDA_RT)), ONLINE)
    assert plan.to_install == () and plan.to_download == ()
    assert plan.facts.needs.provided == {"torch": "2.11.0+cu128"}
    assert [p.name for p in plan.facts.needs.left] == ["nvidia-cuda-runtime"]


def test_offline_without_the_wheels_or_a_snapshot_is_refused_naming_them():
    with pytest.raises(PreconditionUnmet, match=r"--offline.*lacks wheels for alpha==1.0"):
        make_plan(facts(cached={"beta": "beta-2.0-py3-none-any.whl"}), OFFLINE)


def test_offline_with_a_drive_that_stopped_answering_says_so_not_that_the_cache_is_empty():
    """A Drive listing that waited its timeout lists nothing (store.py): offline, that is said as
    Drive stopping, with the way out, not as a cache without wheels; a VM that needs nothing
    from Drive goes on."""
    down = "/drive stopped answering (a look at its files waited 60 s)"
    with pytest.raises(PreconditionUnmet) as refused:
        make_plan(replace(facts(), drive_down=down), OFFLINE)
    assert str(refused.value) == (f"--offline, but {down}: on Colab, remount it by running this in a notebook cell: "
                                  "from google.colab import drive; drive.mount('/content/drive', force_remount=True) "
                                  "and run again (without --offline the package index serves what Drive cannot)")
    assert make_plan(replace(facts({"alpha": "1.0", "beta": "2.0"}), drive_down=down), OFFLINE).nothing_to_do


def test_offline_with_a_snapshot_plans_a_restore_and_downloads_nothing():
    plan = make_plan(facts(snapshot_found=True), OFFLINE)
    assert plan.use_snapshot and plan.to_download == () and len(plan.to_install) == 2


def test_offline_without_an_asset_is_refused_naming_it():
    model = Asset("https://example.invalid/m.onnx", H["e"], "models/m.onnx")
    cached = {"alpha": "alpha-1.0-py3-none-any.whl", "beta": "beta-2.0-py3-none-any.whl"}
    with pytest.raises(PreconditionUnmet, match=r"lacks the assets m.onnx \(/drive/Work/models/m.onnx\)"):
        make_plan(facts(cached=cached, assets={model: (Path("/drive/Work/models/m.onnx"), "missing")}), OFFLINE)


def test_what_the_image_ships_is_not_downloaded_into_the_cache():
    image = Image("colab-latest", "colab", Version("3.11.7"), {canonicalize_name("beta"): "2.0"}, frozenset(),
                  "test", Path("envs/images/colab-latest.toml"), "0" * 64)
    plan = make_plan(facts({"beta": "2.0"}, image=image), ONLINE)
    assert [p.name for p in plan.to_download] == ["alpha"]


def test_no_gpu_for_a_gpu_recipe_is_refused_with_the_way_out_or_a_warning_when_allowed():
    with pytest.raises(PreconditionUnmet, match="--allow-no-gpu"):
        make_plan(facts(needs_gpu=True), ONLINE)
    plan = make_plan(facts(needs_gpu=True), replace(ONLINE, allow_no_gpu=True))
    assert any("needs an NVIDIA GPU" in w for w in plan.warnings)


def test_a_gpu_below_the_recipes_limits_is_refused_unless_allowed():
    small = facts(needs_gpu=True, gpu=GpuReport((T4,), "580.1", "13.0"))
    small = replace(small, verdict=judge(GpuNeeds(True, min_memory_gib=40), small.gpu))
    with pytest.raises(PreconditionUnmet, match=r"40 GiB.*--allow-unfit-gpu"):
        make_plan(small, ONLINE)
    assert make_plan(small, replace(ONLINE, allow_unfit_gpu=True)).warnings


def test_the_wrong_python_is_refused_naming_the_recipe():
    with pytest.raises(PreconditionUnmet, match=r"recipes/demo.toml: the recipe needs Python >=3.10"):
        make_plan(facts(python="3.9.18"), ONLINE)


def test_a_fitting_gpu_gives_no_verdict():
    assert judge(GpuNeeds(True, min_memory_gib=8), GpuReport((T4,), "580.1", "13.0")) == GpuVerdict()


# -- wheel choice ---------------------------------------------------------------------------

CP311 = [Tag("cp311", "cp311", "manylinux_2_28_x86_64"), Tag("cp311", "abi3", "manylinux_2_17_x86_64"),
         Tag("py3", "none", "any")]


def test_the_most_specific_wheel_the_target_accepts_wins():
    files = ["onnx-1.0-py3-none-any.whl", "onnx-1.0-cp311-cp311-manylinux_2_28_x86_64.whl",
             "onnx-1.0-cp312-cp312-manylinux_2_28_x86_64.whl", "onnx-1.0.tar.gz"]
    assert wheels.best(((f, f) for f in files), wheels.ranking(CP311)) == "onnx-1.0-cp311-cp311-manylinux_2_28_x86_64.whl"
    assert wheels.best(((f, f) for f in files[:1]), wheels.ranking(CP311[:2])) is None


def test_a_wheel_no_tag_of_the_target_accepts_is_never_chosen():
    assert wheels.best([("onnx-1.0-cp312-cp312-win_amd64.whl", 1), ("junk.whl", 2)], wheels.ranking(CP311)) is None


def test_wheels_group_by_name_and_version_from_one_listing():
    groups = wheels.by_release(["a-1.0-py3-none-any.whl", "a-1.0.0-cp311-cp311-linux_x86_64.whl",
                                "a-2.0-py3-none-any.whl", ".a-1.0-py3-none-any.whl.1234.part", "README"])
    assert sorted(len(v) for v in groups.values()) == [1, 2]  # 1.0 and 1.0.0 are one version


# -- redaction ------------------------------------------------------------------------------

@pytest.mark.parametrize("text, shown", [
    ("https://user:p%40ss@host/simple", "https://***@host/simple"),
    ("index https://tok@a.b/x and http://u:p@w@c.d/y", "index https://***@a.b/x and http://***@c.d/y"),
    ("https://pypi.org/simple", "https://pypi.org/simple"),
])
def test_credentials_in_urls_are_hidden(text, shown):
    assert redact(text) == shown


def test_status_names_what_was_added_and_counts_the_image_s_own():
    many = [f"d{i:02}" for i in range(25)]
    assert status_module._extra(["a", "b"], None) == "a, b"  # no image
    assert status_module._extra([], None) == "-"
    assert status_module._extra(many, None) == ", ".join(many[:20]) + " and 5 more"
    assert status_module._extra(["a", "b", "c"], ["b"]) == "b besides the image's 2"
    assert status_module._extra(["a", "b"], []) == "none besides the image's 2"


@pytest.mark.parametrize("held", [{"a": ["a"]}, {"a": {"failed": 3, "passed": [1]}}, {"a": "x"}, [1, 2], "text"],
                         ids=["before-6-december", "wrong-types", "not-a-record", "a-list", "a-string"])
def test_a_checks_record_of_any_shape_reads_as_what_it_can_say(tmp_path, monkeypatch, held):
    """warmstart's own file, read as any file: what it cannot say counts as nothing passed."""
    from warmstart.home import state_file

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = state_file("checks", tmp_path / "env")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(held))
    both = (Check("a", python="pass"), Check("b", run="true"))

    first = checks.due(tmp_path / "env", "a", both)
    assert first.failed == (["a"] if held == {"a": ["a"]} else [])
    assert first.checks == list(both)
    assert (first.again, first.new) == ((["a"], ["b"]) if first.failed else ([], ["a", "b"]))
    checks.remember(tmp_path / "env", "a", both,
                    [checks.CheckResult("a", True, "", 0.1), checks.CheckResult("b", False, "", 0.1)])
    assert checks.due(tmp_path / "env", "a", both) == ([both[1]], ["b"])


def test_a_report_line_counts_one_in_the_singular():
    # The H200's rerun after the printed command reinstalled one package: "1 files ... 1 packages".
    assert [counted(n, "file") for n in (0, 1, 12)] == ["0 files", "1 file", "12 files"]


# -- prune selection ------------------------------------------------------------------------

DAY = 86400.0


def entry(kind: str, name: str, age_days: float, owners: set[str] = frozenset(), now: float = 1e9,
          archive: str | None = None) -> Entry:
    folder = {"wheel": "wheels", "asset": "assets"}.get(kind, "snapshots")
    state = kind if kind in ("temporary", "set aside") else "file"
    stored = StoredFile(folder, Path(f"/d/.warmstart/v1/{folder}/{name}"), 10, now - age_days * DAY, state)
    return Entry(stored, kind, set(owners), archive=archive)


def test_prune_takes_old_unowned_unused_files_and_leaves_the_rest():
    now = 1e9
    old_unowned = entry("wheel", "old-1.0-py3-none-any.whl", 60)
    old_owned = entry("wheel", "kept-1.0-py3-none-any.whl", 60, {"hyperlpr"})
    young = entry("wheel", "young-1.0-py3-none-any.whl", 2)
    used_lately = entry("asset", "f" * 64, 60)
    aside = entry("set aside", "x.whl.damaged-1", 0)
    stale_tmp = entry("temporary", ".x.whl.1.part", 1)
    fresh_tmp = entry("temporary", ".y.whl.1.part", 0.001)
    entries = [old_unowned, old_owned, young, used_lately, aside, stale_tmp, fresh_tmp]
    doomed = prunable(entries, {used_lately.file.key: now - DAY}, retention_days=30, now=now)
    assert doomed == [old_unowned, aside, stale_tmp]


def test_a_snapshot_outlives_a_patch_release_of_its_python_but_not_a_minor_one():
    lock = Lock(Path("requirements/demo.lock"), None, (A, B), body_sha256="0" * 64)

    def stem(version: str, soabi: str) -> str:
        target = TargetPython(Path("/usr/bin/python3"), Version(version), "cpython", Path("/usr"), {},
                              platform="linux-x86_64", soabi=soabi)
        return Snapshot.locate("demo", lock, target, (A, B)).stem

    packed = stem("3.12.11", "cpython-312-x86_64-linux-gnu")
    assert stem("3.12.13", "cpython-312-x86_64-linux-gnu") == packed  # Colab's next patch release
    assert stem("3.12.13", "cpython-312d-x86_64-linux-gnu") != packed  # a debug build's ABI
    assert stem("3.13.0", "cpython-313-x86_64-linux-gnu") != packed


def test_a_snapshot_archive_lives_as_long_as_an_index_naming_it_is_used():
    now = 1e9
    archive = entry("snapshot", "demo-py311-k-0011.tar.zst", 90)
    index = entry("index", "demo-py311-k.json", 90, archive="demo-py311-k-0011.tar.zst")
    used = {index.file.key: now - DAY}
    assert prunable([archive, index], used, 30, now) == []
    assert prunable([archive, index], {}, 30, now) == [archive, index]


def test_a_snapshot_of_a_current_lock_goes_once_no_run_uses_it():
    """A lock names wheels, not snapshots: one lock serves VMs in many states (Colab's image drifts
    weekly; a prefix; a snapshot key of an earlier warmstart), each with a snapshot of its own,
    and one whose state no VM is in any more was kept as long as its lock was current."""
    now = 1e9
    stale = [entry("snapshot", "demo-py312-old-0011.tar.zst", 60, {"demo"}),
             entry("index", "demo-py312-old.json", 60, {"demo"}, archive="demo-py312-old-0011.tar.zst")]
    current = [entry("snapshot", "demo-py312-new-0022.tar.zst", 60, {"demo"}),
               entry("index", "demo-py312-new.json", 60, {"demo"}, archive="demo-py312-new-0022.tar.zst")]
    wheel = entry("wheel", "alpha-1.0-py3-none-any.whl", 60, {"demo"})
    used = {current[1].file.key: now - DAY}
    assert prunable([*stale, *current, wheel], used, 30, now) == stale


# -- pip's settings -------------------------------------------------------------------------

def test_index_settings_default_to_pypi_and_read_pips_variables(tmp_path):
    assert IndexSettings.from_environ({}).index_urls == (DEFAULT_INDEX,)
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    settings = IndexSettings.from_environ({
        "PIP_INDEX_URL": "https://mirror.example/simple", "PIP_EXTRA_INDEX_URL": "https://a.example/s http://b.example/s",
        "PIP_TRUSTED_HOST": "b.example:8080", "PIP_CERT": str(ca), "PIP_RETRIES": "2", "PIP_DEFAULT_TIMEOUT": "5"})
    assert settings.index_urls == ("https://mirror.example/simple", "https://a.example/s", "http://b.example/s")
    assert settings.trusted("http://b.example/s/x/") and not settings.trusted("https://a.example/s")
    assert (settings.cert, settings.retries, settings.timeout) == (str(ca), 2, 5.0)


@pytest.mark.parametrize("environ, words", [
    ({"PIP_INDEX_URL": "http://mirror.example/simple"}, "plain http"),
    ({"PIP_CERT": "/nonexistent/ca.pem"}, "PIP_CERT=/nonexistent/ca.pem is not a file"),
    ({"PIP_RETRIES": "many"}, "PIP_RETRIES must be a number"),
])
def test_bad_index_settings_are_one_line_naming_the_variable(environ, words):
    with pytest.raises(BadInput, match=words):
        IndexSettings.from_environ(environ)


def test_plain_http_is_fine_for_this_machine_or_when_asked_for():
    local = IndexSettings.from_environ({"PIP_INDEX_URL": "http://127.0.0.1:8000/simple"})
    allowed = IndexSettings.from_environ({"PIP_INDEX_URL": "http://m.example/simple", "WARMSTART_ALLOW_HTTP": "1"})
    assert local.index_urls == ("http://127.0.0.1:8000/simple",)
    assert allowed.index_urls == ("http://m.example/simple",)


def test_pip_and_uv_get_the_index_settings_and_nothing_that_adds_to_the_lock():
    environ = {"PIP_INDEX_URL": "https://m.example/simple", "PIP_FIND_LINKS": "/opt/wheels",
               "PIP_CONSTRAINT": "/c.txt", "PIP_TRUSTED_HOST": "m.example", "UV_CONSTRAINT": "/missing.txt",
               "PIP_PROXY": "http://proxy:3128", "PATH": "/bin"}
    pip = pip_env(environ)
    assert pip["PIP_INDEX_URL"] == "https://m.example/simple" and pip["PIP_TRUSTED_HOST"] == "m.example"
    assert "PIP_FIND_LINKS" not in pip and "PIP_CONSTRAINT" not in pip and pip["PIP_CONFIG_FILE"]
    uv = uv_env(environ)
    assert uv["UV_INDEX_URL"] == "https://m.example/simple" and uv["UV_INSECURE_HOST"] == "m.example"
    assert uv["HTTPS_PROXY"] == "http://proxy:3128" and "UV_CONSTRAINT" not in uv and uv["UV_NO_CONFIG"] == "1"


def test_pip_and_uv_keep_their_caches_and_credential_locks_in_warmstarts_folder(tmp_path):
    environ = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "XDG_DATA_HOME": str(tmp_path / "data"),
               "PIP_CACHE_DIR": "/elsewhere", "PATH": "/bin"}
    assert pip_env(environ)["PIP_CACHE_DIR"] == str(tmp_path / "cache" / "warmstart" / "pip")
    assert uv_env(environ)["UV_CREDENTIALS_DIR"] == str(tmp_path / "cache" / "warmstart" / "uv-credentials")
    (tmp_path / "data" / "uv" / "credentials").mkdir(parents=True)  # the user's `uv auth login` store
    assert "UV_CREDENTIALS_DIR" not in uv_env(environ), "uv reads the credentials the user stored"
    assert uv_env(environ | {"UV_CREDENTIALS_DIR": "/mine"})["UV_CREDENTIALS_DIR"] == "/mine"


def test_one_ca_bundle_goes_to_pip_and_uv_whichever_variable_named_it(tmp_path):
    """PIP_CERT, else the first of the machine's bundle variables (pipconfig.CA_BUNDLES), to pip
    both ways it may read it (REQUESTS_CA_BUNDLE wins over --cert, which --proxy leaves alone) and
    to uv over its own SSL_CERT_FILE; tests/test_index_settings.py has the index each refused."""
    for name in ("ca.pem", "machine.crt", "openssl.crt"):
        (tmp_path / name).touch()
    (tmp_path / "certs").mkdir()
    ca, machine, openssl = (str(tmp_path / name) for name in ("ca.pem", "machine.crt", "openssl.crt"))
    for environ, bundle in [({"PIP_CERT": ca, "REQUESTS_CA_BUNDLE": machine, "SSL_CERT_FILE": openssl}, ca),
                            ({"REQUESTS_CA_BUNDLE": machine, "SSL_CERT_FILE": openssl}, machine),
                            ({"SSL_CERT_FILE": openssl}, openssl)]:
        pip, uv = pip_env(environ), uv_env(environ)
        assert pip["PIP_CERT"] == pip["REQUESTS_CA_BUNDLE"] == uv["SSL_CERT_FILE"] == bundle, environ
    assert uv_env({"CURL_CA_BUNDLE": str(tmp_path / "certs")})["SSL_CERT_DIR"] == str(tmp_path / "certs")
    assert "REQUESTS_CA_BUNDLE" not in pip_env({}) and "SSL_CERT_FILE" not in uv_env({})
    gone = str(tmp_path / "gone.pem")  # OpenSSL and uv pass over such an SSL_CERT_FILE; requests stops at it
    assert "REQUESTS_CA_BUNDLE" not in pip_env({"SSL_CERT_FILE": gone})
    with pytest.raises(BadInput, match=r"^REQUESTS_CA_BUNDLE=.* names nothing"):
        pip_env({"REQUESTS_CA_BUNDLE": gone, "SSL_CERT_FILE": openssl})


# -- the Drive store ------------------------------------------------------------------------

def test_the_store_lists_whole_files_only_and_never_a_temporary_or_a_damaged_one(tmp_path):
    store = DriveStore(tmp_path)
    folder = store.root / "wheels"
    folder.mkdir(parents=True)
    for name in ("a-1.0-py3-none-any.whl", ".b-1.0-py3-none-any.whl.0a1b.part", "c-1.0-py3-none-any.whl.damaged-x"):
        (folder / name).write_text(name)
    (folder / "link.whl").symlink_to(folder / "a-1.0-py3-none-any.whl")
    assert store.names("wheels") == ["a-1.0-py3-none-any.whl"]
    states = {e.path.name: e.state for e in store.entries("wheels")}
    assert states["link.whl"] == "not a file" and states[".b-1.0-py3-none-any.whl.0a1b.part"] == "temporary"


def test_a_put_is_whole_or_absent_and_a_damaged_get_is_set_aside(tmp_path):
    store = DriveStore(tmp_path / "drive")
    src = tmp_path / "w.whl"
    src.write_bytes(b"wheel bytes")
    assert store.put("wheels", "w.whl", src)
    assert [p.name for p in (store.root / "wheels").iterdir()] == ["w.whl"]  # no temporary left
    good = hashlib.sha256(b"wheel bytes").hexdigest()
    assert store.get("wheels", "w.whl", tmp_path / "copy.whl", {good}) == tmp_path / "copy.whl"
    assert store.get("wheels", "w.whl", tmp_path / "copy2.whl", {"0" * 64}) is None
    assert not store.has("wheels", "w.whl") and "does not match" in store.warnings[-1]
    assert not (tmp_path / "copy2.whl").exists()


def test_stale_temporaries_go_and_fresh_ones_stay(tmp_path):
    store = DriveStore(tmp_path)
    folder = store.root / "assets"
    folder.mkdir(parents=True)
    (folder / ".old.part").write_text("")
    (folder / ".new.part").write_text("")
    removed = store.clean_stale_parts(now=time.time() + 2 * 3600)
    assert {p.name for p in removed} == {".old.part", ".new.part"}
    (folder / ".new.part").write_text("")
    assert store.clean_stale_parts() == []


def test_usage_records_fold_into_one_keeping_the_latest_use(tmp_path):
    store = DriveStore(tmp_path)
    store.record_use(["wheels/a.whl", "assets/x"], now=100)
    store.record_use(["wheels/a.whl"], now=200)
    when, records = store.last_used()
    assert when == {"wheels/a.whl": 200, "assets/x": 100} and len(records) == 2
    store.compact_usage(when, records, keep={"wheels/a.whl"})
    assert store.last_used()[0] == {"wheels/a.whl": 200}


def test_a_child_reads_a_file_whole_in_the_sizes_asked(tmp_path):
    """background.ChildRead: each read gives the bytes asked (4 MiB, more than its pipe holds)
    but at the end, and they are the file's."""
    data = os.urandom((9 << 20) + 5)
    (tmp_path / "archive").write_bytes(data)
    with ChildRead(open(tmp_path / "archive", "rb", buffering=0)) as stream:
        blocks = [stream.read(4 << 20) for _ in range(4)]
    assert [len(b) for b in blocks] == [4 << 20, 4 << 20, (1 << 20) + 5, 0]
    assert b"".join(blocks) == data


class _Descriptor:
    """An open descriptor as a file object, for what Python will not open as one (a folder)."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY)

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        os.close(self.fd)


def test_a_child_that_cannot_read_says_why_with_its_errno(tmp_path):
    """cat's error comes back as the OSError it was (EISDIR here), not as an early end."""
    with ChildRead(_Descriptor(tmp_path)) as stream, pytest.raises(OSError) as raised:  # type: ignore[arg-type]
        stream.read(4 << 20)
    assert raised.value.errno == errno.EISDIR and raised.value.strerror == "Is a directory"


def test_a_child_writes_a_local_file_larger_than_its_pipe_whole_and_renamed_into_place(tmp_path):
    """background.child_write fed from a local file (9 MiB, many times its pipe): the file at
    dest is the source's, and no temporary name is left beside it."""
    data = os.urandom((9 << 20) + 5)
    (tmp_path / "model.onnx").write_bytes(data)
    dest = tmp_path / "drive" / "models" / "model.onnx"
    child_write(5, part_name(dest), dest, tmp_path / "model.onnx")
    assert dest.read_bytes() == data and os.listdir(dest.parent) == ["model.onnx"]


def test_a_child_write_whose_local_source_fails_leaves_nothing_at_dest(tmp_path):
    """A source that cannot be read (a folder here; a local disk failing, an interrupt alike):
    the child is ended before its input closes, which would have renamed what it had (nothing
    here: an empty file) into place, and what it wrote under its temporary name is removed."""
    dest = tmp_path / "drive" / "model.onnx"
    with pytest.raises(IsADirectoryError):
        child_write(5, part_name(dest), dest, tmp_path)
    time.sleep(0.5)  # what a child left running would have done by now
    assert not dest.parent.exists() or os.listdir(dest.parent) == []


# -- one declaration of the command line ----------------------------------------------------

def test_the_bootstrap_task_takes_exactly_the_declared_options():
    params = list(inspect.signature(commands.bootstrap.body).parameters)[1:]
    assert set(params) - {"json"} == {f.replace("-", "_") for f in Options.flags()}


def test_no_task_has_automatic_short_flags():
    for name, task in commands.namespace.tasks.items():
        assert task.auto_shortflags is False, name


def test_warmstart_sh_parses_its_command_line_against_the_declaration():
    given = parse_command_line(["hyperlpr", "--drive", "/d", "--offline", "--json"])
    assert (given.recipe, given.drive, given.offline, given.json, given.wait) == ("hyperlpr", "/d", True, True, False)
    assert parse_command_line(["hyperlpr", "--drive=/e"]).drive == "/e"
    with pytest.raises(SystemExit) as refused:
        parse_command_line(["hyperlpr", "--ofline"])  # a typo: exit 2 before anything is set up
    assert refused.value.code == 2


# --- patches: the strict applier (warmstart/patches.py) --------------------------------------

def _patch(tmp_path, old: str, new: str, name: str = "pkg/m.py"):
    """GNU diff's unified diff of two texts (it marks a last line without a newline; difflib does not)."""
    from warmstart.patches import load_patch

    (tmp_path / "old").write_text(old)
    (tmp_path / "new").write_text(new)
    made = subprocess.run(["diff", "-u", "--label", f"a/{name}", "--label", f"b/{name}", "old", "new"],
                          cwd=tmp_path, capture_output=True, text=True)
    (tmp_path / "p.diff").write_text(made.stdout)
    return load_patch("pkg", tmp_path / "p.diff", "p.diff").files[0]


@pytest.mark.parametrize(("old", "new"), [
    ("a\nb\nc\n", "a\nB\nc\n"),
    ("a\nb\nc", "a\nb\nc\nd"),  # no newline at the end, before and after
    ("a\nb\n", "a\nb"),  # the newline at the end goes
    ("", "first\n"),  # into an empty file
    ("x\x0cy\nz\n", "x\x0cy\nZ\n"),  # a form feed is no line end
    ("".join(f"{n}\n" for n in range(40)), "".join(f"{n}\n" for n in range(40)).replace("3\n", "three\n")
     .replace("30\n", "thirty\n")),  # two hunks
])
def test_a_diff_applies_exactly_and_only_to_the_file_it_was_made_for(tmp_path, old, new):
    from warmstart.patches import apply

    diff = _patch(tmp_path, old, new)
    assert apply(old, diff) == new
    assert apply(new, diff) is None or old == new
    assert apply("zero\n" + old, diff) is None, "no offset: a hunk applies at its own lines only"


def test_drift_says_how_far_the_vm_is_from_the_image_its_lock_was_made_for():
    image = images_of("colab", PROJECT_ROOT / "envs")["colab-2026.07"]
    numpy = canonicalize_name("numpy")
    vm = {**image.shipped, numpy: "9.9.9"}
    del vm[canonicalize_name("pandas")]  # absent counts as different too
    vm[canonicalize_name("torch")] = image.shipped[canonicalize_name("torch")]  # +cu128 and all: the same

    found = drift(image, vm, Version("3.12.2"), {numpy, canonicalize_name("requests")})

    assert found.closure == (numpy,) and len(found.differing) == 2
    assert found.describe() == (
        f"this runtime differs from colab-2026.07 in 2 of {len(image.shipped)} distributions; 1 of them in this "
        f"recipe's closure: numpy 9.9.9 (image {image.shipped[numpy]}); Python 3.12.2 (image {image.python})")
    assert found.as_json()["closure"] == {"numpy": {"image": image.shipped[numpy], "installed": "9.9.9"}}
    same = drift(image, dict(image.shipped), image.python, {numpy})
    assert same.describe() == "this runtime matches colab-2026.07" and same.as_json()["python"] is None


def test_keep_runtime_refuses_a_plan_that_replaces_what_the_environment_has():
    """A version change to what the VM already has is listed in the plan; --keep-runtime refuses
    it instead, naming each change (exit 3)."""
    plan = make_plan(facts({"alpha": "0.9"}), ONLINE)
    assert plan.replaced == {"alpha": ("0.9", "1.0")}
    assert "  replaces alpha 0.9 with 1.0" in plan.describe()
    with pytest.raises(PreconditionUnmet, match=r"--keep-runtime, but .* would replace 1 of what .* has: alpha 0.9 -> 1.0"):
        make_plan(facts({"alpha": "0.9"}), replace(ONLINE, keep_runtime=True))
    assert make_plan(facts({}), replace(ONLINE, keep_runtime=True)).to_install, "adding is fine"


def test_the_probe_reads_the_same_distributions_as_importlib_metadata_from_their_headers(tmp_path):
    """distinfo reads Name and Version from the metadata headers only; on every shape of
    distribution a sys.path holds, it must find what importlib.metadata finds, in the same
    order of precedence, with the target's own interpreter (the probe is its text)."""
    from importlib import metadata

    from warmstart import distinfo, target

    first, second = tmp_path / "first", tmp_path / "second"
    description = "\n\nA long description with a line\nVersion: 9.9 that is not a header\n" + "x" * 20000

    def dist(folder: Path, name: str, meta: str, version: str, text: str = "") -> None:
        path = folder / name
        if name.endswith(".egg-info") and meta == "":  # an .egg-info file, not a folder
            folder.mkdir(exist_ok=True)
            path.write_text(f"Metadata-Version: 1.1\nName: {name.split('-')[0]}\nVersion: {version}\n{text}")
            return
        path.mkdir(parents=True)
        (path / meta).write_text(f"Metadata-Version: 2.1\nName: {name.split('-')[0]}\nVersion: {version}\n{text}",
                                 encoding="utf-8")

    dist(first, "Zeta_Pkg-2.0.dist-info", "METADATA", "2.0", description)
    dist(first, "older-1.0.egg-info", "PKG-INFO", "1.0")
    dist(first, "flat-3.1.egg-info", "", "3.1")
    dist(first, "unicode-1.0.dist-info", "METADATA", "1.0", "Summary: ünïcödé ☃\n")
    (first / "half-1.0.dist-info").mkdir()  # killed mid-install: no METADATA
    dist(second, "Zeta_Pkg-1.0.dist-info", "METADATA", "1.0")  # shadowed by the first
    path = [str(first), str(second), str(tmp_path / "missing"), str(tmp_path / "x.zip")]

    expected = {}
    for found in metadata.distributions(path=path):
        if name := found.metadata.get("Name"):  # not ["Name"]: None for a missing key is deprecated (3.13)
            expected.setdefault(canonicalize_name(name), found.version)
    probed = {}
    for name, version, _ in distinfo.distributions(path):
        probed.setdefault(canonicalize_name(name), version)

    assert probed == expected == {"zeta-pkg": "2.0", "older": "1.0", "flat": "3.1", "unicode": "1.0"}
    # The probe runs distinfo's text in the target: an old Python and Colab's (pyenv, present on
    # every machine of this kind) answer as their own importlib.metadata does.
    from standin import pyenv_python

    pythons = [p for p in map(pyenv_python, ("3.8", "3.12")) if p]
    assert pythons, "no pyenv Python 3.8 or 3.12 to probe"
    ask = ("import json; from importlib import metadata; found = {}\n"
           "for d in metadata.distributions():\n    found.setdefault(d.metadata['Name'], d.version)\n"
           "print(json.dumps(found))")
    for python in pythons:
        own = json.loads(subprocess.run([str(python), "-c", ask], capture_output=True, text=True, cwd=tmp_path,
                                        check=True).stdout)
        probe = target.probe(python)
        assert probe.installed == {canonicalize_name(k): v for k, v in own.items() if k}, python
        assert target.installed_now(probe) == probe.installed


def test_kernel_imports_asked_one_name_at_a_time_agree_with_the_whole_mapping():
    """warmstart.colab.KernelImports looks up only the distributions a run replaces; for every
    distribution of this environment it must answer as importlib.metadata's whole module ->
    distribution mapping does."""
    from importlib import metadata

    from warmstart.colab import KernelImports

    imports = KernelImports()
    owners = metadata.packages_distributions()
    whole = {canonicalize_name(dist) for module in imports.modules for dist in owners.get(module, ())}
    names = {canonicalize_name(name) for d in metadata.distributions() if (name := d.metadata.get("Name"))}
    assert whole, "this process imported modules of installed distributions (pytest, packaging)"
    assert {name for name in names if name in imports} == whole


def test_a_snapshot_holds_its_small_files_first_and_its_big_ones_last(tmp_path):
    """Small files (what costs the disk most per byte) while a slow Drive is still reading the
    big ones. Big files are sparse here: only their sizes matter."""
    sizes = {"b/big": 9 << 20, "a/biggest": 30 << 20, "c/small": 10, "a/small": 5 << 20, "z/mid": 20 << 20}
    for name, size in sizes.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        with open(tmp_path / name, "wb") as fh:
            fh.truncate(size)
    order = snapshot._in_restore_order({tmp_path / name for name in sizes})
    assert [str(p.relative_to(tmp_path)) for p in order] == ["a/small", "c/small", "a/biggest", "b/big", "z/mid"]


def test_work_started_on_a_thread_hands_on_its_result_and_its_exception():
    """bootstrap.prepare probes the GPU on a thread while the target Python answers: what the
    probe returns, or raises, reaches the step that asks for it."""
    from warmstart.background import started

    assert started(lambda: 42).result(timeout=10) == 42

    def fails() -> None:
        raise PreconditionUnmet("no driver")

    with pytest.raises(PreconditionUnmet, match="no driver"):
        started(fails).result(timeout=10)


def test_the_probe_begun_before_the_plan_answers_it_once_and_a_forgotten_one_is_asked_anew(tmp_path):
    """The bootstrap task begins the target's probe before it imports the rest of warmstart
    (target.begin_probe); the plan's probe takes that answer, once. Forgotten (another run held
    the target meanwhile), the plan asks the interpreter again."""
    from warmstart import target

    python = make_venv(tmp_path / "venv")
    site = next((tmp_path / "venv" / "lib").glob("python*/site-packages"))

    def install_later(name: str) -> None:
        (site / f"{name}-1.0.dist-info").mkdir()
        (site / f"{name}-1.0.dist-info" / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")

    target.begin_probe(python)
    assert target._begun is not None
    target._begun.child.wait()  # its answer is in: what is installed after is not in it
    install_later("late")
    assert "late" not in target.probe(python).installed  # the begun answer
    assert "late" in target.probe(python).installed  # used up: asked anew

    target.begin_probe(python)
    target._begun.child.wait()
    install_later("later")
    target.forget_begun()
    assert "later" in target.probe(python).installed

    target.begin_probe(sys.executable)  # another interpreter's answer is not this one's
    assert target.probe(python).executable == python
    assert target._begun is not None  # left for its own interpreter
    target.forget_begun()
    assert target._begun is None


def test_a_target_that_does_not_answer_is_given_up_on_once(tmp_path, monkeypatch):
    """A target Python that says nothing (an interpreter on a Drive that stopped answering) is
    given up on after ANSWER_WAIT, once: not asked again by the run's own probe (which doubled
    the wait), nor for its version; the line says how long it was given."""
    from warmstart import target

    started = tmp_path / "started"
    hung = tmp_path / "python"
    hung.write_text(f"#!/bin/sh\necho >> {started}\nexec sleep 60\n")
    hung.chmod(0o755)
    monkeypatch.setattr(target, "ANSWER_WAIT", 0.5)
    said = f"cannot run the target Python {hung}: it did not answer within 0.5 s; pass --python"

    target.begin_probe(hung)
    with pytest.raises(target.Unanswered, match=said):
        target.real_prefix(hung)  # not a virtualenv: asks the begun probe
    with pytest.raises(target.Unanswered, match=said):
        target.probe(hung)
    assert started.read_text().count("\n") == 1

    started.unlink()
    with pytest.raises(target.Unanswered, match=said):
        target.probe(hung)  # none begun
    assert started.read_text().count("\n") == 1


def test_a_target_that_does_not_answer_is_ended_with_what_it_started(tmp_path, monkeypatch):
    """A launcher script whose interpreter hangs (a wrapper that runs python3 as its child): given
    up on, the script was killed, and the interpreter it started ran on after the run ended."""
    from warmstart import target

    pids = tmp_path / "pids"
    hung = tmp_path / "python"
    hung.write_text(f"#!/bin/sh\nsleep 60 &\necho $! >> {pids}\nwait\n")
    hung.chmod(0o755)
    monkeypatch.setattr(target, "ANSWER_WAIT", 0.5)

    target.begin_probe(hung)  # the launcher's probe, begun before the run asks
    with pytest.raises(target.Unanswered):
        target.probe(hung)
    with pytest.raises(target.Unanswered):
        target.probe(hung)  # the run's own, none begun
    target.forget_begun()

    started = [int(pid) for pid in pids.read_text().split()]
    assert len(started) == 2
    wait_until(lambda: not any(process_running(pid) for pid in started), 10,
               lambda: f"still running: {[pid for pid in started if process_running(pid)]}")


# --- data files read ahead ------------------------------------------------------------------------

def test_data_files_read_ahead_are_served_once_each_and_fail_as_a_read_then_would(tmp_path):
    """config.read_ahead: a file read ahead is served from memory, however often it is asked for;
    one it did not read is read when asked; a missing one fails as its own read would (the same
    BadInput line); forget_ahead drops it all, so a file changed since is read anew."""
    from warmstart import config

    (tmp_path / "envs").mkdir()
    (tmp_path / "envs" / "a.toml").write_text('name = "a"\n')
    (tmp_path / "envs" / "b.toml").write_text('name = "b"\n')
    (tmp_path / "c.txt").write_bytes(b"one\r\ntwo\r\n")
    missing = tmp_path / "recipes" / "gone.toml"
    with pytest.raises(BadInput) as unread:
        config.read_toml(missing)
    try:
        config.read_ahead(tmp_path, ["c.txt", "recipes/gone.toml"], ["envs/*.toml"])
        assert config.read_toml(tmp_path / "envs" / "a.toml") == {"name": "a"}
        (tmp_path / "envs" / "a.toml").write_text("changed\n")
        assert config.read_toml(tmp_path / "envs" / "a.toml") == {"name": "a"}, "served again, not read again"
        assert config.read_bytes(tmp_path / "envs" / "b.toml") == b'name = "b"\n'
        assert config.file_text(tmp_path / "c.txt") == "one\ntwo\n", "as read_text reads it"
        with pytest.raises(BadInput) as ahead:
            config.read_toml(missing)
        assert str(ahead.value) == str(unread.value) == f"{missing}: file not found"
        (tmp_path / "d.txt").write_text("not read ahead\n")
        assert config.read_bytes(tmp_path / "d.txt") == b"not read ahead\n"
    finally:
        config.forget_ahead()
    assert config.read_bytes(tmp_path / "envs" / "a.toml") == b"changed\n", "forgotten: read anew"


def test_a_relative_xdg_cache_home_is_ignored_as_the_spec_says(tmp_path):
    """XDG_CACHE_HOME=relative made warmstart's own folder (logs, locks, tools) a folder of
    whatever the working directory was. The real CLI, run from an empty folder: its folder is
    under HOME, and nothing is made where it ran."""
    here, home_dir = tmp_path / "cwd", tmp_path / "home"
    here.mkdir()
    env = cli_env() | {"XDG_CACHE_HOME": "relative", "HOME": str(home_dir)}

    result = run_cli("cache", "--drive", str(tmp_path), env=env, cwd=here)

    assert result.code == 0, result.stderr
    assert list(here.iterdir()) == []
    assert (home_dir / ".cache" / "warmstart").is_dir()


def test_a_copy_with_a_limit_reads_no_more_than_one_byte_past_it():
    """A store's file that grew past the size it listed is read to that size and one byte more:
    its hash then fails, and a file of any size never fills the disk."""
    import hashlib
    import io

    data = os.urandom(3 * (1 << 20) + 7)
    out = io.BytesIO()
    assert copy_hashed(io.BytesIO(data), out, limit=1 << 20) == (hashlib.sha256(data[:(1 << 20) + 1]).hexdigest(),
                                                                (1 << 20) + 1)
    whole = io.BytesIO()
    assert copy_hashed(io.BytesIO(data), whole, limit=len(data)) == (hashlib.sha256(data).hexdigest(), len(data))
    assert whole.getvalue() == data


def test_an_error_is_said_as_drives_only_when_its_file_lies_on_drive():
    """ENOSPC on Drive means its quota; on the local disk (a job file, a staged copy), it must
    not send the user to free Drive: said as it is, with the file."""
    import errno as errnos

    from warmstart.disks import explain

    def full(filename: str | None) -> OSError:
        return OSError(errnos.ENOSPC, "No space left on device", filename)

    drive = "/content/drive/MyDrive"
    on_drive = "Drive is full (on Colab: the Google Drive storage quota is used up) [OSError 28]"
    assert explain(full(f"{drive}/.warmstart/v1/wheels/.a.whl.x.part"), drive) == on_drive
    assert explain(full(None), drive) == on_drive  # a write through a descriptor names no file
    assert explain(full("/root/.cache/warmstart/drivework/k/j/job.json.x.part"), drive) == (
        "/root/.cache/warmstart/drivework/k/j/job.json.x.part: No space left on device [OSError 28]")
    assert explain(full("/content/drive/MyDrive2/x"), drive).startswith("/content/drive/MyDrive2/x: No space")
    # a line of warmstart's own, raised as OSError(line) (a Drive write that failed, said already): as it is,
    # not "line [OSError None]"
    assert explain(OSError("wheel a.whl not cached on Drive: Drive is full [OSError 28]"), drive) == (
        "wheel a.whl not cached on Drive: Drive is full [OSError 28]")


@needs_mountns
@pytest.mark.parametrize("size", [6000, 1 << 20], ids=["at-the-flush", "past-the-buffer"])
def test_an_atomic_write_on_a_full_disk_names_the_file_it_failed_on(tmp_path, size):
    """A full disk says so when the written file is flushed, or at a write larger than the
    buffer, neither of which names a file: the error names the temporary file, so that whoever
    reports it can say which disk is full (Drive's quota, or the local disk: see explain). The
    disk: a real 4 KiB tmpfs (ENOSPC)."""
    small = tmp_path / "small"
    small.mkdir()
    write = ("import sys\nfrom pathlib import Path\nfrom warmstart.transfer import atomic_write_text\n"
             f"try:\n    atomic_write_text(Path(sys.argv[1]), 'x' * {size})\n"
             "except OSError as exc:\n    print(exc.errno, Path(exc.filename).parent, Path(exc.filename).name[:6])\n")

    done = subprocess.run(on_a_small_disk(small, [sys.executable, "-c", write, str(small / "job.json")]),
                          capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))

    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["28", str(small), ".job.j"]
    assert sorted(p.name for p in small.iterdir()) == []


@pytest.mark.parametrize(("argv0", "cwd", "expected"), [
    ("invoke", "checkout", ["invoke"]),
    ("/nowhere/bin/invoke", "checkout/warmstart", ["/nowhere/bin/invoke"]),  # invoke searches upward
    ("/nowhere/bin/invoke", "elsewhere", ["/nowhere/bin/invoke", "--search-root", str(PROJECT_ROOT)]),
    ("inv", "elsewhere, with tasks of its own", ["inv", "--search-root", str(PROJECT_ROOT)]),
    ("warmstart", "elsewhere", ["warmstart"]),  # the installed command has its tasks built in
    # python -m invoke, whose script may not be on PATH: the interpreter as typed, and the search root
    ("/lib/python3/site-packages/invoke/__main__.py", "checkout, typed as python3", ["python3", "-m", "invoke"]),
    ("/lib/python3/site-packages/invoke/__main__.py", "elsewhere, typed as /nowhere/bin/python",
     ["/nowhere/bin/python", "-m", "invoke", "--search-root", str(PROJECT_ROOT)]),
    # warmstart.sh's launcher (python -m invoke, its own search root), as it says it was run
    ("/lib/python3/site-packages/invoke/__main__.py", "elsewhere, launched as /t/tools/invoke", ["/t/tools/invoke"]),
    ("-c", "elsewhere, launched as /t/tools/invoke", ["/t/tools/invoke"]),  # a bootstrap line: warmstart.launch
    ("/nowhere/bin/warmstart", "elsewhere", ["/nowhere/bin/warmstart"]),
    # python -m warmstart, the interpreter as typed (python3 by its name, this one by its path)
    ("/lib/python3/site-packages/warmstart/__main__.py", "elsewhere, typed as python3",
     ["python3", "-m", "warmstart"]),
    ("/lib/python3/site-packages/warmstart/__main__.py", "elsewhere, typed as /nowhere/bin/python",
     ["/nowhere/bin/python", "-m", "warmstart"]),
], ids=["on-path", "by-path-below", "by-path-elsewhere", "other-tasks", "installed", "python-m-invoke",
        "python-m-invoke-elsewhere", "launcher", "launcher-bootstrap", "installed-by-path", "python-m-warmstart", "python-m-warmstart-by-path"])
def test_a_printed_command_is_typed_as_the_users_and_finds_this_checkout(argv0, cwd, expected, tmp_path):
    folder = {"checkout": PROJECT_ROOT, "checkout/warmstart": PROJECT_ROOT / "warmstart"}.get(cwd.split(",")[0], tmp_path)
    if "tasks of its own" in cwd:
        (tmp_path / "tasks.py").write_text("")
    launched = {"WARMSTART_LAUNCHER": cwd.split("launched as ")[1]} if "launched as" in cwd else {}
    typed = cwd.split("typed as ")[1] if "typed as" in cwd else None
    assert invoked_as(argv0, folder, launched, typed) == expected


@pytest.mark.parametrize("module", [["warmstart"], ["invoke", "--search-root", str(PROJECT_ROOT)]],
                         ids=["warmstart", "invoke"])
def test_python_m_is_the_command_and_prints_commands_that_work_pasted(tmp_path, module):
    """`python -m warmstart` (or `python -m invoke` outside the checkout), where their scripts are
    not on PATH: the same tasks, and a command it prints is `python -m ...` with this
    interpreter, run here as printed."""
    env = cli_env(PATH=os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                       if not (Path(p) / "invoke").exists()))
    shown = subprocess.run([sys.executable, "-m", *module, "bootstrap", "--drive", str(tmp_path)],
                           capture_output=True, text=True, cwd=tmp_path, env=env)

    assert shown.returncode == 2, shown.stderr
    printed = shown.stderr.split("(see `")[1].split("`")[0]
    python, *rest = shlex.split(printed)
    assert rest == ["-m", *module, "recipes"] and Path(shutil.which(python, path=env["PATH"]) or python).samefile(
        sys.executable)
    pasted = subprocess.run(printed, shell=True, capture_output=True, text=True, cwd=tmp_path, env=env)
    assert pasted.returncode == 0 and "hyperlpr" in pasted.stdout, pasted.stderr


# Where each command waits for the interrupt: the bootstrap as it imports the rest of warmstart,
# before its report begins; another line as invoke's program is imported (warmstart.launch).
_INTERRUPTED_AT = {
    "bootstrap": "from warmstart import early\nearly.begin = lambda *args: ready()\n",
    "status": "launch._tasks = ready\n",
}


@pytest.mark.parametrize("line", ["bootstrap", "bootstrap --json", "status"])
@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_command_interrupted_before_its_run_began_ends_as_an_interrupted_run(tmp_path, how, line):
    """Ctrl-C or SIGTERM in the command's first tenth of a second (the bootstrap's imports, which
    come before its report, or invoke's for another line): one line, exit 130 (and the --json
    report), as later in the run; not a traceback (Ctrl-C) nor death by the signal (SIGTERM). The
    `warmstart` console script in a child, waiting at that point for the signal."""
    code, out, err = interrupted_before_the_run(tmp_path, how, line)

    assert (code, err) == (130, "warmstart: error: interrupted\n"), (code, err)
    if "--json" in line:
        report = json.loads(out)
        assert (report["exit_code"], report["error"], report["recipe"]) == (130, "interrupted", "demo")
    else:
        assert out == ""


def test_an_interrupt_before_the_run_began_in_a_folder_that_is_gone_is_an_interrupt(tmp_path):
    """The run's report of an interrupt needs no working folder: it is not "the current folder no
    longer exists" (which every other run there is), exit 3."""
    code, out, err = interrupted_before_the_run(tmp_path, signal.SIGINT, "bootstrap --json", removed=tmp_path / "gone")

    assert (code, err, json.loads(out)["exit_code"]) == (130, "warmstart: error: interrupted\n", 130)


def interrupted_before_the_run(tmp_path: Path, how: signal.Signals, line: str,
                               removed: Path | None = None) -> tuple[int, str, str]:
    """The `warmstart` console script running `line` in a child (in the folder `removed`, once it
    is removed), sent `how` where it waits before its run's report begins: its exit code, stdout
    and stderr."""
    ready_file = tmp_path / "ready"
    probe = ("import sys, time\n"
             "from warmstart import launch\n"
             f"def ready(*args):\n    open({str(ready_file)!r}, 'w').close()\n    {WAIT_FOR_A_SIGNAL}\n"
             + _INTERRUPTED_AT[line.split()[0]]
             + f"sys.argv = ['warmstart', *{line.split()!r}, '--recipe', 'demo', '--drive', {str(tmp_path)!r}]\n"
             "launch.console()\n")
    # -P: no working folder on sys.path, as for the console script it stands in for (whose own
    # folder is there): with one, Python 3.13.0 to 3.13.2 fail an import in a folder removed since
    # (CPython gh-130932).
    command = [sys.executable, "-P", "-c", probe]
    if removed is not None:
        command = in_a_removed_folder(removed, command)
    env = cli_env(XDG_CACHE_HOME=str(tmp_path / "cache"), PYTHONPATH=str(REPO))
    run = subprocess.Popen(with_ctrl_c(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                           env=env)
    try:
        wait_until(ready_file.exists, 60, lambda: f"never reached the point: {run.communicate(timeout=5)}")
        run.send_signal(how)
        out, err = run.communicate(timeout=30)
    finally:
        run.kill()
    return run.returncode, out, err


def test_an_interrupt_held_comes_once_the_work_is_done_a_second_at_once_an_ignored_one_not_at_all():
    """errors.interrupts_held, around the renames of a restored tree: an interrupt that comes
    while they run is delivered once they are all done; a second one at once; one the process
    ignores stays ignored, however often it comes. A child process, signalling itself."""
    probe = ("import json, os, signal\nfrom warmstart.errors import interrupts_held\n"
             "for signum in (signal.SIGINT, signal.SIGTERM):  # as in a run (CI may start this with SIGINT ignored)\n"
             "    signal.signal(signum, signal.default_int_handler)\n"
             "seen = {}\n"
             "for case, signals in (('one', [signal.SIGTERM]), ('two', [signal.SIGINT, signal.SIGTERM])):\n"
             "    done = []\n"
             "    try:\n"
             "        with interrupts_held():\n"
             "            for signum in signals:\n"
             "                os.kill(os.getpid(), signum)\n"
             "                done.append(int(signum))\n"
             "    except KeyboardInterrupt:\n"
             "        seen[case] = done\n"
             "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
             "with interrupts_held():\n"
             "    os.kill(os.getpid(), signal.SIGINT)\n"
             "    os.kill(os.getpid(), signal.SIGINT)\n"
             "seen['ignored, still'] = signal.getsignal(signal.SIGINT) == signal.SIG_IGN\n"
             "print(json.dumps(seen))\n")

    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=60)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"one": [int(signal.SIGTERM)], "two": [int(signal.SIGINT)],
                                       "ignored, still": True}


def test_the_bootstrap_task_runs_with_the_collector_on_and_its_imports_frozen(tmp_path):
    """warmstart.launch turns the collector off while it imports the task, then freezes what the
    imports made and turns it back on: the run itself must never go without it (a restore makes
    cycles, and a long one would only grow). A child process, its task body a stand-in."""
    probe = ("import gc, json, sys\n"
             "from warmstart import bootstrap, launch\n"
             "seen = {}\n"
             "def body(options, root, report):\n"
             "    seen.update(enabled=gc.isenabled(), frozen=gc.get_freeze_count())\n"
             "bootstrap.bootstrap = body\n"
             "code = launch.run_bootstrap({'recipe': 'demo'}, launch.PROJECT_ROOT, as_json=True)\n"
             "print(json.dumps({**seen, 'code': code, 'after': gc.isenabled()}))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO,
                          env=cli_env(XDG_CACHE_HOME=str(tmp_path / "cache")))
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["code"] == 0 and seen["enabled"] is True and seen["after"] is True, seen
    assert seen["frozen"] > 1000, "what the imports made is frozen"


def test_an_installer_a_signal_ends_is_said_killed_by_it_not_by_a_negative_exit():
    """uv or pip ended by the OOM killer said "failed to install (exit -9)". A real child, ended so."""
    with pytest.raises(WarmstartError, match=r"^uv failed to install \(killed by SIGKILL, most often for want of "
                                             r"memory\)$"):
        run_installer([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], dict(os.environ),
             "uv", "install")
    with pytest.raises(WarmstartError, match=r"^pip failed to install \(exit 3\)$"):
        run_installer([sys.executable, "-c", "raise SystemExit(3)"], dict(os.environ), "pip", "install")


def test_pip_confs_index_settings_the_environment_lacks_are_named_with_the_variables_that_give_them(
        tmp_path, monkeypatch):
    """warmstart reads no pip.conf (nor does uv); a mirror or CA bundle named there alone was never
    asked for, and the line for an index out of reach said nothing of it. The machine's
    /etc/pip.conf stands aside here: this test cannot write its own there."""
    monkeypatch.setattr(pipconfig, "SYSTEM_PIP_CONF", tmp_path / "etc-pip.conf")
    home = tmp_path / "home"
    (home / ".config" / "pip").mkdir(parents=True)
    (home / ".config" / "pip" / "pip.conf").write_text(
        "[global]\nindex-url = https://mirror.example/simple\ntimeout = 60\n[install]\n"
        "trusted_host =\n    mirror.example\n    other.example\n")
    (tmp_path / "given.conf").write_text("[download]\ncert = /etc/corp-ca.pem\n")
    environ = {"HOME": str(home), "PIP_CONFIG_FILE": str(tmp_path / "given.conf")}

    assert pipconfig.pip_conf_unread(environ) == (
        f"; pip's configuration ({home}/.config/pip/pip.conf, {tmp_path}/given.conf) sets index-url, trusted-host, "
        "cert, which warmstart does not read: give them as PIP_INDEX_URL, PIP_TRUSTED_HOST, PIP_CERT")
    # what the environment gives is read: only the rest is named
    assert pipconfig.pip_conf_unread({**environ, "PIP_INDEX_URL": "https://pypi.org/simple", "PIP_CERT": "x"}) == (
        f"; pip's configuration ({home}/.config/pip/pip.conf) sets trusted-host, which warmstart does not read: "
        "give it as PIP_TRUSTED_HOST")
    # os.devnull as the file: pip reads none, and there is nothing to say; nor of a file pip cannot read
    assert pipconfig.pip_conf_unread({**environ, "PIP_CONFIG_FILE": os.devnull}) == ""
    (home / ".config" / "pip" / "pip.conf").write_text("index-url = no section\n")
    assert pipconfig.pip_conf_unread({"HOME": str(home)}) == ""


@pytest.mark.parametrize(("usable", "host", "at_once"), [({0, 1, 2}, 64, 3), ({5}, 64, 2), (set(range(16)), 16, 16)])
def test_checks_run_a_cpu_each_of_those_the_process_may_use(monkeypatch, usable, host, at_once):
    """A container pinned to 3 of a 64-CPU host's CPUs (a cpuset) runs 3 checks at once, not 64:
    os.cpu_count() is the host's. This machine has 2 CPUs, so the cpuset is stood in for."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: usable)
    monkeypatch.setattr(os, "cpu_count", lambda: host)
    assert checks.checks_at_once() == at_once
