"""Rolling rates and latency percentiles, cheap enough to update per frame."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np


class RateMeter:
    """Events per second over the last `window_s` seconds (or since the first event, if sooner).

    Counting over a fixed span keeps slow rates visible: a CPU model at 0.7 inferences per
    second reads 0.7, not 0, and a stalled stage decays to 0 within the window.
    """

    def __init__(self, window_s: float = 5.0, clock=time.monotonic) -> None:
        self._window = window_s
        self._clock = clock
        self._times: deque[float] = deque()
        self._first: float | None = None
        self._lock = threading.Lock()

    def mark(self, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        with self._lock:
            if self._first is None:
                self._first = now
            self._times.append(now)
            self._trim(now)

    def rate(self, now: float | None = None) -> float:
        now = self._clock() if now is None else now
        with self._lock:
            self._trim(now)
            if self._first is None:
                return 0.0
            span = min(self._window, now - self._first)
            if span <= 0:
                return 0.0
            return round(len(self._times) / span, 2)

    def _trim(self, now: float) -> None:
        while self._times and self._times[0] <= now - self._window:
            self._times.popleft()


class LatencyWindow:
    """The last N latencies (seconds), summarised as p50/p99 in milliseconds."""

    def __init__(self, size: int = 1024) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self._values.append(seconds)

    def percentiles_ms(self) -> dict[str, float | None]:
        with self._lock:
            values = np.fromiter(self._values, dtype=np.float64)
        if values.size == 0:
            return {"p50": None, "p99": None}
        p50, p99 = np.percentile(values, [50, 99]) * 1000.0
        return {"p50": round(float(p50), 1), "p99": round(float(p99), 1)}


@dataclass(frozen=True, slots=True)
class SessionStats:
    """One session's figures at one moment: what status, WebSocket `status` and /metrics read."""

    source_fps: float
    inference_fps: float
    published_fps: float
    frames_decoded: int
    frames_inferred: int
    frames_published: int
    dropped_frames: int
    latency_ms: dict
    viewers: int
    reconnects: int
    decode_errors: int
    publish_errors: int
    alerts: int
    events_open: int

    def as_dict(self) -> dict:
        return {
            "source_fps": self.source_fps,
            "inference_fps": self.inference_fps,
            "published_fps": self.published_fps,
            "frames_decoded": self.frames_decoded,
            "frames_inferred": self.frames_inferred,
            "frames_published": self.frames_published,
            "dropped_frames": self.dropped_frames,
            "latency_ms": self.latency_ms,
            "viewers": self.viewers,
            "reconnects": self.reconnects,
            "decode_errors": self.decode_errors,
            "publish_errors": self.publish_errors,
            "alerts": self.alerts,
            "events_open": self.events_open,
        }
