"""Real-time DETRs behind one narrow method: a batch of BGR frames in, detections in source pixels out.

The models of `transformers` (RT-DETRv2 by default; RT-DETR, D-FINE, DEIMv2, RF-DETR, LW-DETR) run
through torch eager or an exported backend (`backends/`: OpenVINO, ONNX Runtime, TensorRT), with
the same pre- and post-processing on the model's device; ultralytics `RTDETR` serves `.pt`
checkpoints.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .coco import COCO_CLASSES
from .config import REPO_ROOT
from .types import Detection, ModelInfo

log = logging.getLogger(__name__)

# Written into config.json of weights we generate ourselves, so a random-weight model saved with
# save_pretrained is never mistaken for a trained one.
UNTRAINED_MARKER = "rtdetr_service_untrained"
TOP_K = 300


class ModelLoadError(RuntimeError):
    """MODEL names weights that cannot be loaded; the message says what to do."""


class Detector(Protocol):
    """What the inference worker needs of a model."""

    info: ModelInfo

    def detect(self, images: Sequence[np.ndarray], thresholds: Sequence[float]) -> list[list[Detection]]:
        """Detect objects in each BGR uint8 image; boxes in that image's pixels, scores >= its threshold."""
        ...


def resolve_device(device: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without one is an error, not a silent fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("DEVICE=cuda but torch sees no CUDA device; use DEVICE=auto or DEVICE=cpu")
    return torch.device(device)


def inference_stream(device: torch.device) -> torch.cuda.Stream | None:
    """A CUDA stream of the model's own (None on the CPU, where `torch.cuda.stream(None)` is a no-op).

    Inference must stay off the legacy default stream: torchvision's nvJPEG encoder synchronises
    with that stream before and after every encode, so a batch queued there would hold each JPEG
    of every session back by up to one inference time.
    """
    return torch.cuda.Stream(device) if device.type == "cuda" else None


def postprocess(
    logits: torch.Tensor,
    pred_boxes: torch.Tensor,
    sizes: torch.Tensor,
    top_k: int = TOP_K,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RT-DETR focal-loss decoding on the device.

    logits (B, Q, C) and pred_boxes (B, Q, 4, normalised cx, cy, w, h) → per image the top_k
    (score, label, box) over all query×class pairs, boxes as x1, y1, x2, y2 in pixels of `sizes`
    (B, 2 as height, width), clipped to the image.
    """
    batch, queries, classes = logits.shape
    scores = logits.float().sigmoid().flatten(1)
    k = min(top_k, queries * classes)
    top_scores, flat_index = scores.topk(k, dim=1)
    labels = flat_index % classes
    query_index = flat_index // classes
    boxes = pred_boxes.float().gather(1, query_index.unsqueeze(-1).expand(-1, -1, 4))
    cx, cy, w, h = boxes.unbind(-1)
    xyxy = torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)
    hw = sizes.to(xyxy.device, torch.float32)
    scale = torch.stack((hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]), dim=-1).unsqueeze(1)
    xyxy = xyxy.clamp(0.0, 1.0) * scale
    return top_scores, labels, xyxy


def to_detections(
    scores: np.ndarray,
    labels: np.ndarray,
    boxes: np.ndarray,
    threshold: float,
    names: Sequence[str],
    size: tuple[int, int] | None = None,
) -> list[Detection]:
    """Host-side: keep scores >= threshold and build Detection objects, boxes clipped to `size`
    (height, width) when given."""
    keep = scores >= threshold
    if size is not None:
        boxes = boxes.clip(0, [size[1], size[0], size[1], size[0]])
    out = []
    for score, label, box in zip(scores[keep], labels[keep], boxes[keep], strict=False):
        label = int(label)
        name = names[label] if 0 <= label < len(names) else str(label)
        x1, y1, x2, y2 = (float(v) for v in box)
        out.append(Detection(label, name, (x1, y1, max(x1, x2), max(y1, y2)), float(score)))
    return out


class Runner(Protocol):
    """A model in some backend's form: pixels (B, 3, S, S) in → raw (logits, pred_boxes) out."""

    def __call__(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class EagerRunner:
    """The transformers model itself (torch eager or torch.compile)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def __call__(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self.model(pixel_values=pixels)
        return outputs.logits, outputs.pred_boxes


class RealtimeDetr:
    """A real-time DETR (RT-DETR v1/v2, D-FINE, DEIMv2, RF-DETR, LW-DETR) behind `detect()`.

    Every backend shares this pre- and post-processing, on the model's device: only `runner`
    differs (torch eager, ONNX Runtime, OpenVINO, TensorRT), so backends can differ only in the
    network's own arithmetic, which the parity tests measure.
    """

    def __init__(
        self,
        runner: Runner,
        info: ModelInfo,
        device: torch.device,
        dtype: torch.dtype,
        input_size: int,
        channels_last: bool | None = None,
    ) -> None:
        self.runner = runner
        self.info = info
        self.device = device
        self.dtype = dtype  # of the pixels the runner takes
        self.input_size = input_size
        # cuDNN convolutions prefer NHWC; exported graphs take the dense NCHW layout they were traced with.
        self.channels_last = device.type == "cuda" if channels_last is None else channels_last
        # One model instance serves every session; the worker is its only caller, but benchmarks and
        # tests may call detect() from other threads, so calls are serialised.
        self._lock = threading.Lock()
        self._stream = inference_stream(device)

    @property
    def model(self) -> torch.nn.Module | None:
        """The torch module when the runner is eager (None for exported backends)."""
        return getattr(self.runner, "model", None)

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """BGR uint8 HxWx3 → RGB (B, 3, S, S) in [0, 1], resized on the device."""
        return preprocess(images, self.input_size, self.device, self.dtype, self.channels_last)

    def raw(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's raw (logits, pred_boxes) for these images, as float32 on the CPU."""
        with self._lock, torch.inference_mode(), torch.cuda.stream(self._stream):
            logits, boxes = self.runner(self.preprocess(images))
            return logits.float().cpu(), boxes.float().cpu()

    @torch.inference_mode()
    def detect(self, images: Sequence[np.ndarray], thresholds: Sequence[float]) -> list[list[Detection]]:
        if not images:
            return []
        if len(thresholds) != len(images):
            raise ValueError("one threshold per image is required")
        with self._lock, torch.cuda.stream(self._stream):
            pixels = self.preprocess(images)
            logits, pred_boxes = self.runner(pixels)
            sizes = torch.tensor([img.shape[:2] for img in images])
            scores, labels, boxes = postprocess(logits, pred_boxes, sizes)
            scores, labels, boxes = scores.cpu().numpy(), labels.cpu().numpy(), boxes.cpu().numpy()
        names = self.info.class_names
        return [to_detections(scores[i], labels[i], boxes[i], thresholds[i], names) for i in range(len(images))]


# The name this class had while it served RT-DETRv2 only.
TransformersRTDetr = RealtimeDetr


def preprocess(
    images: Sequence[np.ndarray], input_size: int, device: torch.device, dtype: torch.dtype, channels_last: bool
) -> torch.Tensor:
    """BGR uint8 HxWx3 → RGB (B, 3, S, S) in [0, 1], resized on `device`.

    Exported backends get exactly these pixels too (torch is always installed): one resize for all
    of them, and it is the one the official image processors use, so a backend is never blamed
    for a difference made before the network.
    """
    size = (input_size, input_size)
    batch = []
    for image in images:
        tensor = torch.from_numpy(np.ascontiguousarray(image))
        if device.type == "cuda":
            tensor = tensor.pin_memory().to(device, non_blocking=True)
        chw = tensor.permute(2, 0, 1).flip(0).unsqueeze(0).float()
        # antialias matches the PIL bilinear resize the official image processor uses; it runs
        # in float32 (it is not defined for every half-precision backend) and costs microseconds.
        resized = F.interpolate(chw, size=size, mode="bilinear", align_corners=False, antialias=True)
        batch.append(resized)
    pixels = torch.cat(batch).div_(255.0).to(dtype)
    if channels_last:
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    return pixels


class UltralyticsRTDetr:
    """RT-DETR checkpoints in ultralytics' `.pt` format (e.g. models/rt-detr.pt)."""

    def __init__(self, path: str, device: torch.device, half: bool, input_size: int) -> None:
        # No telemetry and no downloads at run time unless the operator asks for them.
        os.environ.setdefault("YOLO_OFFLINE", "1")
        try:
            from ultralytics import RTDETR
        except ImportError as exc:
            raise ModelLoadError(
                f"MODEL={path} is an ultralytics checkpoint but ultralytics is not installed: "
                "run `make deps` (it installs ultralytics) or use a transformers RT-DETRv2 weights directory"
            ) from exc
        self._model = RTDETR(path)
        checkpoint = getattr(self._model, "ckpt", None) or {}
        # Checkpoints that came out of training carry their training arguments; a bare
        # architecture saved with random weights does not.
        trained = bool(checkpoint.get("train_args"))
        self._device = device
        self._half = half and device.type == "cuda"
        self._input_size = input_size
        self._lock = threading.Lock()
        self._stream = inference_stream(device)
        names = self._model.names
        class_names = tuple(names[i] for i in sorted(names)) if isinstance(names, dict) else tuple(names)
        self.info = ModelInfo(
            name=Path(path).name,
            backend="ultralytics",
            device=str(device),
            trained=trained,
            class_names=class_names,
            dtype="float16" if self._half else "float32",
            backend_reason="MODEL is an ultralytics .pt checkpoint",
            cpu_threads=torch.get_num_threads() if device.type == "cpu" else None,
        )

    def detect(self, images: Sequence[np.ndarray], thresholds: Sequence[float]) -> list[list[Detection]]:
        if not images:
            return []
        with self._lock, torch.cuda.stream(self._stream):
            results = self._model.predict(
                list(images),
                imgsz=self._input_size,
                conf=min(thresholds),
                half=self._half,
                device=str(self._device),
                verbose=False,
            )
            # read back on the stream that produced them
            boxes = [result.boxes for result in results]
            found = [(b.conf.cpu().numpy(), b.cls.cpu().numpy(), b.xyxy.cpu().numpy()) for b in boxes]
        return [
            to_detections(conf, cls.astype(np.int64), xyxy, threshold, self.info.class_names, image.shape[:2])
            for (conf, cls, xyxy), threshold, image in zip(found, thresholds, images, strict=False)
        ]


def coco_rtdetr_v2_config(backbone: dict, **model):
    """An RT-DETRv2 config for the 80 COCO classes: a basic-block ResNet backbone (`backbone`
    keyword arguments) feeding stages 2-4 to the hybrid encoder and decoder (`model`)."""
    from transformers import RTDetrResNetConfig, RTDetrV2Config

    return RTDetrV2Config(
        backbone_config=RTDetrResNetConfig(layer_type="basic", out_features=["stage2", "stage3", "stage4"], **backbone),
        id2label=dict(enumerate(COCO_CLASSES)),
        label2id={name: i for i, name in enumerate(COCO_CLASSES)},
        **model,
    )


def r18vd_config():
    """RT-DETRv2-S (r18vd) architecture, COCO 80 classes: used when no trained weights exist."""
    return coco_rtdetr_v2_config(
        dict(hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2]),
        encoder_in_channels=[128, 256, 512],
        hidden_expansion=0.5,
        decoder_layers=3,
    )


def random_weights_model(config, seed: int = 0):
    """A random-weight model of the config's architecture (any real-time DETR), marked untrained."""
    from transformers import AutoModelForObjectDetection

    setattr(config, UNTRAINED_MARKER, True)
    torch.manual_seed(seed)
    return AutoModelForObjectDetection.from_config(config)


@torch.no_grad()
def condition_random_weights(model: torch.nn.Module, input_size: int = 320, seed: int = 0) -> torch.nn.Module:
    """Give a random-weight model the activation scale of a trained one.

    transformers initialises every batch-norm scale from N(0, 0.01) and leaves the running
    statistics at mean 0, variance 1: each of the ~40 normalised convolutions then shrinks the
    signal ~100x, the encoder's features vanish (1e-9 and smaller in r18vd) and all 8400 encoder
    scores come out exactly equal, so the top-300 query selection is a tie that torch, ONNX
    Runtime and OpenVINO break differently. Scale 1, shift 0 and running statistics measured on
    one batch of noise (each layer after the ones before it) make the scores distinct, so
    detections depend on the picture and exported backends can be held to parity.
    """
    hooks = []

    def measure(module, args):
        x = args[0]
        module.running_mean.copy_(x.mean((0, 2, 3)))
        module.running_var.copy_(x.var((0, 2, 3)))

    for module in model.modules():
        if isinstance(getattr(module, "running_var", None), torch.Tensor) and module.running_var.dim() == 1:
            module.weight.fill_(1.0)
            module.bias.zero_()
            hooks.append(module.register_forward_pre_hook(measure))
    noise = torch.rand((2, 3, input_size, input_size), generator=torch.Generator().manual_seed(seed))
    try:
        model(pixel_values=noise.to(next(model.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
    return model


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


def _load_realtime_detr(
    spec: str,
    is_default: bool,
    device: str,
    half: bool,
    input_size: int,
    compile_model: bool,
    backend: str,
    cpu_precision: str,
    max_batch: int,
    cache_dir: Path | None,
    threads: int,
) -> RealtimeDetr:
    from . import backends

    try:
        choice = backends.choose(backend, device, half=half, cpu_precision=cpu_precision)
    except backends.BackendError as exc:
        raise ModelLoadError(str(exc)) from exc
    model, name = load_model(spec, is_default)
    trained = not getattr(model.config, UNTRAINED_MARKER, False)
    id2label = model.config.id2label
    class_names = tuple(str(id2label[i]) for i in sorted(id2label))
    size = fitted_input_size(model.config, input_size)
    if size != input_size:
        log.warning("INPUT_SIZE=%d does not fit %s's windows: using %d", input_size, model.config.model_type, size)
    threads = threads or backends.default_cpu_threads(choice.backend)
    cache_dir = Path(cache_dir) if cache_dir else REPO_ROOT / "models" / ".cache"  # the MODEL_CACHE_DIR default
    runner = None
    if choice.backend != "torch":
        try:
            runner = backends.build_runner(
                choice, model, input_size=size, max_batch=max_batch, cache_dir=cache_dir, threads=threads
            )
        except Exception as exc:  # an export or engine build failed: any exception of any backend library
            if not choice.fallback:
                raise ModelLoadError(f"BACKEND={choice.backend} cannot run MODEL={spec}: {exc}") from exc
            log.warning("%s failed for %s, falling back to torch: %s", choice.backend, name, exc)
            torch_choice = backends.choose("torch", device, half=half, cpu_precision="fp32")
            choice = backends.Choice(
                "torch",
                torch_choice.precision,
                torch_choice.device,
                f"{choice.reason}, but its export failed ({type(exc).__name__}): torch",
            )
            model = model.to("cpu", torch.float32)
    if runner is None:
        runner = _torch_runner(model, choice.device, backends.PIXEL_DTYPES[choice.precision], compile_model)
        threads = torch.get_num_threads()  # torch eager runs on torch's own pool (set by the app)
    dtype = getattr(runner, "input_dtype", None) or (
        backends.PIXEL_DTYPES[choice.precision] if choice.backend == "torch" else torch.float32
    )
    info = ModelInfo(
        name=name,
        backend=choice.backend,
        device=str(choice.device),
        trained=trained,
        class_names=class_names,
        dtype=choice.dtype,
        backend_reason=choice.reason,
        cpu_threads=threads if choice.device.type == "cpu" else None,
    )
    return RealtimeDetr(
        runner,
        info,
        choice.device,
        dtype,
        size,
        channels_last=choice.backend == "torch" and choice.device.type == "cuda",
    )


def load_detector(
    spec: str,
    *,
    is_default: bool = False,
    device: str = "auto",
    half: bool = True,
    input_size: int = 640,
    compile_model: bool = False,
    backend: str = "torch",
    cpu_precision: str = "fp32",
    max_batch: int = 32,
    cache_dir: Path | str | None = None,
    threads: int = 0,
) -> Detector:
    """Load MODEL: a `.pt` file → ultralytics; a weights directory or hub id → transformers, run by
    `backend` (torch eager unless told: the reference every other backend is tested against).

    Only the default MODEL may be missing: then a random-weight model of the same architecture
    runs, marked untrained everywhere. Any other unloadable MODEL is an error.
    """
    if spec.endswith(".pt"):
        if not Path(spec).is_file():
            raise ModelLoadError(f"MODEL={spec} does not exist")
        detector: Detector = UltralyticsRTDetr(spec, resolve_device(device), half, input_size)
    else:
        detector = _load_realtime_detr(
            spec,
            is_default,
            device,
            half,
            input_size,
            compile_model,
            backend,
            cpu_precision,
            max_batch,
            cache_dir,
            threads,
        )
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
