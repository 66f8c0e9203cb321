"""What GPUs this machine has, through NVML (`nvidia-ml-py`), and whether they fit a recipe.

pynvml loads `libnvidia-ml.so.1` by bare name, so the library search path at process start
decides which library is used. It is imported inside `probe_gpus` only: `invoke --list` and
every other task stay fast and work on machines without a driver.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from packaging.version import Version

from .recipe import GpuNeeds

COLAB_GPU_HINT = "on Colab choose Runtime > Change runtime type > a GPU accelerator (e.g. T4) and run again"
COLAB_BIGGER_HINT = "on Colab choose a larger GPU under Runtime > Change runtime type (L4, A100)"
COLAB_CUDA_HINT = (
    "use a newer runtime version (Runtime > Change runtime type > Runtime version) or a newer driver"
)


@dataclass(frozen=True)
class Device:
    index: int
    name: str
    uuid: str
    memory_total_mib: int
    memory_free_mib: int
    compute_capability: str
    mig: bool

    def describe(self) -> str:
        return f"GPU {self.index} {self.name} ({self.memory_total_mib / 1024:.1f} GiB, sm {self.compute_capability})"


@dataclass(frozen=True)
class GpuReport:
    """The shape of `invoke gpu --json` and of the bootstrap report's `gpu` key."""

    devices: tuple[Device, ...] = ()
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    error: str | None = None

    @property
    def available(self) -> bool:
        return bool(self.devices)

    def as_json(self) -> dict[str, Any]:
        return {
            "available": self.available,
            "driver_version": self.driver_version,
            "cuda_driver_version": self.cuda_driver_version,
            "devices": [asdict(d) for d in self.devices],
            "error": self.error,
        }

    def describe(self) -> str:
        if not self.devices:
            return f"no usable GPU: {self.error}"
        found = ", ".join(d.describe() for d in self.devices)
        return f"{found}; driver {self.driver_version}, CUDA {self.cuda_driver_version}"

    def table(self) -> str:
        if not self.devices:
            return self.describe()
        rows = [("GPU", "NAME", "MEMORY MiB", "FREE MiB", "CC", "MIG")] + [
            (str(d.index), d.name, str(d.memory_total_mib), str(d.memory_free_mib),
             d.compute_capability, "yes" if d.mig else "no")
            for d in self.devices
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
        lines.append(f"driver {self.driver_version}, CUDA {self.cuda_driver_version}")
        return "\n".join(lines)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _init_error(pynvml: Any, exc: Exception) -> str:
    reasons = [
        ("NVMLError_LibraryNotFound",
         "no NVIDIA driver library (libnvidia-ml.so.1): this is a CPU-only machine or runtime"),
        ("NVMLError_DriverNotLoaded", "the NVIDIA driver is installed but not loaded"),
        ("NVMLError_LibRmVersionMismatch",
         "the NVIDIA driver library and kernel module differ (driver updated without a reboot)"),
        ("NVMLError_NoPermission",
         "no permission to use the NVIDIA devices (in Docker: run with --gpus all)"),
    ]
    for name, reason in reasons:
        if isinstance(exc, getattr(pynvml, name)):
            return reason
    return f"NVML failed: {exc}"


def _mig_enabled(pynvml: Any, handle: Any) -> bool:
    try:
        current, _pending = pynvml.nvmlDeviceGetMigMode(handle)
    except pynvml.NVMLError_NotSupported:
        return False
    return current == pynvml.NVML_DEVICE_MIG_ENABLE


def _device(pynvml: Any, index: int) -> Device:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
    return Device(
        index=index,
        name=_text(pynvml.nvmlDeviceGetName(handle)),
        uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
        memory_total_mib=memory.total >> 20,
        memory_free_mib=memory.free >> 20,
        compute_capability=f"{major}.{minor}",
        mig=_mig_enabled(pynvml, handle),
    )


def probe_gpus() -> GpuReport:
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return GpuReport(error=_init_error(pynvml, exc))
    try:
        cuda = pynvml.nvmlSystemGetCudaDriverVersion_v2()  # 12080 means CUDA 12.8
        report = GpuReport(
            devices=tuple(_device(pynvml, i) for i in range(pynvml.nvmlDeviceGetCount())),
            driver_version=_text(pynvml.nvmlSystemGetDriverVersion()),
            cuda_driver_version=f"{cuda // 1000}.{(cuda % 1000) // 10}",
        )
    except pynvml.NVMLError as exc:
        return GpuReport(error=f"NVML query failed: {exc}")
    finally:
        pynvml.nvmlShutdown()
    if not report.devices:
        return GpuReport(driver_version=report.driver_version,
                         cuda_driver_version=report.cuda_driver_version,
                         error="the NVIDIA driver is loaded but reports no GPUs")
    return report


@dataclass(frozen=True)
class GpuVerdict:
    missing: str | None = None  # no GPU at all, while the recipe needs one
    unfit: tuple[str, ...] = ()  # GPUs are there, but none meets the recipe's limits

    @property
    def problems(self) -> tuple[str, ...]:
        return (self.missing,) if self.missing else self.unfit

    def allowed(self, allow_no_gpu: bool, allow_unfit_gpu: bool) -> bool:
        return allow_no_gpu if self.missing else allow_unfit_gpu


def judge(needs: GpuNeeds, report: GpuReport) -> GpuVerdict:
    """Compare what NVML found with the recipe's [gpu] table; every reason says what to do."""
    if not needs.required:
        return GpuVerdict()
    if not report.available:
        return GpuVerdict(missing=f"the recipe needs an NVIDIA GPU, but found {report.describe()}; "
                                  f"{COLAB_GPU_HINT}")
    unfit = []
    if needs.min_cuda and Version(report.cuda_driver_version or "0") < needs.min_cuda:
        unfit.append(f"the driver supports CUDA {report.cuda_driver_version} (driver "
                     f"{report.driver_version}), the recipe needs CUDA {needs.min_cuda}; {COLAB_CUDA_HINT}")
    too_small = needs.min_memory_gib is not None and all(
        d.memory_total_mib / 1024 < needs.min_memory_gib for d in report.devices
    )
    too_old = needs.min_compute_capability is not None and all(
        Version(d.compute_capability) < needs.min_compute_capability for d in report.devices
    )
    fits_both = any(
        (needs.min_memory_gib is None or d.memory_total_mib / 1024 >= needs.min_memory_gib)
        and (needs.min_compute_capability is None
             or Version(d.compute_capability) >= needs.min_compute_capability)
        for d in report.devices
    )
    found = "; ".join(d.describe() for d in report.devices)
    if too_small:
        unfit.append(f"the recipe needs a GPU with {needs.min_memory_gib} GiB, found {found}; "
                     f"{COLAB_BIGGER_HINT}")
    if too_old:
        unfit.append(f"the recipe needs compute capability {needs.min_compute_capability}, found "
                     f"{found}; {COLAB_BIGGER_HINT}")
    if not fits_both and not (too_small or too_old):
        unfit.append(f"no single GPU has both {needs.min_memory_gib} GiB and compute capability "
                     f"{needs.min_compute_capability}, found {found}; {COLAB_BIGGER_HINT}")
    return GpuVerdict(unfit=tuple(unfit))
