"""Real-time DETRs behind one narrow method: a batch of BGR frames in, detections in source pixels out.

The models of `transformers` (RT-DETRv2 by default; RT-DETR, D-FINE, DEIMv2, RF-DETR, LW-DETR) run
through torch eager or an exported backend (`backends/`: OpenVINO, ONNX Runtime, TensorRT), with
the same pre- and post-processing on the model's device; ultralytics `RTDETR` serves `.pt`
checkpoints.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rtdetr_service.core.types import Detection, ModelInfo

log = logging.getLogger(__name__)

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
