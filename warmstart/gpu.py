"""What GPUs this machine has, through NVML (`nvidia-ml-py`), and whether they fit a recipe.

pynvml loads `libnvidia-ml.so.1` by bare name, so the library search path at process start
decides which library is used; no NVIDIA driver at all is the usual case on a CPU runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

from packaging.version import Version

from .recipe import GpuNeeds

COLAB_HINT = (
    "on Colab choose Runtime > Change runtime type > a GPU accelerator (e.g. T4), "
    "then run the notebook again"
)


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_gib: float
    compute_capability: Version


@dataclass(frozen=True)
class GpuReport:
    gpus: tuple[Gpu, ...] = ()
    driver: str | None = None
    cuda: Version | None = None
    problem: str | None = None  # why NVML could not be used, when it could not

    def describe(self) -> str:
        if not self.gpus:
            return self.problem or "no NVIDIA GPU"
        names = ", ".join(f"{g.name} {g.memory_gib:.0f} GiB sm{g.compute_capability}" for g in self.gpus)
        return f"{names}; driver {self.driver}, CUDA {self.cuda}"


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def probe_gpus() -> GpuReport:
    import pynvml  # imported here: only bootstrap needs NVML

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError_LibraryNotFound:
        return GpuReport(problem="no NVIDIA driver library (libnvidia-ml.so.1) on this machine")
    except pynvml.NVMLError_DriverNotLoaded:
        return GpuReport(problem="the NVIDIA driver is not loaded")
    except pynvml.NVMLError as exc:
        return GpuReport(problem=f"NVML could not start: {exc}")
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            gpus.append(Gpu(
                index=index,
                name=_text(pynvml.nvmlDeviceGetName(handle)),
                memory_gib=pynvml.nvmlDeviceGetMemoryInfo(handle).total / 2**30,
                compute_capability=Version(f"{major}.{minor}"),
            ))
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        return GpuReport(
            gpus=tuple(gpus),
            driver=_text(pynvml.nvmlSystemGetDriverVersion()),
            # NVML encodes CUDA 12.4 as 12040
            cuda=Version(f"{cuda // 1000}.{(cuda % 1000) // 10}"),
        )
    except pynvml.NVMLError as exc:
        return GpuReport(problem=f"NVML query failed: {exc}")
    finally:
        pynvml.nvmlShutdown()


def gpu_problems(needs: GpuNeeds, report: GpuReport) -> list[str]:
    """Why no GPU on this machine fits the recipe (empty when one does, or none is needed)."""
    if not needs.required:
        return []
    if not report.gpus:
        return [f"the recipe needs an NVIDIA GPU, but {report.problem or 'none was found'}; {COLAB_HINT}"]
    problems = []
    if needs.min_cuda and report.cuda and report.cuda < needs.min_cuda:
        problems.append(
            f"the driver supports CUDA {report.cuda}, the recipe needs {needs.min_cuda}; "
            "use a newer runtime or driver"
        )
    fitting = [
        g for g in report.gpus
        if (needs.min_memory_gib is None or g.memory_gib >= needs.min_memory_gib)
        and (needs.min_compute_capability is None or g.compute_capability >= needs.min_compute_capability)
    ]
    if not fitting:
        wants = []
        if needs.min_memory_gib is not None:
            wants.append(f"{needs.min_memory_gib} GiB")
        if needs.min_compute_capability is not None:
            wants.append(f"compute capability {needs.min_compute_capability}")
        problems.append(
            f"no GPU has {' and '.join(wants)} ({report.describe()}); "
            "on Colab pick a larger accelerator under Runtime > Change runtime type"
        )
    return problems
