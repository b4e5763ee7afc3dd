"""A local video file standing in for a camera: the service's own reader, told to read files."""

from __future__ import annotations

import time

import av

from rtdetr_service.ingest.reader import StreamReader


class FileCamera(StreamReader):
    """StreamReader on a local file (the `file` protocol), looped like `ffmpeg -stream_loop -1`
    and, when `paced`, read at its frame rate like `ffmpeg -re`.

    A paced frame counts as arrived when it was due, so a reader that falls behind its clock
    shows in every latency; the timeline runs on across loops.
    """

    def __init__(self, url: str, *, paced: bool = True, **reader_options) -> None:
        super().__init__(url, **reader_options)
        self._paced = paced
        self._time_base = 0.0  # seconds per pts unit of this pass's stream (0: unknown)
        self._interval = 0.0  # seconds per frame at its nominal rate (0: unknown)
        self._pass_start: tuple[float, float] | None = None  # (monotonic, pts in s) of this pass's first frame
        self._paced_until: float | None = None  # when the last paced frame was due

    def _protocol_whitelist(self) -> str:
        return "file"

    def _restarts_at_end(self) -> bool:
        return True

    def _start_decoding(self, stream: av.video.stream.VideoStream) -> None:
        self._time_base = float(stream.time_base) if stream.time_base else 0.0
        rate = stream.average_rate or stream.guessed_rate
        self._interval = 1.0 / float(rate) if rate else 0.0
        self._pass_start = None

    def _emit(self, picture: av.VideoFrame) -> bool:
        due = self._due(picture)
        if due is None:
            return super()._emit(picture)
        delay = due - time.monotonic()
        if delay > 0 and self._stop.wait(delay):
            return False
        wall, now = time.time(), time.monotonic()
        return self._deliver(picture, wall - max(0.0, now - due), min(now, due))

    def _due(self, picture: av.VideoFrame) -> float | None:
        """When `picture` is due on the monotonic clock; None when unpaced or its time is unknown."""
        if not self._paced or picture.pts is None or not self._time_base:
            return None
        pts = picture.pts * self._time_base
        if self._pass_start is None:
            # A looped file continues the previous pass's timeline, so a reader that fell behind
            # does not catch up at the loop point.
            previous = self._paced_until
            self._pass_start = (previous + self._interval if previous is not None else time.monotonic(), pts)
        clock_start, pts_start = self._pass_start
        self._paced_until = clock_start + (pts - pts_start)
        return self._paced_until
