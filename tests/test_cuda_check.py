"""The CUDA check of `invoke lock`, on real ELF files: gcc builds a stand-in `libcudart.so.13` and
an extension linked against it, both packed into wheels served from a PEP 503 index on 127.0.0.1;
the real `invoke lock` downloads them, reads them with pyelftools and judges the lock against
the platforms it serves (docker: CUDA 12.8, envs/images/cuda-12.8.txt)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import build_wheel, cli_env, run_cli, serve_folder, write_simple_index

from warmstart.cudalibs import read_wheel
from warmstart.lock import existing_locks, parse_lock
from warmstart.recipe import load_recipe

pytestmark = pytest.mark.skipif(not shutil.which("gcc"), reason="gcc builds the shared objects")
TAG = "py3-none-manylinux_2_17_x86_64"


def compile_so(out: Path, source: str, soname: str | None = None, link: Path | None = None) -> bytes:
    c = out.with_suffix(".c")
    c.write_text(source)
    cmd = ["gcc", "-shared", "-fPIC", "-o", str(out), str(c)]
    if soname:
        cmd.append(f"-Wl,-soname,{soname}")
    if link:  # DT_NEEDED names the linked library's soname, as a real CUDA extension's does
        cmd += [f"-L{link.parent}", f"-l:{link.name}"]
    subprocess.run(cmd, check=True)
    return out.read_bytes()


@pytest.fixture(scope="module")
def cuda_index(tmp_path_factory):
    """gpu-ext needs libcudart.so.13; gpu-ext-bundled also depends on cuda-rt13, which brings it."""
    root = tmp_path_factory.mktemp("cuda-index")
    build = root / "build"
    build.mkdir()
    (root / "files").mkdir()
    cudart = compile_so(build / "libcudart.so.13", "int cudaRuntimeGetVersion(int *v) { *v = 13000; return 0; }\n",
                        soname="libcudart.so.13")
    ext = compile_so(build / "libgpu_ext.so",
                     "int cudaRuntimeGetVersion(int *v);\nint ext(void) { int v; cudaRuntimeGetVersion(&v); return v; }\n",
                     link=build / "libcudart.so.13")
    build_wheel(root / "files", "gpu-ext", "1.0", extra={"gpu_ext/libgpu_ext.so": ext}, tag=TAG)
    build_wheel(root / "files", "gpu-ext-bundled", "1.0", ("cuda-rt13",),
                extra={"gpu_ext_bundled/libgpu_ext.so": ext}, tag=TAG)
    build_wheel(root / "files", "cuda-rt13", "13.0", extra={"nvidia/cu13/lib/libcudart.so.13": cudart}, tag=TAG)
    build_wheel(root / "files", "plain", "1.0")
    write_simple_index(root)
    url, server = serve_folder(root)
    yield f"{url}/simple", root / "files"
    server.shutdown()


def project(tmp_path: Path, requirements: str, min_cuda: str) -> Path:
    (tmp_path / "recipes").mkdir()
    (tmp_path / "requirements").mkdir()
    (tmp_path / "requirements" / "gpu.in").write_text(requirements)
    recipe = tmp_path / "recipes" / "gpu.toml"
    recipe.write_text(f'name = "gpu"\n[gpu]\nrequired = true\nmin_cuda = "{min_cuda}"\n'
                      '[requirements]\nin = "requirements/gpu.in"\n')
    return recipe


def test_read_wheel_finds_needed_and_provided_cuda_sonames(cuda_index):
    _url, files = cuda_index
    assert read_wheel(next(files.glob("gpu_ext-*.whl"))) == ({"libcudart.so.13"}, frozenset())
    assert read_wheel(next(files.glob("cuda_rt13-*.whl"))) == (frozenset(), {"libcudart.so.13"})
    assert read_wheel(next(files.glob("plain-*.whl"))) == (frozenset(), frozenset())


def test_a_wheel_needing_cuda_13_is_refused_on_a_cuda_12_platform(cuda_index, tmp_path):
    url, _files = cuda_index
    recipe = project(tmp_path, "gpu-ext\nplain\n", min_cuda="12.0")

    result = run_cli("lock", "--recipe", str(recipe), env=cli_env(url))

    assert result.code == 2, result.stderr
    assert "gpu-ext==1.0 needs libcudart.so.13, which neither the docker platform" in result.stderr
    assert 'min_cuda is 12.0 but gpu-ext==1.0 needs libcudart.so.13 (CUDA 13); set min_cuda = "13.0"' in result.stderr
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "requirements").glob("gpu-py*.txt")), "a refused lock is not written"


def test_runtime_wheels_in_the_lock_make_it_loadable_and_check_reads_the_record(cuda_index, tmp_path):
    url, _files = cuda_index
    recipe = project(tmp_path, "gpu-ext-bundled\n", min_cuda="13.0")

    result = run_cli("lock", "--recipe", str(recipe), env=cli_env(url))

    assert result.code == 0, result.stderr
    (path,) = existing_locks(load_recipe(str(recipe), tmp_path))
    recorded = parse_lock(path).wheels
    assert recorded["gpu-ext-bundled"].needs == {"libcudart.so.13"}
    assert recorded["cuda-rt13"].provides == {"libcudart.so.13"}
    # --check judges from the record alone: no index needed.
    assert run_cli("lock", "--check", "--recipe", str(recipe), env=cli_env()).code == 0

    # A recipe that lowers min_cuda below what its recorded wheels need fails the check.
    recipe.write_text(recipe.read_text().replace('min_cuda = "13.0"', 'min_cuda = "12.0"'))
    checked = run_cli("lock", "--check", "--recipe", str(recipe), env=cli_env())
    assert checked.code == 1
    assert 'set min_cuda = "13.0"' in checked.stderr
