"""The metrics sink: per-frame latency, alerts and rule hits into Prometheus, inline (no I/O)."""

from __future__ import annotations

import threading
import time

from rtdetr_service.core.results import Published
from rtdetr_service.outputs.base import SinkStats
from rtdetr_service.outputs.prometheus import Metrics


class MetricsSink:
    name = "metrics"

    def __init__(self, metrics: Metrics, clock=time.monotonic) -> None:
        self._metrics = metrics
        self._clock = clock
        self._lock = threading.Lock()  # every session's publisher thread counts here
        self.handled = 0

    def handle(self, item: Published) -> None:
        with self._lock:
            self.handled += 1
        session_id = item.session.session_id
        if item.result is not None:
            self._metrics.frame_latency(session_id, self._clock() - item.result.frame.monotonic)
        for alert in item.alerts:
            self._metrics.alert(alert.class_name, alert.kind)

    def session_ended(self, session_id: str) -> None:
        # Called by the session's publisher after its last item: the series cannot come back.
        self._metrics.forget_session(session_id)

    def close(self, timeout: float = 0.0) -> None:
        pass

    def stats(self) -> SinkStats:
        return SinkStats(name=self.name, handled=self.handled, sent=self.handled)
