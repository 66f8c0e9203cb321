"""warmstart check: onnxruntime's CUDA provider finds its CUDA libraries and runs a model.

onnxruntime falls back to the CPU silently when the CUDA provider cannot load (a missing
libcudnn.so.9, a CUDA 13 build on a CUDA 12 system), so a session that was created proves
nothing: this loads the provider's own library (its loader names the first library missing),
then runs the plate detector on CUDA and reads back what ran. With no NVIDIA GPU it says so
and passes: the CPU provider is all there is.
"""

import ctypes
import os
import sys
from pathlib import Path

DETECTOR = Path("~/.hyperlpr3/20230229/onnx/y5fu_320x_sim.onnx").expanduser()


def gpu_count() -> int:
    """The NVIDIA GPUs the driver sees, through NVML (0: no driver, or none)."""
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return 0
    count = ctypes.c_uint(0)
    if nvml.nvmlInit_v2() != 0 or nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
        return 0
    return count.value


def fail(message: str) -> None:
    print(f"FAILED: {message}")
    sys.exit(1)


def main() -> None:
    import numpy as np
    import onnxruntime as ort

    print(f"onnxruntime {ort.__version__}, providers built in: {', '.join(ort.get_available_providers())}")
    if not gpu_count():
        print("no NVIDIA GPU here: onnxruntime runs on the CPU provider")
        return
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        fail("this onnxruntime has no CUDA provider: install onnxruntime-gpu, not onnxruntime")
    capi = Path(ort.__file__).parent / "capi"
    try:
        ctypes.CDLL(str(capi / "libonnxruntime_providers_shared.so"), mode=ctypes.RTLD_GLOBAL)
        ctypes.CDLL(str(capi / "libonnxruntime_providers_cuda.so"))
    except OSError as exc:  # e.g. "libcudnn.so.9: cannot open shared object file"
        fail(f"the CUDA provider cannot load: {exc}; LD_LIBRARY_PATH={os.environ.get('LD_LIBRARY_PATH', '')!r}")
    session = ort.InferenceSession(str(DETECTOR), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    feed = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in feed.shape]
    session.run(None, {feed.name: np.zeros(shape, dtype=np.float32)})
    ran = session.get_providers()
    print(f"a run of {DETECTOR.name} ran on {ran[0]} (session providers: {', '.join(ran)})")
    if ran[0] != "CUDAExecutionProvider":
        fail("onnxruntime fell back to the CPU although its CUDA provider loaded")


if __name__ == "__main__":
    main()
