"""Outputs of the results pipeline. Adding one = a module here, its settings, and a line in SINKS.

Each builder takes the app's `SinkContext` and returns its sink, or None when its setting turns
it off. Nothing in the session, the worker or the reader knows which sinks exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from rtdetr_service.outputs.base import Sink

if TYPE_CHECKING:
    from rtdetr_service.core.slot import ModelSlot
    from rtdetr_service.core.vlm import VisionLanguageModel
    from rtdetr_service.outputs.embeddings.stage import EmbeddingParts
    from rtdetr_service.outputs.hub import Hub
    from rtdetr_service.outputs.prometheus import Metrics
    from rtdetr_service.outputs.settings import OutputSettings
    from rtdetr_service.outputs.store.event_store import EventStore
    from rtdetr_service.outputs.websocket import FrameRenderer


@dataclass(frozen=True)
class SinkContext:
    """What the app has for sinks to use."""

    settings: OutputSettings
    hub: Hub
    metrics: Metrics
    encoder: object
    event_store: EventStore | None
    renderer: FrameRenderer | None = None  # shared with the bus, so a frame is drawn and encoded once
    embeddings: EmbeddingParts | None = None  # the encoder and the vector index, when search is on
    vlm: ModelSlot[VisionLanguageModel] | None = None  # the vision-language model, once loaded (or why not)


def _websocket(ctx: SinkContext) -> Sink:
    from rtdetr_service.outputs.websocket import WebSocketSink

    return WebSocketSink(ctx.hub, ctx.encoder, ctx.renderer)


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
    if not ctx.settings.webhook.urls:
        return None
    from rtdetr_service.outputs.webhook import WebhookSink

    sink = WebhookSink(ctx.settings.webhook)
    sink.start()
    return sink


def _mqtt(ctx: SinkContext) -> Sink | None:
    if not ctx.settings.mqtt.url.get_secret_value().strip():
        return None
    from rtdetr_service.outputs.mqtt import MqttSink

    sink = MqttSink(ctx.settings.mqtt)
    sink.start()
    return sink


def _kafka(ctx: SinkContext) -> Sink | None:
    if not ctx.settings.kafka.bootstrap_servers.strip():
        return None
    from rtdetr_service.outputs.kafka import KafkaSink

    sink = KafkaSink(ctx.settings.kafka)
    sink.start()
    return sink


def _embeddings(ctx: SinkContext) -> Sink | None:
    if ctx.embeddings is None:
        return None
    from rtdetr_service.outputs.embeddings.stage import EmbeddingStage

    sink = EmbeddingStage(ctx.embeddings)
    sink.start()
    return sink


def _vlm(ctx: SinkContext) -> Sink | None:
    # The app's settings are the whole Settings: the stage's own (VLM_QUEUE_SIZE, ...) and the inference
    # floor's VLM_* (which outputs cannot import). A model still loading or failed gets a stage whose
    # requests wait, bounded, its state saying why; descriptions publish with or without a store.
    if ctx.vlm is None or getattr(ctx.settings, "vlm_provider", "off") == "off":
        return None
    from rtdetr_service.outputs.vlm.settings import VlmStageSettings
    from rtdetr_service.outputs.vlm.stage import VlmLimits, VlmStage, VlmStageParts

    settings = VlmStageSettings.model_validate(
        {name: getattr(ctx.settings, name) for name in VlmStageSettings.model_fields}
    )
    sink = VlmStage(VlmStageParts(settings, VlmLimits.of(ctx.settings), ctx.vlm))
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
    _embeddings,
    _vlm,
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


def connect_republishers(sinks: Sequence[Sink]) -> None:
    """A sink that sends changes of its own (the embedding stage's global_id updates, the VLM stage's
    descriptions and answers) sends them to
    every other sink; called once the app's list of sinks is whole."""
    for sink in sinks:
        republish_to = getattr(sink, "republish_to", None)
        if republish_to is not None:
            republish_to(sinks)
