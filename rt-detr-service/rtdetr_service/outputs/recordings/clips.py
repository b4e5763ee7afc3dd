"""Clips and exports: one streamable MP4 cut from the recorded segments, packets copied, never re-encoded.

A clip runs from the keyframe at or before `start` to the last packet (in decode order) at or before
`end`. Its timestamps are the packets' wall times less the first keyframe's, so clip time t is wall
time `ClipStream.start_time + t` everywhere in it, across segments and reconnects alike; that is what
lets a player draw an event's boxes, stored in wall time, over the clip. Where a segment's stamped
start would put its packets before those already sent (two stamps off by the reader's jitter),
they follow one frame after them instead.

Choices, and why:
- A gap between segments (a reconnect, a dropped segment) stays a gap in time: MP4 has no holes, so
  the last frame before it is shown until the first after it. Closing it up would make every box
  after the gap land on the wrong frame.
- A change of codec, size or parameter sets (SPS/PPS) ends the clip at the change: one MP4 track
  has one sample description, and showing the rest needs a second file or a re-encode. Logged.
- Memory: the caller's chunk (`chunk_bytes`) plus what the MP4 muxer holds before it writes a
  fragment — a fragment ends at each keyframe and after FRAGMENT_S at the latest, so at most
  FRAGMENT_S of video (about 1 MB at 4 Mbit/s), held twice while it is handed out. Segments are read
  one at a time, packet by packet.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

log = logging.getLogger(__name__)

FRAGMENT_S = 2.0  # a fragment ends at every keyframe, and after this long at the latest (bounds memory)
_TICKS = 90_000  # the clip's time base, 1/90000 s: what MPEG uses, exact for 25, 30 and 15 fps
_TIME_BASE = Fraction(1, _TICKS)
_MP4_OPTIONS = {
    "movflags": "frag_keyframe+empty_moov+default_base_moof",
    "frag_duration": str(int(FRAGMENT_S * 1_000_000)),
}


@dataclass(frozen=True)
class SegmentFile:
    """One recorded segment: its file and the wall-clock times (Unix s) of its first and last packets."""

    path: Path  # absolute
    start_time: float
    end_time: float


class NothingRecorded(LookupError):
    """No recorded packet falls in the asked range (the words say which range)."""


def clip_range(
    event_start: float, event_end: float | None, newest_segment_end: float, pre_s: float, post_s: float
) -> tuple[float, float]:
    """The wall-clock range of an event's clip: pre-roll before it, post-roll after it; a live event
    (no end yet) runs to the newest recorded segment, with no post-roll since nothing follows it yet."""
    if event_end is None:
        return event_start - pre_s, max(newest_segment_end, event_start)
    return event_start - pre_s, event_end + post_s


def export_range_problem(after: float, before: float, max_s: float, now: float) -> str | None:
    """What is wrong with an export range (Unix s), in words for a 4xx answer; None when it is fine."""
    for name, value in (("after", after), ("before", before)):
        if not math.isfinite(value) or value < 0:
            return f"{name} must be a Unix time in seconds (got {value})"
        if value > 1e11:
            return f"{name}={value:.0f} is in the year 5000 or later: Unix seconds are asked, not milliseconds"
    if before <= after:
        return f"before ({before}) must be later than after ({after})"
    if after >= now:
        return f"after ({after}) is in the future: nothing is recorded yet (it is {now:.0f} now)"
    if before - after > max_s:
        return f"the range is {before - after:.0f} s long; an export may be at most {max_s:.0f} s (RECORD_EXPORT_MAX_S)"
    return None


class ClipStream:
    """The clip's bytes as they are muxed (an iterator of chunks), and `start_time`: the wall time (Unix s)
    of clip time 0, so a frame at clip time t is wall time start_time + t (the first keyframe's time,
    or its decode time where B-frames delay it)."""

    def __init__(self, chunks: Iterator[bytes], packets: Iterator[av.Packet], start_time: float) -> None:
        self._chunks = chunks
        self._packets = packets
        self.start_time = start_time

    def __iter__(self) -> ClipStream:
        return self

    def __next__(self) -> bytes:
        return next(self._chunks)

    def close(self) -> None:
        """Stop early (a client went away): the open segment and the muxer are closed."""
        self._chunks.close()  # type: ignore[attr-defined]
        self._packets.close()  # type: ignore[attr-defined]  (the muxer may never have started)


def clip_chunks(
    segments: Sequence[SegmentFile], start: float, end: float, *, chunk_bytes: int = 256 * 1024
) -> ClipStream:
    """One fragmented MP4 of the range [start, end] (wall-clock Unix s) from these segments, yielded in
    chunks of about `chunk_bytes` as it is muxed. Raises NothingRecorded at once, before any byte,
    when no packet falls in the range; the segments are otherwise opened one at a time as it goes."""
    if not (math.isfinite(start) and math.isfinite(end) and start < end):
        raise ValueError(f"a clip needs finite times, start before end (got {start} .. {end})")
    source = _Source(segments, start, end)
    packets = source.packets()
    first = next(packets, None)
    if first is None:
        raise NothingRecorded(f"nothing was recorded between {_utc(start)} and {_utc(end)}")
    return ClipStream(_muxed(first, packets, chunk_bytes), packets, source.origin)


@dataclass(frozen=True)
class _Format:
    """What one MP4 track can hold: a segment whose format differs cannot follow in the same clip."""

    codec: str
    width: int
    height: int
    extradata: bytes

    @classmethod
    def of(cls, stream: av.video.stream.VideoStream) -> _Format:
        ctx = stream.codec_context
        return cls(ctx.name, ctx.width, ctx.height, bytes(ctx.extradata or b""))

    def __str__(self) -> str:
        return f"{self.codec} {self.width}x{self.height}"


class _Source:
    """The range's packets from the segments in order, their timestamps rebased onto the clip's clock."""

    def __init__(self, segments: Sequence[SegmentFile], start: float, end: float) -> None:
        self._segments = sorted((s for s in segments if s.end_time >= start and s.start_time <= end), key=_start)
        self._start = start
        self._end = end
        self.origin = start  # wall time of clip time 0: the first keyframe's, once it is read
        self._format: _Format | None = None
        self._last_dts: int | None = None  # in ticks, for timestamps that only go forward
        self._frame_ticks = _TICKS // 30  # a frame's duration, measured as packets go by

    def packets(self) -> Iterator[av.Packet]:
        """Every packet of the range, its stream the first segment's, pts/dts/duration in 1/90000 s."""
        for segment in self._segments:
            try:
                container = av.open(str(segment.path))
            except (OSError, av.FFmpegError) as exc:  # deleted by retention meanwhile, or unreadable
                log.warning("clip: segment %s skipped (a gap in the clip): %s", segment.path, exc)
                continue
            try:
                if not container.streams.video:
                    log.warning("clip: segment %s has no video stream; skipped", segment.path)
                    continue
                stream = container.streams.video[0]
                fmt = _Format.of(stream)
                if self._format is not None and fmt != self._format:
                    log.info(
                        "clip ends at %s: the recording changes from %s to %s there",
                        _utc(segment.start_time),
                        self._format,
                        fmt,
                    )
                    return
                try:
                    ended = yield from self._segment_packets(segment, container, stream)
                except (OSError, av.FFmpegError) as exc:  # damaged halfway: what was read stays, then a gap
                    log.warning("clip: segment %s unreadable after some packets (a gap follows): %s", segment.path, exc)
                    ended = False
                if self._last_dts is not None:
                    self._format = self._format or fmt
                if ended:
                    return
            finally:
                container.close()

    def _segment_packets(self, segment: SegmentFile, container, stream) -> Iterator[av.Packet]:
        """One segment's packets of the range; returns True once a packet past `end` was met."""
        demux = container.demux(stream)
        first = _next_packet(demux)
        if first is None:
            return False
        tb = stream.time_base
        first_pts = first.pts if first.pts is not None else first.dts
        skip = self._start - segment.start_time
        if self._last_dts is None and skip > 0:  # the clip begins in this segment: find its keyframe
            demux = _from_keyframe(container, stream, first, first_pts + int(skip / tb), self._start, segment)
        else:
            demux = _chain(first, demux)
        offset: int | None = None
        for packet in demux:
            pts = packet.pts if packet.pts is not None else packet.dts
            dts = packet.dts if packet.dts is not None else pts
            if pts is None:
                continue
            rel_pts, rel_dts = _ticks((pts - first_pts) * tb), _ticks((dts - first_pts) * tb)
            if segment.start_time + rel_dts / _TICKS > self._end:
                return True
            if offset is None:
                offset = self._offset(segment, rel_pts, rel_dts)
            elif offset + rel_dts > self._last_dts:  # a frame's duration, for the next segment's start
                self._frame_ticks = offset + rel_dts - self._last_dts
            if self._last_dts is not None and offset + rel_dts <= self._last_dts:
                log.debug("clip: packet of %s out of order (dts %s); dropped", segment.path, dts)
                continue
            packet.time_base = _TIME_BASE
            packet.pts, packet.dts = offset + rel_pts, offset + rel_dts
            packet.duration = _ticks(packet.duration * tb) if packet.duration else 0
            self._last_dts = packet.dts
            yield packet
        return False

    def _offset(self, segment: SegmentFile, rel_pts: int, rel_dts: int) -> int:
        """Where this segment's clock starts on the clip's: its wall time, or, where a late reader's
        stamp would put it before the packets already sent, right after them."""
        if self._last_dts is None:  # the clip's first packet, a keyframe: its dts is clip time 0
            self.origin = segment.start_time + rel_dts / _TICKS  # before its pts where B-frames delay it
            return -rel_dts
        offset = _ticks(Fraction(segment.start_time) - Fraction(self.origin))
        return max(offset, self._last_dts + self._frame_ticks - rel_dts)


def _from_keyframe(container, stream, first: av.Packet, target: int, start: float, segment: SegmentFile):
    """The segment's packets from the keyframe at or before wall time `start` (stream ticks `target`)."""
    try:
        container.seek(target, backward=True, any_frame=False, stream=stream)
        demux = container.demux(stream)
        packet = _next_packet(demux)
        first_pts = first.pts if first.pts is not None else first.dts
        if packet is not None and packet.is_keyframe and packet.pts is not None and packet.pts <= target:
            return _chain(packet, demux)
        log.debug("clip: seek in %s found no keyframe at or before %s; from its start", segment.path, start)
        container.seek(first_pts, backward=True, any_frame=False, stream=stream)
        demux = container.demux(stream)
        packet = _next_packet(demux)
        return _chain(packet, demux) if packet is not None else iter(())
    except av.FFmpegError as exc:
        raise OSError(f"cannot seek in {segment.path}: {exc}") from exc


def _muxed(first: av.Packet, packets: Iterator[av.Packet], chunk_bytes: int) -> Iterator[bytes]:
    """Mux the packets into one fragmented MP4, handing out its bytes as they come."""
    pipe = _Pipe()
    out = av.open(pipe, "w", format="mp4", options=_MP4_OPTIONS)
    done = False
    try:
        stream = out.add_stream_from_template(first.stream)
        if first.stream.codec_context.name == "hevc":  # the template's own name may be an encoder's
            stream.codec_context.codec_tag = "hvc1"  # parameter sets out of band, as Safari (and Frigate) want it
        packet: av.Packet | None = first
        while packet is not None:
            packet.stream = stream
            out.mux(packet)
            if len(pipe) >= chunk_bytes:
                yield pipe.take()
            packet = next(packets, None)
        out.close()
        done = True
        if len(pipe):
            yield pipe.take()
    finally:
        packets.close()  # type: ignore[attr-defined]
        if not done:  # abandoned or failed: let the muxer go; its error would hide the one that matters
            try:
                out.close()
            except (av.FFmpegError, OSError, ValueError):
                pass


class _Pipe:
    """A write-only file for the muxer: it keeps what was written until it is taken."""

    def __init__(self) -> None:
        self._data = bytearray()

    def write(self, data: bytes) -> int:
        self._data += data
        return len(data)

    def take(self) -> bytes:
        data = bytes(self._data)
        self._data.clear()
        return data

    def __len__(self) -> int:
        return len(self._data)


def _next_packet(demux) -> av.Packet | None:
    """The next packet with data (the demuxer ends with an empty one)."""
    for packet in demux:
        if packet.size:
            return packet
    return None


def _chain(first: av.Packet, demux) -> Iterator[av.Packet]:
    yield first
    for packet in demux:
        if packet.size:
            yield packet


def _ticks(seconds: Fraction) -> int:
    return round(seconds * _TICKS)


def _start(segment: SegmentFile) -> float:
    return segment.start_time


def _utc(t: float) -> str:
    if not math.isfinite(t):
        return str(t)
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))
