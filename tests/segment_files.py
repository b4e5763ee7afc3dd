"""Recorded segments made here, for the clip tests and bench/clip_speed.py: a moving pattern encoded
once with PyAV (libx264 or libx265), then its packets cut at keyframes into MP4 segments by a copying
remux (`add_stream_from_template`), as the recorder writes them, with the wall times it would give."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np

from rtdetr_service.outputs.recordings.clips import SegmentFile

T0 = 1_700_000_000.0  # the wall clock of the first frame


@dataclass(frozen=True)
class Encoded:
    """A pattern encoded once: an MP4 in memory, and its packets' payloads in decode order."""

    encoder: str
    mp4: bytes
    fps: int
    keyint: int
    payloads: tuple[bytes, ...]
    keyframes: tuple[int, ...]  # indices into payloads


def encode_to(
    target: BinaryIO | Path,
    encoder: str = "libx264",
    *,
    width: int = 160,
    height: int = 120,
    fps: int = 15,
    seconds: float = 12.0,
    keyint: int = 15,
    preset: str | None = None,
    bit_rate: int | None = None,
    bframes: int = 0,
    noise: int = 0,
) -> None:
    """Encode a box moving over a gradient into an MP4: `seconds` long, a keyframe every `keyint`
    frames, no B-frames unless asked (most cameras send none); `noise` (a few levels) adds grain that
    changes every frame, so a bit rate is spent as a camera spends it."""
    with av.open(target if isinstance(target, io.IOBase) else str(target), "w", format="mp4") as out:
        stream = out.add_stream(encoder, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        ctx = stream.codec_context
        ctx.gop_size = keyint
        ctx.max_b_frames = bframes
        if bit_rate:
            ctx.bit_rate = bit_rate
        if encoder == "libx264":
            options = {"keyint_min": str(keyint), "sc_threshold": "0"}
        else:
            params = f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes={bframes}:log-level=error"
            options = {"x265-params": params}
        if preset:
            options["preset"] = preset
        ctx.options = options
        for index, image in enumerate(_pattern(width, height, int(seconds * fps), noise)):
            frame = av.VideoFrame.from_ndarray(image, format="yuv420p")
            frame.pts = index
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def _pattern(width: int, height: int, count: int, noise: int) -> Iterator[np.ndarray]:
    """Planar YUV 4:2:0 pictures (luma rows, then the chroma rows): a moving box over a gradient."""
    base = np.full((height * 3 // 2, width), 128, np.uint8)
    base[:height] = np.tile(np.linspace(16, 235, width, dtype=np.uint8), (height, 1))
    grain = np.random.default_rng(1).integers(0, noise + 1, (8, height, width), dtype=np.uint8) if noise else None
    side = max(8, height // 6) // 2 * 2
    for index in range(count):
        image = base.copy()
        x = (index * 3) % (width - side) // 2 * 2
        y = (index * 2) % (height - side) // 2 * 2
        image[y : y + side, x : x + side] = 200
        if grain is not None:
            image[:height] += grain[index % len(grain)]
        yield image


def encode_pattern(encoder: str = "libx264", **options) -> Encoded:
    """The pattern encoded in memory (options as `encode_to`), with its packets' payloads."""
    buffer = io.BytesIO()
    encode_to(buffer, encoder, **options)
    mp4 = buffer.getvalue()
    payloads, keyframes = [], []
    with av.open(io.BytesIO(mp4)) as src:
        for packet in src.demux(src.streams.video[0]):
            if packet.size:
                if packet.is_keyframe:
                    keyframes.append(len(payloads))
                payloads.append(bytes(packet))
    return Encoded(encoder, mp4, options.get("fps", 15), options.get("keyint", 15), tuple(payloads), tuple(keyframes))


def write_segments(
    source: Encoded | Path,
    folder: Path,
    *,
    segment_s: float = 4.0,
    t0: float = T0,
    gaps: Sequence[tuple[int, float]] = (),
) -> list[SegmentFile]:
    """Cut the packets into keyframe-aligned MP4 segments of about `segment_s` in `folder`, each with
    timestamps from 0 and its wall-clock start and end. `gaps`: (segment number, seconds) — that segment
    and every later one start so much later, as after a reconnect (its packets still start at 0)."""
    folder.mkdir(parents=True, exist_ok=True)
    shift = dict(gaps)
    segments: list[SegmentFile] = []
    delay = 0.0
    with av.open(io.BytesIO(source.mp4) if isinstance(source, Encoded) else str(source)) as src:
        stream = src.streams.video[0]
        tb = stream.time_base
        out, path = None, folder
        first_pts = last_pts = 0
        for packet in src.demux(stream):
            if not packet.size:
                continue
            if packet.is_keyframe and (out is None or (packet.pts - first_pts) * tb >= segment_s):
                if out is not None:
                    segments.append(_close(out, path, t0, delay, first_pts, last_pts, tb))
                delay += shift.get(len(segments), 0.0)
                first_pts = packet.pts
                path = folder / f"session-{len(segments):03d}.mp4"
                out = av.open(str(path), "w", format="mp4")
                copy = out.add_stream_from_template(stream)
            last_pts = packet.pts
            packet.pts -= first_pts
            packet.dts -= first_pts
            packet.stream = copy
            out.mux(packet)
        segments.append(_close(out, path, t0, delay, first_pts, last_pts, tb))
    return segments


def _close(out, path: Path, t0: float, delay: float, first_pts: int, last_pts: int, tb: Fraction) -> SegmentFile:
    out.close()
    return SegmentFile(path, t0 + delay + float(first_pts * tb), t0 + delay + float(last_pts * tb))


def decoded_frames(data: bytes) -> list[av.VideoFrame]:
    """Every frame of an MP4, decoded."""
    with av.open(io.BytesIO(data)) as src:
        return list(src.decode(video=0))


def clip_packets(data: bytes) -> tuple[list[bytes], list[float], tuple[str, int, int]]:
    """An MP4's packets (payloads, presentation times in s) and its codec, width and height."""
    with av.open(io.BytesIO(data)) as src:
        stream = src.streams.video[0]
        payloads, times = [], []
        for packet in src.demux(stream):
            if packet.size:
                payloads.append(bytes(packet))
                times.append(float(packet.pts * stream.time_base))
        info = (stream.codec_context.name, stream.codec_context.width, stream.codec_context.height)
    return payloads, times, info
