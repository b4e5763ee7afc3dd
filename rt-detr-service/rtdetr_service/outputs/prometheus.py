"""Prometheus metrics: one registry per app, per-session figures read at scrape time."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

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
    from rtdetr_service.core.results import SessionSnapshot
    from rtdetr_service.outputs.base import Sink

LATENCY_BUCKETS = (0.01, 0.02, 0.033, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.0, 5.0)


class _SessionCollector(Collector):
    """Reads each session's typed snapshot at scrape time (the same one status documents use)."""

    def __init__(self, snapshots: Callable[[], Iterable[SessionSnapshot]]) -> None:
        self._snapshots = snapshots

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
                "rtdetr_session_publish_errors", "Frames whose analysis or an output failed", labels=["session"]
            ),
            "alerts": CounterMetricFamily("rtdetr_session_alerts", "Alerts raised", labels=["session"]),
        }
        events_open = GaugeMetricFamily(
            "rtdetr_session_events_open", "Tracked objects whose event has not ended", labels=["session"]
        )
        line_counts = CounterMetricFamily(
            "rtdetr_line_crossings",
            "Tracked objects that crossed a line, by direction and class",
            labels=["session", "line", "direction", "class_name"],
        )
        zone_current = GaugeMetricFamily(
            "rtdetr_zone_objects", "Tracked objects in a zone now, by class", labels=["session", "zone", "class_name"]
        )
        zone_entered = CounterMetricFamily(
            "rtdetr_zone_entries",
            "Tracked objects that entered a zone, by class",
            labels=["session", "zone", "class_name"],
        )
        rule_hits = CounterMetricFamily(
            "rtdetr_rule_hits", "Times a zone or line rule fired", labels=["session", "rule"]
        )
        recording = {
            "segments": CounterMetricFamily(
                "rtdetr_recording_segments", "Recording segments written and indexed", labels=["session"]
            ),
            "bytes": CounterMetricFamily(
                "rtdetr_recording_bytes", "Bytes of recording segments written", labels=["session"]
            ),
            "dropped_segments": CounterMetricFamily(
                "rtdetr_recording_dropped_segments",
                "Pieces of video not recorded: the disk could not keep up, or failed",
                labels=["session"],
            ),
            "dropped_packets": CounterMetricFamily(
                "rtdetr_recording_dropped_packets", "Video packets not recorded", labels=["session"]
            ),
        }
        recording_failing = GaugeMetricFamily(
            "rtdetr_recording_failing", "1 while a session's segments cannot be written", labels=["session"]
        )
        states = GaugeMetricFamily("rtdetr_sessions", "Sessions by state", labels=["state"])
        by_state: dict[str, int] = {}
        for snap in self._snapshots():
            sid = snap.session_id
            stats = snap.stats.as_dict()
            by_state[snap.state] = by_state.get(snap.state, 0) + 1
            for key, family in gauges.items():
                family.add_metric([sid], stats[key])
            for key, family in counters.items():
                family.add_metric([sid], stats[key])
            events_open.add_metric([sid], stats["events_open"])
            if snap.recording is not None:
                for key, family in recording.items():
                    family.add_metric([sid], snap.recording[key])
                recording_failing.add_metric([sid], int(snap.recording["failing"]))
            for line, directions in snap.counts.get("lines", {}).items():
                for direction, by_class in directions.items():
                    for name, n in by_class.items():
                        line_counts.add_metric([sid, line, direction, name], n)
            for zone, figures in snap.counts.get("zones", {}).items():
                for name, n in figures.get("current", {}).items():
                    zone_current.add_metric([sid, zone, name], n)
                for name, n in figures.get("entered", {}).items():
                    zone_entered.add_metric([sid, zone, name], n)
            for rule, n in snap.counts.get("rules", {}).items():
                rule_hits.add_metric([sid, rule], n)
        for state, count in by_state.items():
            states.add_metric([state], count)
        yield states
        yield from gauges.values()
        yield from counters.values()
        yield from (events_open, line_counts, zone_current, zone_entered, rule_hits)
        yield from recording.values()
        yield recording_failing


class _SinkCollector(Collector):
    """Per-output counters: what each sink took, sent, failed and dropped, and its queue."""

    def __init__(self, sinks: Callable[[], Sequence[Sink]]) -> None:
        self._sinks = sinks

    def collect(self):
        families = {
            "sent": CounterMetricFamily("rtdetr_sink_sent", "Items an output delivered", labels=["sink"]),
            "failed": CounterMetricFamily("rtdetr_sink_failed", "Items an output failed to deliver", labels=["sink"]),
            "dropped": CounterMetricFamily(
                "rtdetr_sink_dropped", "Items an output dropped because it could not keep up", labels=["sink"]
            ),
            "restarts": CounterMetricFamily(
                "rtdetr_sink_restarts", "Times an output's writer loop crashed and was restarted", labels=["sink"]
            ),
            "queued": GaugeMetricFamily(
                "rtdetr_sink_queue_depth", "Items waiting in an output's queue", labels=["sink"]
            ),
        }
        vlm = {
            key: CounterMetricFamily(f"rtdetr_vlm_{key}", words, labels=["purpose"])
            for key, words in (
                ("asked", "Requests the VLM stage queued, by purpose (describe, rule)"),
                ("answered", "Requests the vision-language model answered, by purpose"),
                ("failed", "Requests that got no answer (the model's error, in words in GET /api/v1/outputs)"),
                ("dropped", "Requests dropped from the VLM stage's full queue, by purpose"),
            )
        }
        in_flight = GaugeMetricFamily("rtdetr_vlm_in_flight", "Requests the VLM stage has with the model now")
        for sink in self._sinks():
            stats = sink.stats()
            for key, family in families.items():
                family.add_metric([stats.name], getattr(stats, key))
            for purpose, counts in stats.detail.get("purposes", {}).items():  # the VLM stage's
                for key, family in vlm.items():
                    family.add_metric([purpose], counts[key])
            if "in_flight" in stats.detail:
                in_flight.add_metric([], stats.detail["in_flight"])
        yield from families.values()
        yield from vlm.values()
        yield in_flight


class _ClusterCollector(Collector):
    """This replica's part in the shared sessions: what waits for a place, claims, renewals, losses."""

    def __init__(self, figures: Callable[[], dict]) -> None:
        self._figures = figures

    def collect(self):
        figures = self._figures()
        pending = GaugeMetricFamily(
            "rtdetr_sessions_pending",
            "Sessions recorded as wanted that no live replica runs (the store's count, the same on every replica)",
        )
        if figures.get("pending") is not None:
            pending.add_metric([], figures["pending"])
        store_up = GaugeMetricFamily("rtdetr_session_store_up", "1 while the session store answered the last round")
        store_up.add_metric([], 1.0 if figures["store_up"] else 0.0)
        counters = {
            "claims": CounterMetricFamily("rtdetr_session_claims", "Sessions this replica claimed and ran again"),
            "renewals": CounterMetricFamily("rtdetr_lease_renewals", "Lease renewal rounds of this replica"),
            "lost": CounterMetricFamily("rtdetr_sessions_lost", "Sessions another replica took from this one"),
        }
        for key, family in counters.items():
            family.add_metric([], figures[key])
        yield pending
        yield store_up
        yield from counters.values()


class _ReindexCollector(Collector):
    """The reindex of stored events: how far, how fast, whether it runs."""

    def __init__(self, progress: Callable[[], dict]) -> None:
        self._progress = progress

    def collect(self):
        p = self._progress()
        running = GaugeMetricFamily("rtdetr_reindex_running", "1 while a reindex runs (or waits for the encoder)")
        running.add_metric([], 1.0 if p["state"] in ("waiting", "running") else 0.0)
        done = GaugeMetricFamily("rtdetr_reindex_done", "Events the current (or last) reindex embedded")
        done.add_metric([], p["done"])
        failed = GaugeMetricFamily("rtdetr_reindex_failed", "Events the current (or last) reindex failed to embed")
        failed.add_metric([], p["failed"])
        remaining = GaugeMetricFamily("rtdetr_reindex_remaining", "Events still missing a vector (estimate)")
        if p["remaining"] is not None:
            remaining.add_metric([], p["remaining"])
        rate = GaugeMetricFamily("rtdetr_reindex_rate", "Events embedded per second by the current (or last) reindex")
        if p["rate_per_s"] is not None:
            rate.add_metric([], p["rate_per_s"])
        yield from (running, done, failed, remaining, rate)


_KEY_LABEL = re.compile(r"key-\d{1,4}|anonymous")  # how a provider names its keys; any other text is left out
_WORD = re.compile(r"[a-z0-9_]{1,40}")  # a state, an outcome or a reason as a label value
KEY_STATES = ("ok", "cooling", "disabled")


def _count(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


class _VlmCollector(Collector):
    """The vision-language model, read at scrape time from its provider's status (keys by label, their
    states and counts; a local model's queue and counts) and from POST /ask's own bound. Label values
    are only key labels (`key-2`) and short lower-case words: a provider that slipped a key or a
    sentence into its status could not put it on the metrics page."""

    def __init__(self, figures: Callable[[], dict]) -> None:
        self._figures = figures

    def collect(self):
        f = self._figures()
        status = f.get("status") or {}
        ready = GaugeMetricFamily("rtdetr_vlm_ready", "1 while the vision-language model answers")
        ready.add_metric([], 1.0 if f["state"] == "ready" else 0.0)
        info = GaugeMetricFamily(
            "rtdetr_vlm_info",
            "The VLM's provider and state (value 1); trained=false means random weights",
            labels=["provider", "state", "trained"],
        )
        info.add_metric([f["provider"], f["state"], str(f.get("trained")).lower()], 1.0)
        key_state = GaugeMetricFamily(
            "rtdetr_vlm_key_state",
            "1 for each pool key's current state (ok, cooling, disabled)",
            labels=["key", "state"],
        )
        in_flight = GaugeMetricFamily("rtdetr_vlm_key_in_flight", "Requests in flight on a pool key", labels=["key"])
        key_requests = CounterMetricFamily(
            "rtdetr_vlm_key_requests", "Requests a pool key sent, by outcome", labels=["key", "outcome"]
        )
        for key in status.get("keys") or ():
            label = key.get("label") if isinstance(key, dict) else None
            if not isinstance(label, str) or not _KEY_LABEL.fullmatch(label):
                continue
            state = key.get("state")
            for known in dict.fromkeys((*KEY_STATES, state)):
                if isinstance(known, str) and _WORD.fullmatch(known):
                    key_state.add_metric([label, known], 1.0 if known == state else 0.0)
            if _count(key.get("in_flight")):
                in_flight.add_metric([label], key["in_flight"])
            counts = key.get("counts")
            for outcome, n in counts.items() if isinstance(counts, dict) else ():
                if isinstance(outcome, str) and _WORD.fullmatch(outcome) and _count(n):
                    key_requests.add_metric([label, outcome], n)
        requests = CounterMetricFamily("rtdetr_vlm_requests", "Requests the provider was handed")
        answers = CounterMetricFamily("rtdetr_vlm_answers", "Requests the provider answered")
        waiting = GaugeMetricFamily("rtdetr_vlm_waiting", "Requests waiting for the provider")
        for family, name in ((requests, "requests"), (answers, "answers"), (waiting, "waiting")):
            if _count(status.get(name)):
                family.add_metric([], status[name])
        failures = CounterMetricFamily(
            "rtdetr_vlm_errors", "Requests the provider failed, by reason", labels=["reason"]
        )
        errors = status.get("errors")
        for reason, n in errors.items() if isinstance(errors, dict) else ():
            if isinstance(reason, str) and _WORD.fullmatch(reason) and _count(n):
                failures.add_metric([reason], n)
        asks_running = GaugeMetricFamily("rtdetr_asks_running", "POST /ask being answered now")
        asks_running.add_metric([], f["asks_running"])
        asks_refused = CounterMetricFamily("rtdetr_asks_refused", "POST /ask refused: ASK_CONCURRENCY were running")
        asks_refused.add_metric([], f["asks_refused"])
        asks_finished = CounterMetricFamily("rtdetr_asks_finished", "POST /ask whose checks are done")
        asks_finished.add_metric([], f["asks_finished"])
        yield from (ready, info, key_state, in_flight, key_requests, requests, answers, waiting, failures)
        yield from (asks_running, asks_refused, asks_finished)


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
        self.alerts = Counter("rtdetr_alerts", "Alerts raised", ["class_name", "kind"], registry=self.registry)
        self.model_info = Gauge(
            "rtdetr_model_info",
            "The loaded model (value 1); trained=false means random weights",
            ["name", "backend", "device", "dtype", "trained"],
            registry=self.registry,
        )

    def watch_sessions(self, snapshots: Callable[[], Iterable[SessionSnapshot]]) -> None:
        self.registry.register(_SessionCollector(snapshots))

    def watch_sinks(self, sinks: Callable[[], Sequence[Sink]]) -> None:
        self.registry.register(_SinkCollector(sinks))

    def watch_cluster(self, figures: Callable[[], dict]) -> None:
        """`figures()`: {"pending": int | None, "store_up": bool, "claims", "renewals", "lost": int}."""
        self.registry.register(_ClusterCollector(figures))

    def watch_reindex(self, progress: Callable[[], dict]) -> None:
        """`progress()`: the reindexer's progress dict (outputs/embeddings/reindex.py)."""
        self.registry.register(_ReindexCollector(progress))

    def watch_vlm(self, figures: Callable[[], dict]) -> None:
        """`figures()`: {"state", "provider", "trained", "status": the provider's status or None,
        "asks_running", "asks_refused", "asks_finished"} (web/routes/ask.py `vlm_metrics`)."""
        self.registry.register(_VlmCollector(figures))

    def frame_latency(self, session_id: str, seconds: float) -> None:
        self.latency.labels(session_id).observe(seconds)

    def batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference_seconds.observe(seconds)

    def alert(self, class_name: str, kind: str = "detection") -> None:
        self.alerts.labels(class_name, kind).inc()

    def forget_session(self, session_id: str) -> None:
        try:
            self.latency.remove(session_id)
        except KeyError:
            pass
