"""Outputs of the results pipeline. Adding one = a module here, a setting, and a line in SINKS.

Each builder takes the app's `SinkContext` and returns its sink, or None when its setting turns
it off. Nothing in the session, the worker or the reader knows which sinks exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .base import Published, QueuedSink, SessionView, Sink, SinkStats

if TYPE_CHECKING:
    from ..config import Settings
    from ..event_store import EventStore
    from ..hub import Hub
    from ..metrics import Metrics

__all__ = ["Published", "QueuedSink", "SessionView", "Sink", "SinkContext", "SinkStats", "build_sinks"]


@dataclass(frozen=True)
class SinkContext:
    """What the app has for sinks to use."""

    settings: Settings
    hub: Hub
    metrics: Metrics
    encoder: object
    event_store: EventStore | None


def _websocket(ctx: SinkContext) -> Sink:
    from .websocket import WebSocketSink

    return WebSocketSink(ctx.hub, ctx.encoder)


def _metrics(ctx: SinkContext) -> Sink:
    from .metrics import MetricsSink

    return MetricsSink(ctx.metrics)


def _alert_log(ctx: SinkContext) -> Sink | None:
    if not ctx.settings.alert_log:
        return None
    from .alert_log import AlertLogSink

    sink = AlertLogSink(queue_size=1024)
    sink.start()
    return sink


def _event_store(ctx: SinkContext) -> Sink | None:
    if ctx.event_store is None:
        return None
    from .event_store import EventStoreSink

    return EventStoreSink(ctx.event_store)


SINKS: list[Callable[[SinkContext], Sink | None]] = [_websocket, _metrics, _alert_log, _event_store]


def build_sinks(ctx: SinkContext) -> list[Sink]:
    return [sink for build in SINKS if (sink := build(ctx)) is not None]
