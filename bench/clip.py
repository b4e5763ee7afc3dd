"""The benchmark clip: synthetic moving scenes encoded as camera-like H.264 with PyAV."""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

log = logging.getLogger(__name__)


def _texture(height: int, width: int, seed: int = 7) -> np.ndarray:
    """A static, mildly noisy background twice the frame size, panned to give the encoder real work."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (height // 8 + 1, width // 4 + 1, 3), dtype=np.uint8)
    big = cv2.resize(small, (width * 2, height * 2), interpolation=cv2.INTER_CUBIC)
    ys = np.linspace(0, 255, height * 2, dtype=np.float32)[:, None]
    gradient = np.repeat(ys, width * 2, axis=1)[..., None]
    return cv2.addWeighted(big, 0.2, np.broadcast_to(gradient, big.shape).astype(np.uint8), 0.8, 0)


def synthetic_frames(width: int, height: int, fps: int, seconds: float):
    """BGR frames: a panning background with a few moving, person- and car-sized boxes and text."""
    background = _texture(height, width)
    count = int(round(fps * seconds))
    rng = np.random.default_rng(3)
    movers = [
        (
            rng.uniform(0.05, 0.8),
            rng.uniform(0.1, 0.7),
            rng.uniform(-0.15, 0.15),
            rng.uniform(-0.1, 0.1),
            rng.uniform(0.05, 0.2),
            rng.uniform(0.1, 0.35),
            tuple(int(c) for c in rng.integers(30, 230, 3)),
        )
        for _ in range(6)
    ]
    for i in range(count):
        t = i / fps
        dx = int((np.sin(t * 0.4) * 0.5 + 0.5) * width)
        dy = int((np.cos(t * 0.3) * 0.5 + 0.5) * height)
        frame = background[dy : dy + height, dx : dx + width].copy()
        for x, y, vx, vy, w, h, colour in movers:
            cx = (x + vx * t) % 1.0
            cy = (y + vy * t) % 1.0
            p1 = (int(cx * width), int(cy * height))
            p2 = (int((cx + w) * width), int((cy + h) * height))
            cv2.rectangle(frame, p1, p2, colour, -1)
            cv2.circle(frame, (p1[0] + (p2[0] - p1[0]) // 2, p1[1]), max(2, (p2[0] - p1[0]) // 3), colour, -1)
        cv2.putText(
            frame,
            f"bench {i:06d}",
            (width // 40, height // 12),
            cv2.FONT_HERSHEY_SIMPLEX,
            max(0.4, height / 700),
            (255, 255, 255),
            max(1, height // 400),
            cv2.LINE_AA,
        )
        yield frame


def make_clip(path: Path, *, width: int, height: int, fps: int, seconds: float) -> Path:
    """Encode the synthetic clip like an IP camera does: H.264, yuv420p, no B-frames, 1 s GOP."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.stem + ".partial" + path.suffix)
    with av.open(str(partial), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = fps
        stream.codec_context.time_base = Fraction(1, fps)
        stream.options = {"preset": "veryfast", "tune": "zerolatency", "crf": "23", "maxrate": "8M", "bufsize": "16M"}
        # One slice per picture, as most cameras send: with zerolatency x264 cuts one slice per
        # encoder thread, so the clip (and how well slice-threaded decoding can spread it) would
        # otherwise depend on the cores of the machine that encoded it.
        stream.codec_context.thread_count = 1
        for image in synthetic_frames(width, height, fps, seconds):
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    partial.replace(path)
    return path


def clip_info(path: Path) -> dict:
    """Width, height, fps, frame count and duration of a clip's first video stream."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        if stream.duration:
            duration = float(stream.duration * stream.time_base)
        else:
            duration = float(container.duration or 0) / 1e6
        return {
            "path": str(path),
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
            "fps": float(rate) if rate else 0.0,
            "codec": stream.codec_context.name,
            "frames": stream.frames,
            "seconds": round(duration, 2),
            "bitrate_kbps": round((container.bit_rate or 0) / 1000),
        }


def cached_clip(cache: Path, *, width: int, height: int, fps: int, seconds: float) -> Path:
    """The synthetic clip for these parameters, encoded once and reused."""
    path = cache / f"synthetic_{width}x{height}_{fps}fps_{seconds:g}s_1slice.mp4"
    if not path.exists():
        log.info("encoding %s (once)", path)
        make_clip(path, width=width, height=height, fps=fps, seconds=seconds)
    return path
