"""Loading MODEL: weights from a folder, a hub id or an ultralytics .pt, on the backend BACKEND picks."""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rtdetr_service.core.types import ModelInfo
from rtdetr_service.inference import backends
from rtdetr_service.inference.detector import (
    Detector,
    EagerRunner,
    ModelLoadError,
    RealtimeDetr,
    UltralyticsRTDetr,
    resolve_device,
)
from rtdetr_service.inference.random_weights import (
    UNTRAINED_MARKER,
    condition_random_weights,
    r18vd_config,
    random_weights_model,
)
from rtdetr_service.inference.settings import DEFAULT_MODEL, MODEL_CACHE_DIR, InferenceSettings

log = logging.getLogger(__name__)

HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


# The real-time DETRs of transformers: all decode with a sigmoid over queries x classes (focal
# loss) and return logits + normalised cx, cy, w, h boxes, which `postprocess` reads.
REALTIME_DETRS = {
    "rt_detr": "RT-DETR",
    "rt_detr_v2": "RT-DETRv2",
    "d_fine": "D-FINE",
    "deimv2": "DEIMv2",
    "rf_detr": "RF-DETR",
    "lw_detr": "LW-DETR",
}


def load_model(spec: str, is_default: bool = False) -> tuple[torch.nn.Module, str]:
    """The model MODEL names (a folder or hub id; architecture from its config.json), on the CPU in
    fp32, and a display name. Only the default MODEL may be missing: then random r18vd weights."""
    from transformers import AutoConfig, AutoModelForObjectDetection

    path = Path(spec)
    if path.exists() or (not is_default and HUB_ID.match(spec)):
        try:
            config = AutoConfig.from_pretrained(spec)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"Cannot load a model config from MODEL={spec}: {exc}") from exc
        if config.model_type not in REALTIME_DETRS:
            raise ModelLoadError(
                f"MODEL={spec} is a {config.model_type!r} model; supported: "
                + ", ".join(f"{name} ({kind})" for kind, name in REALTIME_DETRS.items())
            )
        try:
            model = AutoModelForObjectDetection.from_pretrained(spec)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"Cannot load {REALTIME_DETRS[config.model_type]} weights from MODEL={spec}: {exc}"
            ) from exc
        return model.eval(), path.name if path.exists() else spec
    if is_default:
        log.warning(
            "!!! No trained weights at %s: running a RANDOM-WEIGHT RT-DETRv2-S. Detections are meaningless. "
            "Run `make models` where there is internet. !!!",
            spec,
        )
        model = condition_random_weights(random_weights_model(r18vd_config()).eval())
        return model, "rtdetr_v2_r18vd architecture (random weights)"
    raise ModelLoadError(f"MODEL={spec} does not exist: give a weights directory, a hub id or a .pt file")


def fitted_input_size(config, requested: int) -> int:
    """The input size nearest `requested` that the architecture accepts.

    Windowed ViT backbones (RF-DETR, LW-DETR) need a multiple of patch size x windows per side
    (14-pixel patches and 4 windows per side: multiples of 56, so 640 becomes 616); the CNN backbones take
    any multiple of 32.
    """
    backbone = getattr(config, "backbone_config", None)
    patch = getattr(backbone, "patch_size", None)
    if not patch:
        return requested
    side = getattr(backbone, "num_windows_side", None) or getattr(backbone, "num_windows", 1)
    step = int(patch) * int(side)
    return max(step, round(requested / step) * step)


def _torch_runner(model, device: torch.device, dtype: torch.dtype, compile_model: bool) -> EagerRunner:
    model = model.to(device=device, dtype=dtype).eval()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        model = model.to(memory_format=torch.channels_last)
        # Those copies run on the default stream; inference reads the weights on its own stream.
        torch.cuda.synchronize(device)
    if compile_model and device.type == "cuda":
        if not (os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")):
            raise ModelLoadError(
                "COMPILE=true needs a C compiler for Triton (gcc), and none is installed: "
                "install gcc, or set COMPILE=false"
            )
        # Automatic dynamic shapes: the second batch size seen recompiles once with a symbolic
        # batch dimension, which then serves every batch size.
        model = torch.compile(model, mode="max-autotune-no-cudagraphs")
    return EagerRunner(model)


@dataclass(frozen=True, slots=True)
class LoadOptions:
    """How to load and run MODEL: the settings DEVICE, HALF, INPUT_SIZE, COMPILE, BACKEND,
    CPU_PRECISION, MAX_BATCH, MODEL_CACHE_DIR and CPU_THREADS, with their defaults."""

    device: str = "auto"
    half: bool = True
    input_size: int = 640
    compile_model: bool = False
    backend: str = "torch"
    cpu_precision: str = "fp32"
    max_batch: int = 32
    cache_dir: Path | str | None = None  # None: the MODEL_CACHE_DIR default
    threads: int = 0  # 0: the backend's default


def _choose_backend(options: LoadOptions) -> backends.Choice:
    """BACKEND resolved on DEVICE with its precision; ModelLoadError where it cannot run here."""
    try:
        return backends.choose(options.backend, options.device, half=options.half, cpu_precision=options.cpu_precision)
    except backends.BackendError as exc:
        raise ModelLoadError(str(exc)) from exc


def _fitted_size(config, requested: int) -> int:
    """fitted_input_size, said in the log when it is not the size asked for."""
    size = fitted_input_size(config, requested)
    if size != requested:
        log.warning("INPUT_SIZE=%d does not fit %s's windows: using %d", requested, config.model_type, size)
    return size


def _torch_instead(
    failed: backends.Choice, exc: Exception, spec: str, name: str, options: LoadOptions
) -> backends.Choice:
    """Torch eager in place of a backend whose export failed, where BACKEND=auto chose it."""
    if not failed.fallback:
        raise ModelLoadError(f"BACKEND={failed.backend} cannot run MODEL={spec}: {exc}") from exc
    log.warning("%s failed for %s, falling back to torch: %s", failed.backend, name, exc)
    torch_choice = backends.choose("torch", options.device, half=options.half, cpu_precision="fp32")
    reason = f"{failed.reason}, but its export failed ({type(exc).__name__}): torch"
    return backends.Choice("torch", torch_choice.precision, torch_choice.device, reason)


def _model_info(name: str, config, choice: backends.Choice, threads: int) -> ModelInfo:
    """What /ready and the logs say about the loaded model."""
    id2label = config.id2label
    return ModelInfo(
        name=name,
        backend=choice.backend,
        device=str(choice.device),
        trained=not getattr(config, UNTRAINED_MARKER, False),
        class_names=tuple(str(id2label[i]) for i in sorted(id2label)),
        dtype=choice.dtype,
        backend_reason=choice.reason,
        cpu_threads=threads if choice.device.type == "cpu" else None,
    )


def _load_realtime_detr(spec: str, is_default: bool, options: LoadOptions) -> RealtimeDetr:
    """A transformers real-time DETR on the backend the options pick; torch eager where an export
    fails and BACKEND=auto allows a fallback."""
    choice = _choose_backend(options)
    model, name = load_model(spec, is_default)
    size = _fitted_size(model.config, options.input_size)
    threads = options.threads or backends.default_cpu_threads(choice.backend)
    runner = None
    if choice.backend != "torch":
        cache_dir = Path(options.cache_dir) if options.cache_dir else MODEL_CACHE_DIR
        try:
            runner = backends.build_runner(
                choice, model, input_size=size, max_batch=options.max_batch, cache_dir=cache_dir, threads=threads
            )
        except Exception as exc:  # an export or engine build failed: any exception of any backend library
            choice = _torch_instead(choice, exc, spec, name, options)
            model = model.to("cpu", torch.float32)
    if runner is None:
        runner = _torch_runner(model, choice.device, backends.PIXEL_DTYPES[choice.precision], options.compile_model)
        threads = torch.get_num_threads()  # torch eager runs on torch's own pool (set by the app)
    dtype = getattr(runner, "input_dtype", None) or (
        backends.PIXEL_DTYPES[choice.precision] if choice.backend == "torch" else torch.float32
    )
    on_cuda_torch = choice.backend == "torch" and choice.device.type == "cuda"
    info = _model_info(name, model.config, choice, threads)
    return RealtimeDetr(runner, info, choice.device, dtype, size, channels_last=on_cuda_torch)


def load_detector(spec: str, options: LoadOptions, *, is_default: bool = False) -> Detector:
    """Load MODEL: a `.pt` file → ultralytics; a weights directory or hub id → transformers, run by
    `options.backend` (torch eager unless told: the reference every other backend is tested against).

    Only the default MODEL may be missing: then a random-weight model of the same architecture
    runs, marked untrained everywhere. Any other unloadable MODEL is an error.
    """
    if spec.endswith(".pt"):
        if not Path(spec).is_file():
            raise ModelLoadError(f"MODEL={spec} does not exist")
        detector: Detector = UltralyticsRTDetr(spec, resolve_device(options.device), options.half, options.input_size)
    else:
        detector = _load_realtime_detr(spec, is_default, options)
    level = logging.INFO if detector.info.trained else logging.WARNING
    log.log(level, "model loaded: %s", detector.info.as_dict())
    return detector


def warm_up(detector: Detector, max_batch: int = 1, size: tuple[int, int] = (720, 1280)) -> None:
    """Forward passes before the first real frame: lazy initialisation, and on CUDA every batch
    size the worker can form (cudnn.benchmark and torch.compile tune per shape, which would
    otherwise land as latency spikes on live frames)."""
    on_gpu = detector.info.device.startswith("cuda")
    image = np.zeros((*size, 3), np.uint8)
    for batch in range(1, (max_batch if on_gpu else 1) + 1):
        detector.detect([image] * batch, [1.0] * batch)


def detector_from_settings(settings: InferenceSettings) -> Detector:
    """The model MODEL names, on the backend BACKEND picks, warmed up."""
    # torch pre- and post-processes for every backend: its pool gets torch's default (a core left
    # to the decoders) unless CPU_THREADS says otherwise; the backend picks its own (0 = its default).
    torch.set_num_threads(settings.cpu_threads or backends.default_cpu_threads("torch"))
    options = LoadOptions(
        device=settings.device,
        half=settings.half,
        input_size=settings.input_size,
        compile_model=settings.compile,
        backend=settings.backend,
        cpu_precision=settings.cpu_precision,
        max_batch=settings.max_batch,
        cache_dir=settings.model_cache_dir,
        threads=settings.cpu_threads,
    )
    detector = load_detector(
        settings.resolved_model(),
        options,
        # `make models` fills this folder; until then (compose mounts it empty) run loudly untrained.
        is_default=Path(settings.model).name == Path(DEFAULT_MODEL).name,
    )
    info = detector.info
    log.info(
        "inference: %s %s on %s, %s CPU threads (%s)",
        info.backend,
        info.dtype,
        info.device,
        info.cpu_threads if info.cpu_threads is not None else "no",
        info.backend_reason,
    )
    warm_up(detector, settings.max_batch)
    return detector
