"""Where the network runs: torch eager, OpenVINO, ONNX Runtime or TensorRT, chosen by `BACKEND`.

Every backend sits behind the same `Runner` (pixels in, raw logits and boxes out); the
pre- and post-processing around it is shared (`detector.RealtimeDetr`). The exported backends
start from an ONNX graph of the loaded weights, cached under `MODEL_CACHE_DIR` (see `export`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "openvino", "onnxruntime", "tensorrt")
CPU_BACKENDS = ("openvino", "onnxruntime")
PIXEL_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class BackendError(RuntimeError):
    """The backend cannot run this model here; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Choice:
    """A backend, the precision it computes in, the device it reads pixels from, and why."""

    backend: str
    precision: str  # fp32 | bf16 | fp16
    device: torch.device
    reason: str
    fallback: bool = False  # auto chose it: on failure torch eager takes over instead of an error

    @property
    def dtype(self) -> str:
        return {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[self.precision]


def available(package: str) -> bool:
    """Whether a package can be imported, without importing it (TensorRT's import is slow and large)."""
    return importlib.util.find_spec(package) is not None


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_cpu_threads(backend: str = "torch") -> int:
    """Inference threads when CPU_THREADS=0, for the backend that runs the network.

    torch eager (OpenMP): every core but one. Its pool makes every thread wait at each operator
    for the slowest one, so when a decoder, the publisher or another process takes a core, a
    pass stalls: on a busy 2-core box one torch pass took 6x longer with 2 threads than with 1.
    OpenVINO and ONNX Runtime (their own schedulers, not pinned, not spinning): every core. Measured
    on 2 cores (bench/backends_cpu.py, r18vd at 640), 2 threads against 1: quiet, 1.8x faster;
    with one busy process competing, within 10 % (OpenVINO fp32) or 2 % (ONNX Runtime); with three,
    OpenVINO fp32 unchanged and bf16 18 % slower, where torch went from 560 to 869 ms with one.
    Leaving a core idle costs them more than sharing it with the decoders.
    """
    cores = usable_cores()
    return cores if backend in CPU_BACKENDS else max(1, cores - 1)


def cpu_has_native_bf16() -> bool:
    """Whether OpenVINO finds bf16 instructions on this CPU (AVX512-BF16 or AMX)."""
    if not available("openvino"):
        return False
    import openvino as ov

    try:
        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except RuntimeError:
        return False


def choose(backend: str, device: str, *, half: bool = True, cpu_precision: str = "fp32") -> Choice:
    """Resolve BACKEND, DEVICE, HALF and CPU_PRECISION into one backend with its precision.

    `auto`: TensorRT on NVIDIA when the tensorrt package is importable (else torch fp16), OpenVINO
    on a CPU when it is installed (else torch); a backend named explicitly that cannot run here is
    an error, never a silent substitute.
    """
    if backend not in BACKENDS:
        raise BackendError(f"BACKEND={backend} is not one of {', '.join(BACKENDS)}")
    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise BackendError("DEVICE=cuda but torch sees no CUDA device; use DEVICE=auto or DEVICE=cpu")
    gpu_precision = "fp16" if half else "fp32"
    if backend == "auto":
        if device in ("auto", "cuda") and cuda:
            if available("tensorrt"):
                return Choice("tensorrt", gpu_precision, torch.device("cuda"), "auto: NVIDIA GPU with TensorRT", True)
            return Choice(
                "torch", gpu_precision, torch.device("cuda"), "auto: NVIDIA GPU, tensorrt package not installed"
            )
        if available("openvino"):
            precision = _cpu_precision("openvino", cpu_precision)
            why = "bf16 instructions found" if precision == "bf16" else "fp32"
            return Choice("openvino", precision, torch.device("cpu"), f"auto: CPU, OpenVINO installed ({why})", True)
        return Choice("torch", _cpu_precision("torch", cpu_precision), torch.device("cpu"), "auto: CPU, no OpenVINO")
    if backend == "tensorrt":
        if device == "cpu" or not cuda:
            raise BackendError("BACKEND=tensorrt needs an NVIDIA GPU (DEVICE=auto or cuda)")
        if not available("tensorrt"):
            raise BackendError(
                "BACKEND=tensorrt but the tensorrt package is not installed: pip install tensorrt "
                "(a large download, kept out of requirements.txt), or use BACKEND=auto"
            )
        return Choice("tensorrt", gpu_precision, torch.device("cuda"), "BACKEND=tensorrt")
    if backend in CPU_BACKENDS:
        if device == "cuda":
            raise BackendError(f"BACKEND={backend} runs on the CPU here: use DEVICE=auto or cpu")
        if not available(backend):
            raise BackendError(f"BACKEND={backend} but the {backend} package is not installed: run `make deps`")
        return Choice(backend, _cpu_precision(backend, cpu_precision), torch.device("cpu"), f"BACKEND={backend}")
    torch_device = torch.device("cuda" if (device in ("auto", "cuda") and cuda) else "cpu")
    if torch_device.type == "cuda":
        return Choice("torch", gpu_precision, torch_device, "BACKEND=torch")
    return Choice("torch", _cpu_precision("torch", cpu_precision), torch_device, "BACKEND=torch")


def _cpu_precision(backend: str, requested: str) -> str:
    if requested == "fp32":
        return "fp32"
    if backend == "onnxruntime":
        if requested == "bf16":
            raise BackendError("CPU_PRECISION=bf16: ONNX Runtime's CPU provider runs fp32 only; use BACKEND=openvino")
        return "fp32"
    if requested == "bf16":
        return "bf16"
    # auto (the default): bf16 only where the CPU computes it natively (else it is emulated, slower
    # than fp32), and only for OpenVINO, as OpenVINO itself defaults; torch eager stays fp32. The
    # GPU's default is fp16 for the same reason. bf16 moves random-weight r18vd scores by up to
    # 0.07 and box edges by up to 8 px (docs/backends.md); CPU_PRECISION=fp32 keeps parity.
    return "bf16" if backend == "openvino" and cpu_has_native_bf16() else "fp32"


def build_runner(
    choice: Choice,
    model: torch.nn.Module,
    *,
    input_size: int,
    max_batch: int,
    cache_dir: Path,
    threads: int,
):
    """The runner for `choice`: exports (or finds in the cache) what the backend needs."""
    if choice.backend == "openvino":
        from rtdetr_service.inference.backends.ov import openvino_runner

        return openvino_runner(
            model, input_size=input_size, precision=choice.precision, cache_dir=cache_dir, threads=threads
        )
    if choice.backend == "onnxruntime":
        from rtdetr_service.inference.backends.ort import onnxruntime_runner

        return onnxruntime_runner(model, input_size=input_size, cache_dir=cache_dir, threads=threads)
    if choice.backend == "tensorrt":
        from rtdetr_service.inference.backends.trt import tensorrt_runner

        return tensorrt_runner(
            model, input_size=input_size, precision=choice.precision, max_batch=max_batch, cache_dir=cache_dir
        )
    raise BackendError(f"no exported runner for backend {choice.backend}")
