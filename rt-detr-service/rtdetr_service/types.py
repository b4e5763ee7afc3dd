"""Small frozen data types passed between pipeline stages."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What a viewer needs to know about a stream: size, rate and codec."""

    width: int
    height: int
    fps: float
    codec: str

    def as_dict(self) -> dict:
        return {"width": self.width, "height": self.height, "fps": self.fps, "codec": self.codec}


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded BGR image with its sequence number and decode times."""

    image: np.ndarray
    index: int
    timestamp: float  # wall clock (Unix seconds) when decoded: what clients see
    monotonic: float  # time.monotonic() when decoded: what latency is measured from

    def __post_init__(self) -> None:
        img = self.image
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"Frame image must be HxWx3 uint8 BGR, got {img.dtype} {img.shape}")

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


@dataclass(frozen=True, slots=True)
class Detection:
    """One object: class, box in source pixels (x1, y1, x2, y2) and confidence."""

    class_id: int
    class_name: str
    bbox: tuple[float, float, float, float]
    confidence: float

    def __post_init__(self) -> None:
        x1, y1, x2, y2 = self.bbox
        if not (x2 >= x1 and y2 >= y1):
            raise ValueError(f"bbox must be x1<=x2, y1<=y2, got {self.bbox}")

    def as_dict(self) -> dict:
        return {
            "class_id": self.class_id,
            "class_name": self.class_name,
            "bbox": [round(v, 1) for v in self.bbox],
            "confidence": round(self.confidence, 4),
        }


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the loaded model is, where it runs, and whether its weights are trained."""

    name: str
    backend: str
    device: str
    trained: bool
    class_names: tuple[str, ...] = field(repr=False)
    dtype: str = "float32"

    @property
    def warning(self) -> str | None:
        if self.trained:
            return None
        return (
            "Model weights are NOT trained: detections are random. "
            "Run `make models` (needs internet) or set MODEL to trained RT-DETRv2 weights."
        )

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "backend": self.backend,
            "device": self.device,
            "dtype": self.dtype,
            "trained": self.trained,
            "warning": self.warning,
        }
