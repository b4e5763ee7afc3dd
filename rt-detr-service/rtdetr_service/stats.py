"""Rolling rates and latency percentiles, cheap enough to update per frame."""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np


class RateMeter:
    """Events per second over a sliding window."""

    def __init__(self, window_s: float = 2.0, clock=time.monotonic) -> None:
        self._window = window_s
        self._clock = clock
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def mark(self, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        with self._lock:
            self._times.append(now)
            self._trim(now)

    def rate(self, now: float | None = None) -> float:
        now = self._clock() if now is None else now
        with self._lock:
            self._trim(now)
            n = len(self._times)
            if n < 2:
                return 0.0
            span = max(now - self._times[0], self._times[-1] - self._times[0])
            return round((n - 1) / span, 2) if span > 0 else 0.0

    def _trim(self, now: float) -> None:
        while self._times and self._times[0] < now - self._window:
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
