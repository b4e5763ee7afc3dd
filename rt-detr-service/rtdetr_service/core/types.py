"""Small frozen data types passed between pipeline stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from rtdetr_service.core.geometry import anchor


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
class VideoTemplate:
    """What a muxer needs to write a connection's video packets without decoding them: the codec,
    the picture size, the timestamps' unit, the nominal rate and the codec's extradata (SPS/PPS)."""

    codec: str
    width: int
    height: int
    time_base: Fraction
    average_rate: Fraction | None
    extradata: bytes

    def same_stream(self, other: VideoTemplate | None) -> bool:
        """Whether packets of `other` may go on in one file with this one's."""
        return (
            other is not None
            and (self.codec, self.width, self.height, self.extradata)
            == (other.codec, other.width, other.height, other.extradata)
            and self.time_base == other.time_base
        )


@dataclass(frozen=True, slots=True)
class VideoPacket:
    """One compressed video packet as the camera sent it (bytes copied out of FFmpeg's buffer),
    its timestamps in `time_base`, and the wall clock (Unix s) when the reader received it."""

    data: bytes
    pts: int | None
    dts: int | None
    time_base: Fraction
    is_keyframe: bool
    wall: float


def _checked(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"Frame image must be HxWx3 uint8 BGR, got {image.dtype} {image.shape}")
    return image


class Frame:
    """One decoded picture with its sequence number and decode times.

    The BGR array is made on first use of `image`: a live stream must decode every frame, but a
    frame replaced in its slot before the model takes it never pays for the colour conversion
    (which costs as much as decoding).
    """

    __slots__ = ("index", "timestamp", "monotonic", "width", "height", "_image", "_decoded")

    def __init__(
        self,
        image: np.ndarray | None,
        index: int,
        timestamp: float,
        monotonic: float,
        *,
        decoded=None,
    ) -> None:
        self.index = index
        self.timestamp = timestamp  # wall clock (Unix seconds) when decoded: what clients see
        self.monotonic = monotonic  # time.monotonic() when decoded: what latency is measured from
        self._decoded = decoded  # an av.VideoFrame not yet converted
        if image is not None:
            self._image = _checked(image)
            self.height, self.width = int(image.shape[0]), int(image.shape[1])
        elif decoded is not None:
            self._image = None
            self.width, self.height = int(decoded.width), int(decoded.height)
        else:
            raise ValueError("Frame needs an image or a decoded frame")

    @property
    def image(self) -> np.ndarray:
        """HxWx3 uint8 BGR; converted from the decoded frame the first time it is asked for."""
        if self._image is None:
            self._image = _checked(self._decoded.to_ndarray(format="bgr24"))
            self._decoded = None
        return self._image

    def convert(self) -> None:
        """Make the BGR array now, on the calling thread."""
        self.image  # noqa: B018 - the property does the work


@dataclass(frozen=True, slots=True)
class Detection:
    """One object: class, box in source pixels (x1, y1, x2, y2), confidence, and the id of its
    track once the session's tracker has confirmed one (None before)."""

    class_id: int
    class_name: str
    bbox: tuple[float, float, float, float]
    confidence: float
    track_id: int | None = None

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
            "track_id": self.track_id,
        }

    @property
    def anchor(self) -> tuple[float, float]:
        """Where the object stands: the bottom-centre of its box, in source pixels."""
        return anchor(self.bbox)


@dataclass(frozen=True, slots=True)
class FrameResult:
    """What the inference worker hands back for one frame: the frame and its detections."""

    session_id: str
    frame: Frame
    detections: tuple[Detection, ...]
    inference_s: float

    @property
    def index(self) -> int:
        return self.frame.index

    @property
    def timestamp(self) -> float:
        return self.frame.timestamp

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the source picture."""
        return self.frame.width, self.frame.height


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the loaded model is, where it runs, and whether its weights are trained."""

    name: str
    backend: str
    device: str
    trained: bool
    class_names: tuple[str, ...] = field(repr=False)
    dtype: str = "float32"
    backend_reason: str = ""  # why this backend and precision (BACKEND=auto says what it found)
    cpu_threads: int | None = None  # inference threads on the CPU (None: the network runs elsewhere)

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
            "backend_reason": self.backend_reason,
            "cpu_threads": self.cpu_threads,
            "trained": self.trained,
            "warning": self.warning,
        }
