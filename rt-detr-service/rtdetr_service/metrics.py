"""Prometheus metrics: one registry per app, per-session figures read at scrape time."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .session import Session

LATENCY_BUCKETS = (0.01, 0.02, 0.033, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.0, 5.0)


class _SessionCollector(Collector):
    def __init__(self, sessions: Callable[[], Iterable[Session]]) -> None:
        self._sessions = sessions

    def collect(self):
        gauges = {
            "source_fps": GaugeMetricFamily(
                "rtdetr_session_source_fps", "Frames per second decoded from the stream", labels=["session"]
            ),
            "inference_fps": GaugeMetricFamily(
                "rtdetr_session_inference_fps", "Frames per second run through the model", labels=["session"]
            ),
            "published_fps": GaugeMetricFamily(
                "rtdetr_session_published_fps", "Frames per second published to viewers", labels=["session"]
            ),
            "viewers": GaugeMetricFamily("rtdetr_session_viewers", "Connected WebSocket viewers", labels=["session"]),
        }
        counters = {
            "frames_decoded": CounterMetricFamily(
                "rtdetr_session_frames_decoded", "Frames decoded", labels=["session"]
            ),
            "dropped_frames": CounterMetricFamily(
                "rtdetr_session_frames_dropped", "Frames skipped to stay live", labels=["session"]
            ),
            "reconnects": CounterMetricFamily("rtdetr_session_reconnects", "Stream reconnections", labels=["session"]),
            "decode_errors": CounterMetricFamily(
                "rtdetr_session_decode_errors", "Damaged packets skipped by the decoder", labels=["session"]
            ),
            "publish_errors": CounterMetricFamily(
                "rtdetr_session_publish_errors", "Frames whose drawing, JPEG or sending failed", labels=["session"]
            ),
        }
        states = GaugeMetricFamily("rtdetr_sessions", "Sessions by state", labels=["state"])
        by_state: dict[str, int] = {}
        for session in self._sessions():
            stats = session.stats()
            by_state[session.state.value] = by_state.get(session.state.value, 0) + 1
            for key, family in gauges.items():
                family.add_metric([session.id], stats[key])
            for key, family in counters.items():
                family.add_metric([session.id], stats[key])
        for state, count in by_state.items():
            states.add_metric([state], count)
        yield states
        yield from gauges.values()
        yield from counters.values()


class Metrics:
    """The service's metrics; tests and each app get their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.latency = Histogram(
            "rtdetr_frame_latency_seconds",
            "Decode-to-publish latency per frame",
            ["session"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "rtdetr_batch_size",
            "Frames per forward pass",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.inference_seconds = Histogram(
            "rtdetr_inference_seconds",
            "Forward pass time incl. pre/post-processing",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.alerts = Counter("rtdetr_alerts", "Alerts raised", ["class_name"], registry=self.registry)
        self.model_info = Gauge(
            "rtdetr_model_info",
            "The loaded model (value 1); trained=false means random weights",
            ["name", "backend", "device", "dtype", "trained"],
            registry=self.registry,
        )

    def watch_sessions(self, sessions: Callable[[], Iterable[Session]]) -> None:
        self.registry.register(_SessionCollector(sessions))

    def frame_latency(self, session_id: str, seconds: float) -> None:
        self.latency.labels(session_id).observe(seconds)

    def batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference_seconds.observe(seconds)

    def alert(self, class_name: str) -> None:
        self.alerts.labels(class_name).inc()

    def forget_session(self, session_id: str) -> None:
        try:
            self.latency.remove(session_id)
        except KeyError:
            pass
