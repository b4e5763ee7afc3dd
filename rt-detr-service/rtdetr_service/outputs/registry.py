"""Outputs of the results pipeline. Adding one = a module here, a setting, and a line in SINKS.

Each builder takes the app's `SinkContext` and returns its sink, or None when its setting turns
it off. Nothing in the session, the worker or the reader knows which sinks exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from rtdetr_service.core.results import Published, SessionView
from rtdetr_service.outputs.base import QueuedSink, Sink, SinkStats

if TYPE_CHECKING:
    from rtdetr_service.core.config import Settings
    from rtdetr_service.outputs.hub import Hub
    from rtdetr_service.outputs.prometheus import Metrics
    from rtdetr_service.outputs.store.event_store import EventStore

__all__ = [
    "Published",
    "QueuedSink",
    "SessionView",
    "Sink",
    "SinkContext",
    "SinkStats",
    "build_sinks",
    "output_warnings",
]


@dataclass(frozen=True)
class SinkContext:
    """What the app has for sinks to use."""

    settings: Settings
    hub: Hub
    metrics: Metrics
    encoder: object
    event_store: EventStore | None


def _websocket(ctx: SinkContext) -> Sink:
    from rtdetr_service.outputs.websocket import WebSocketSink

    return WebSocketSink(ctx.hub, ctx.encoder)


def _metrics(ctx: SinkContext) -> Sink:
    from rtdetr_service.outputs.prometheus_sink import MetricsSink

    return MetricsSink(ctx.metrics)


def _alert_log(ctx: SinkContext) -> Sink | None:
    if not ctx.settings.alert_log:
        return None
    from rtdetr_service.outputs.alert_log import AlertLogSink

    sink = AlertLogSink(queue_size=1024)
    sink.start()
    return sink


def _event_store(ctx: SinkContext) -> Sink | None:
    if ctx.event_store is None:
        return None
    from rtdetr_service.outputs.store.sink import EventStoreSink

    return EventStoreSink(ctx.event_store)


def _webhook(ctx: SinkContext) -> Sink | None:
    urls = [u.strip() for u in ctx.settings.webhook_urls.get_secret_value().split(",") if u.strip()]
    if not urls:
        return None
    from rtdetr_service.outputs.webhook import WebhookSink

    s = ctx.settings
    sink = WebhookSink(
        urls,
        s.webhook_secret.get_secret_value(),
        timeout_s=s.webhook_timeout_s,
        max_retries=s.webhook_max_retries,
        queue_size=s.webhook_queue_size,
    )
    sink.start()
    return sink


def _mqtt(ctx: SinkContext) -> Sink | None:
    url = ctx.settings.mqtt_url.get_secret_value().strip()
    if not url:
        return None
    from rtdetr_service.outputs.mqtt import MqttSink

    s = ctx.settings
    sink = MqttSink(
        url,
        client_id=s.mqtt_client_id,
        topic_prefix=s.mqtt_topic_prefix,
        queue_size=s.mqtt_queue_size,
        detections_max_fps=s.mqtt_detections_max_fps,
    )
    sink.start()
    return sink


def _kafka(ctx: SinkContext) -> Sink | None:
    s = ctx.settings
    if not s.kafka_bootstrap_servers.strip():
        return None
    from rtdetr_service.outputs.kafka import KafkaSink

    sink = KafkaSink(
        s.kafka_bootstrap_servers,
        detections_topic=s.kafka_detections_topic,
        events_topic=s.kafka_events_topic,
        alerts_topic=s.kafka_alerts_topic,
        client_id=s.kafka_client_id,
        linger_ms=s.kafka_linger_ms,
        queue_size=s.kafka_queue_size,
        delivery_timeout_s=s.kafka_delivery_timeout_s,
        security_protocol=s.kafka_security_protocol,
        sasl_mechanism=s.kafka_sasl_mechanism,
        sasl_username=s.kafka_sasl_username,
        sasl_password=s.kafka_sasl_password.get_secret_value(),
        ssl_ca_location=s.kafka_ssl_ca_location,
    )
    sink.start()
    return sink


SINKS: list[Callable[[SinkContext], Sink | None]] = [
    _websocket,
    _metrics,
    _alert_log,
    _event_store,
    _webhook,
    _mqtt,
    _kafka,
]


def output_warnings(sinks: Sequence[Sink]) -> list[str]:
    """Each output that is not well, in words: what /ready and session status say."""
    words = []
    for stats in (sink.stats() for sink in sinks):
        if stats.state != "ok":
            why = stats.detail.get("detail") or stats.last_error or f"{stats.dropped} item(s) dropped"
            words.append(f"output {stats.name} is {stats.state}: {why}")
    return words


def build_sinks(ctx: SinkContext) -> list[Sink]:
    return [sink for build in SINKS if (sink := build(ctx)) is not None]
