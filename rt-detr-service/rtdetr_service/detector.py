"""RT-DETRv2 behind one narrow method: a batch of BGR frames in, detections in source pixels out.

Two backends: the official RT-DETRv2 through `transformers` (the default) and ultralytics
`RTDETR` for `.pt` checkpoints. Pre- and post-processing run on the model's device.
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


class TransformersRTDetr:
    """Official RT-DETRv2 (`RTDetrV2ForObjectDetection`), batched, pre/post-processing on the device."""

    def __init__(
        self,
        model: torch.nn.Module,
        info: ModelInfo,
        device: torch.device,
        dtype: torch.dtype,
        input_size: int,
    ) -> None:
        self.model = model
        self.info = info
        self.device = device
        self.dtype = dtype
        self.input_size = input_size
        # One model instance serves every session; the worker is its only caller, but benchmarks and
        # tests may call detect() from other threads, so calls are serialised.
        self._lock = threading.Lock()
        self._stream = inference_stream(device)

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """BGR uint8 HxWx3 → RGB (B, 3, S, S) in [0, 1], resized on the device."""
        size = (self.input_size, self.input_size)
        batch = []
        for image in images:
            tensor = torch.from_numpy(np.ascontiguousarray(image))
            if self.device.type == "cuda":
                tensor = tensor.pin_memory().to(self.device, non_blocking=True)
            chw = tensor.permute(2, 0, 1).flip(0).unsqueeze(0).float()
            # antialias matches the PIL bilinear resize the official image processor uses; it runs
            # in float32 (it is not defined for every half-precision backend) and costs microseconds.
            resized = F.interpolate(chw, size=size, mode="bilinear", align_corners=False, antialias=True)
            batch.append(resized)
        pixels = torch.cat(batch).div_(255.0).to(self.dtype)
        if self.device.type == "cuda":
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        return pixels

    @torch.inference_mode()
    def detect(self, images: Sequence[np.ndarray], thresholds: Sequence[float]) -> list[list[Detection]]:
        if not images:
            return []
        if len(thresholds) != len(images):
            raise ValueError("one threshold per image is required")
        with self._lock, torch.cuda.stream(self._stream):
            pixels = self.preprocess(images)
            outputs = self.model(pixel_values=pixels)
            sizes = torch.tensor([img.shape[:2] for img in images])
            scores, labels, boxes = postprocess(outputs.logits, outputs.pred_boxes, sizes)
            scores, labels, boxes = scores.cpu().numpy(), labels.cpu().numpy(), boxes.cpu().numpy()
        names = self.info.class_names
        return [to_detections(scores[i], labels[i], boxes[i], thresholds[i], names) for i in range(len(images))]


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
    """A random-weight RT-DETRv2 of the given architecture, marked untrained."""
    from transformers import RTDetrV2ForObjectDetection

    setattr(config, UNTRAINED_MARKER, True)
    torch.manual_seed(seed)
    return RTDetrV2ForObjectDetection(config)


HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def _load_transformers(
    spec: str, is_default: bool, device: torch.device, half: bool, input_size: int, compile_model: bool
) -> TransformersRTDetr:
    from transformers import RTDetrV2ForObjectDetection

    path = Path(spec)
    if path.exists() or (not is_default and HUB_ID.match(spec)):
        try:
            model = RTDetrV2ForObjectDetection.from_pretrained(spec)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"Cannot load RT-DETRv2 weights from MODEL={spec}: {exc}") from exc
        name = path.name if path.exists() else spec
    elif is_default:
        log.warning(
            "!!! No trained weights at %s: running a RANDOM-WEIGHT RT-DETRv2-S. Detections are meaningless. "
            "Run `make models` where there is internet. !!!",
            spec,
        )
        model = random_weights_model(r18vd_config())
        name = "rtdetr_v2_r18vd architecture (random weights)"
    else:
        raise ModelLoadError(f"MODEL={spec} does not exist: give a weights directory, a hub id or a .pt file")

    trained = not getattr(model.config, UNTRAINED_MARKER, False)
    dtype = torch.float16 if (half and device.type == "cuda") else torch.float32
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
    id2label = model.config.id2label
    class_names = tuple(str(id2label[i]) for i in sorted(id2label))
    info = ModelInfo(
        name=name,
        backend="transformers",
        device=str(device),
        trained=trained,
        class_names=class_names,
        dtype=str(dtype).removeprefix("torch."),
    )
    return TransformersRTDetr(model, info, device, dtype, input_size)


def load_detector(
    spec: str,
    *,
    is_default: bool = False,
    device: str = "auto",
    half: bool = True,
    input_size: int = 640,
    compile_model: bool = False,
) -> Detector:
    """Load MODEL: a `.pt` file → ultralytics; a weights directory or hub id → transformers.

    Only the default MODEL may be missing: then a random-weight model of the same architecture
    runs, marked untrained everywhere. Any other unloadable MODEL is an error.
    """
    torch_device = resolve_device(device)
    if spec.endswith(".pt"):
        if not Path(spec).is_file():
            raise ModelLoadError(f"MODEL={spec} does not exist")
        detector: Detector = UltralyticsRTDetr(spec, torch_device, half, input_size)
    else:
        detector = _load_transformers(spec, is_default, torch_device, half, input_size, compile_model)
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
