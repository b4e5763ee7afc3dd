"""A session's recorder: the camera's compressed packets, copied into keyframe-aligned MP4 segments.

The reader hands every video packet to `on_packet` (and each connection's stream to `on_connect`)
on its own thread; they only append to a bounded queue and return. The recorder's thread muxes
them with PyAV, never decoding: a segment starts at a keyframe, timestamps rebased to start at 0,
and is closed at the first keyframe after RECORD_SEGMENT_S, at a reconnect, and when the codec,
size or extradata change. It is written as `<name>.mp4.part`, closed (no fsync: the OS writes it
back), renamed to `<name>.mp4` and recorded in the index.

What can go wrong costs whole segments, counted, never the reader's time:
- the queue is full (a slow disk): packets are dropped from there up to the next keyframe that
  finds room; the segment being written is closed where the gap starts.
- a file cannot be written (folder gone or unwritable, disk full) or indexed: that segment is
  deleted and counted; the next is tried at the first keyframe RECORD_SEGMENT_S later, until one
  succeeds (`failing` and `last_error` say so meanwhile).
- no keyframe for RECORD_SEGMENT_MAX_S: the segment is closed at that bound, and the packets up
  to the next keyframe are not recorded (a segment must start with one to play).
"""

from __future__ import annotations

import collections
import io
import logging
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import av

from rtdetr_service.core.logs import LogContext, current_log_context, log_context, redact
from rtdetr_service.core.types import VideoPacket, VideoTemplate
from rtdetr_service.outputs.recordings.index import RecordingIndex, Segment
from rtdetr_service.outputs.recordings.settings import RecordingSettings

log = logging.getLogger(__name__)

RECORDINGS_DIR = "recordings"
PART_SUFFIX = ".part"
_DEFAULT_RATE = 30.0  # packets a second assumed for the queue's bound until the stream says its rate
_MIN_QUEUE = 16
_GAP = object()  # in the queue: packets were dropped here
_IDLE = object()  # from the queue: nothing came for a while
_SLUG = re.compile(r"[^A-Za-z0-9._-]+")


def slug(camera: str | None, session_id: str) -> str:
    """The folder of a camera's segments: its name made safe for a path, else the session id."""
    safe = _SLUG.sub("_", camera or "").strip("._-")[:64]
    return safe or session_id


def segment_path(camera: str | None, session_id: str, start: float) -> str:
    """`recordings/<camera>/<YYYY-MM-DD UTC>/<session_id>-<start_ms>.mp4`, relative to DATA_DIR."""
    day = datetime.fromtimestamp(start, timezone.utc).strftime("%Y-%m-%d")
    return f"{RECORDINGS_DIR}/{slug(camera, session_id)}/{day}/{session_id}-{int(start * 1000)}.mp4"


def _words(exc: BaseException) -> str:
    text = str(exc).strip().replace("\n", " ") or type(exc).__name__
    return redact(text)[:300]


@dataclass(frozen=True, slots=True)
class RecorderStats:
    """One recorder's figures, read by the session's status and /metrics."""

    mode: str
    segments: int  # segments written and indexed
    bytes: int  # what they weigh
    dropped_segments: int  # pieces of video lost: a queue gap, or a segment that could not be written
    dropped_packets: int  # packets never written (queue full, or while the disk failed)
    skipped_packets: int  # packets waiting for a keyframe to start a segment on, or without timestamps
    queued: int
    failing: bool
    last_error: str | None
    writing: bool  # a segment is open now

    def as_dict(self) -> dict:
        return {
            "mode": self.mode,
            "state": "failing" if self.failing else "recording" if self.writing else "waiting",
            "segments": self.segments,
            "bytes": self.bytes,
            "dropped_segments": self.dropped_segments,
            "dropped_packets": self.dropped_packets,
            "skipped_packets": self.skipped_packets,
            "queued": self.queued,
            "failing": self.failing,
            "last_error": self.last_error,
        }


def _copy_stream(container: av.container.OutputContainer, template: VideoTemplate) -> av.video.stream.VideoStream:
    """A stream in `container` for the template's packets, copied as they are.

    Made from a template stream, so the codec context is marked as initialised and never opened:
    `add_stream(codec)` alone gets an encoder (libx264, libx265) that PyAV opens when muxing
    starts, which cost every segment tens of MB of encoder buffers and their CPU for nothing; freed
    on another thread each time, those buffers grew the resident set by megabytes a segment
    (glibc's heaps kept the pages: bench/recorder_memory.py)."""
    scratch = av.open(io.BytesIO(), "w", format="mp4")  # never started: nothing is written or opened
    try:
        model = scratch.add_stream(template.codec)
        stream = container.add_stream_from_template(model)
    finally:
        scratch.close()
    context = stream.codec_context
    context.width, context.height = template.width, template.height
    context.time_base = stream.time_base = template.time_base
    if template.extradata:
        context.extradata = template.extradata
    return stream


class _SegmentFile:
    """One segment being muxed into its `.part` file."""

    def __init__(self, data_dir: Path, relative: str, template: VideoTemplate, first: VideoPacket) -> None:
        self.relative = relative
        self.final = data_dir / relative
        self.part = self.final.with_name(self.final.name + PART_SUFFIX)
        self.template = template
        self.start_wall = first.wall
        self.t0 = first.dts if first.dts is not None else first.pts  # rebased to 0
        self.first_pts = first.pts if first.pts is not None else first.dts
        self.last_dts: int | None = None
        self.max_pts = self.first_pts
        self.last_step = 0  # dts step of the latest packet, the duration given to the last one
        self.packets = 0
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.part), "w", format="mp4")
        try:
            self._stream = _copy_stream(self._container, template)
        except BaseException:
            self.abandon()
            raise

    def elapsed(self, packet: VideoPacket) -> float:
        """Seconds of video from the segment's first packet to this one (by wall clock without timestamps)."""
        if packet.pts is None or self.first_pts is None:
            return packet.wall - self.start_wall
        return float((packet.pts - self.first_pts) * packet.time_base)

    def accepts(self, packet: VideoPacket) -> bool:
        """Whether the packet's timestamps go on after what was written (the muxer refuses others)."""
        dts = packet.dts if packet.dts is not None else packet.pts
        return dts is not None and (self.last_dts is None or dts > self.last_dts) and dts >= self.t0

    def write(self, packet: VideoPacket) -> None:
        dts = packet.dts if packet.dts is not None else packet.pts
        pts = packet.pts if packet.pts is not None else dts
        out = av.Packet(packet.data)
        out.stream = self._stream
        out.time_base = packet.time_base
        out.dts = dts - self.t0
        out.pts = pts - self.t0
        out.is_keyframe = packet.is_keyframe
        if self.last_dts is not None:
            self.last_step = dts - self.last_dts
        self._container.mux(out)
        self.last_dts = dts
        self.max_pts = max(self.max_pts, pts)
        self.packets += 1

    def end_wall(self) -> float:
        """The wall clock at the end of the last packet's display."""
        step = self.last_step
        if self.template.average_rate:
            step = float(1 / self.template.average_rate / self.template.time_base)
        return self.start_wall + float((self.max_pts - self.first_pts + step) * self.template.time_base)

    def finish(self) -> int:
        """Close the file (the index of MP4 is written now) and give it its final name; its size."""
        self._container.close()
        size = self.part.stat().st_size
        os.replace(self.part, self.final)
        return size

    def abandon(self) -> None:
        """Close what can be closed and delete the part file; never raises."""
        try:
            self._container.close()
        except Exception:  # noqa: BLE001 - a failing disk fails the close too; the file goes anyway
            log.debug("closing an abandoned segment failed", exc_info=True)
        try:
            self.part.unlink(missing_ok=True)
        except OSError:
            log.debug("removing an abandoned segment failed", exc_info=True)


class Recorder:
    """Writes one session's packets into segments on a thread of its own; see the module docstring."""

    def __init__(
        self,
        session_id: str,
        camera: str | None,
        *,
        mode: str,
        settings: RecordingSettings,
        data_dir: Path,
        index: RecordingIndex,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.session_id = session_id
        self.camera = camera
        self.mode = mode
        self._settings = settings
        self._data_dir = Path(data_dir)
        self._index = index
        self._clock = clock
        self._cond = threading.Condition()
        self._queue: collections.deque = collections.deque()
        self._capacity = self._capacity_for(None)
        self._dropping = False
        self._stop = threading.Event()
        self._deadline = math.inf  # once stopping, nothing queued is written after this (monotonic)
        self._thread = threading.Thread(target=self._run, name=f"recorder-{session_id[:8]}", daemon=True)
        self._log_context = LogContext()
        # Writer thread only.
        self._template: VideoTemplate | None = None
        self._segment: _SegmentFile | None = None
        self._retry_after: float | None = None  # wall clock before which a failed disk is not tried again
        self._last_packet = time.monotonic()
        # Counters, read from other threads.
        self.segments = 0
        self.bytes = 0
        self.dropped_segments = 0
        self.dropped_packets = 0
        self.skipped_packets = 0
        self.failing = False
        self.last_error: str | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._log_context = current_log_context()
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> bool:
        """Write what is queued (at most `timeout` s), close the open segment, end; idempotent."""
        with self._cond:
            self._stop.set()
            self._deadline = time.monotonic() + timeout
            self._cond.notify()
        if self._thread.ident and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end (after stop); True if it has, or never started."""
        if self._thread.ident:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- reader side (never blocks) -------------------------------------------------------------

    def on_connect(self, template: VideoTemplate) -> None:
        """A new connection (or a changed stream): what follows goes into a new segment."""
        with self._cond:
            self._capacity = self._capacity_for(template)
            self._queue.append(template)
            self._cond.notify()

    def on_packet(self, packet: VideoPacket) -> None:
        """Queue one packet; when the queue is full, drop up to the next keyframe that finds room."""
        with self._cond:
            if self._dropping:
                if not (packet.is_keyframe and len(self._queue) < self._capacity):
                    self.dropped_packets += 1
                    return
                self._dropping = False
            elif len(self._queue) >= self._capacity:
                self._dropping = True
                self.dropped_packets += 1
                self._queue.append(_GAP)
                self._cond.notify()
                return
            self._queue.append(packet)
            self._cond.notify()

    def _capacity_for(self, template: VideoTemplate | None) -> int:
        rate = float(template.average_rate) if template is not None and template.average_rate else _DEFAULT_RATE
        return max(_MIN_QUEUE, math.ceil(self._settings.record_queue_s * rate))

    def stats(self) -> RecorderStats:
        with self._cond:
            queued = len(self._queue)
        return RecorderStats(
            mode=self.mode,
            segments=self.segments,
            bytes=self.bytes,
            dropped_segments=self.dropped_segments,
            dropped_packets=self.dropped_packets,
            skipped_packets=self.skipped_packets,
            queued=queued,
            failing=self.failing,
            last_error=self.last_error,
            writing=self._segment is not None,
        )

    # -- writer thread --------------------------------------------------------------------------

    def _run(self) -> None:
        with log_context(self._log_context):
            try:
                while (item := self._take()) is not None:
                    self._handle(item)
            except Exception as exc:  # noqa: BLE001 - a bug costs the recording, said in words, not the session
                log.exception("recorder of session %s crashed", self.session_id)
                self.failing, self.last_error = True, f"recorder crashed: {_words(exc)}"
            finally:
                self._close_segment()

    def _take(self):
        """The next item, _IDLE after half a second without one; None once stopped and drained (or
        past the stop's deadline)."""
        with self._cond:
            if not self._queue:
                if self._stop.is_set():
                    return None
                self._cond.wait(0.5)
                if not self._queue:
                    return None if self._stop.is_set() else _IDLE
            if self._stop.is_set() and time.monotonic() > self._deadline:
                self.dropped_packets += sum(isinstance(item, VideoPacket) for item in self._queue)
                self._queue.clear()
                return None
            return self._queue.popleft()

    def _handle(self, item) -> None:
        if item is _IDLE:
            # A camera that went silent (the reader waits READ_TIMEOUT_S, then reconnects): the
            # segment is finished now rather than left open, unplayable, for as long as it is away.
            if self._segment is not None and time.monotonic() - self._last_packet >= self._settings.record_segment_s:
                self._close_segment()
        elif item is _GAP:
            self.dropped_segments += 1
            log.warning("recording: the disk cannot keep up; packets dropped up to the next keyframe")
            self._close_segment()
        elif isinstance(item, VideoTemplate):
            self._close_segment()
            self._template = item
        else:
            self._last_packet = time.monotonic()
            self._packet(item)

    def _packet(self, packet: VideoPacket) -> None:
        segment = self._segment
        if segment is not None:
            elapsed = segment.elapsed(packet)
            if packet.is_keyframe and (elapsed >= self._settings.record_segment_s or not segment.accepts(packet)):
                self._close_segment()  # a new segment starts at this keyframe
            elif elapsed >= self._settings.record_segment_max_s:
                self._close_segment()
                log.warning(
                    "recording: no keyframe for %.0f s (RECORD_SEGMENT_MAX_S): segment closed; the video up "
                    "to the next keyframe is not recorded",
                    elapsed,
                )
            elif not segment.accepts(packet):
                self.skipped_packets += 1  # no timestamps, or going back: the muxer would refuse it
                return
            else:
                self._write(segment, packet)
                return
        if self._retry_after is not None and (not packet.is_keyframe or packet.wall < self._retry_after):
            self.dropped_packets += 1  # the disk failed a moment ago: tried again one segment later
            return
        if not packet.is_keyframe or self._template is None or (packet.dts is None and packet.pts is None):
            self.skipped_packets += 1
            return
        self._open(packet)

    def _open(self, first: VideoPacket) -> None:
        relative = segment_path(self.camera, self.session_id, first.wall)
        try:
            self._segment = _SegmentFile(self._data_dir, relative, self._template, first)
        except (OSError, av.error.FFmpegError, ValueError) as exc:
            self._failed(f"cannot create {relative}: {_words(exc)}", first)
            return
        self._write(self._segment, first)

    def _write(self, segment: _SegmentFile, packet: VideoPacket) -> None:
        try:
            segment.write(packet)
        except (OSError, av.error.FFmpegError, ValueError) as exc:
            self._segment = None
            segment.abandon()
            self.dropped_packets += segment.packets + 1
            self._failed(f"cannot write {segment.relative}: {_words(exc)}", packet)

    def _close_segment(self) -> None:
        segment, self._segment = self._segment, None
        if segment is None:
            return
        try:
            size = segment.finish()
        except (OSError, av.error.FFmpegError, ValueError) as exc:
            segment.abandon()
            self.dropped_packets += segment.packets
            self._failed(f"cannot finish {segment.relative}: {_words(exc)}", None)
            return
        template = segment.template
        row = Segment(
            session_id=self.session_id,
            camera=self.camera,
            path=segment.relative,
            start_time=segment.start_wall,
            end_time=segment.end_wall(),
            bytes=size,
            codec=template.codec,
            width=template.width,
            height=template.height,
            mode=self.mode,
        )
        try:
            self._index.add(row, self._clock())
        except Exception as exc:  # noqa: BLE001 - a file no row points to would never be swept: it goes
            segment.final.unlink(missing_ok=True)
            self._failed(f"cannot index {segment.relative}: {_words(exc)}", None)
            return
        self.segments += 1
        self.bytes += size
        self._retry_after = None
        if self.failing:
            log.info("recording: writing segments again")
        self.failing, self.last_error = False, None

    def _failed(self, words: str, packet: VideoPacket | None) -> None:
        """A segment lost to the disk or the index: counted, said, tried again one segment later."""
        self.dropped_segments += 1
        if not self.failing:
            log.warning("recording failing: %s", words)
        self.failing, self.last_error = True, words
        if packet is not None:
            self._retry_after = packet.wall + self._settings.record_segment_s


def remove_parts(root: Path, older_than: float | None = None) -> int:
    """Delete the `.part` files under `root` (a crash mid-segment leaves one, unplayable: it has no
    MP4 index); with `older_than` (Unix s), only those not modified since, as a live writer's are."""
    removed = 0
    if not root.is_dir():
        return 0
    for part in root.rglob(f"*{PART_SUFFIX}"):
        try:
            if older_than is None or part.stat().st_mtime < older_than:
                part.unlink()
                removed += 1
        except OSError:
            log.debug("cannot remove %s", part, exc_info=True)
    return removed
