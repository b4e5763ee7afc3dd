"""A session's publisher stage: tracking, zone and line rules, events, then every sink.

It runs on the session's own thread, fed by a newest-result slot, so nothing it does (rules over
large zones, drawing, JPEG, a slow output) can delay the inference worker that serves every
session: a slow publisher costs its own session frames, counted as dropped, and no one else's.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import Callable, Sequence

from rtdetr_service.analytics.alerts import AlertEngine
from rtdetr_service.analytics.events import EventLifecycle
from rtdetr_service.analytics.tracking import Tracker
from rtdetr_service.analytics.zones import RuleHit, ZoneConfig, ZoneEngine
from rtdetr_service.core.logs import LogContext, log_context
from rtdetr_service.core.results import Alert, EventChange, Published, SessionView
from rtdetr_service.core.slot import LatestSlot
from rtdetr_service.core.stats import LatencyWindow, RateMeter
from rtdetr_service.core.types import Detection, FrameResult
from rtdetr_service.outputs.base import Sink

log = logging.getLogger(__name__)

TICK_S = 1.0  # status to viewers, and events ended while no frame arrives


class Publisher:
    """Owns the publisher thread of one session; collaborators are built by the session."""

    def __init__(
        self,
        view: SessionView,
        *,
        tracker: Tracker,
        zones: ZoneEngine,
        events: EventLifecycle,
        sinks: Sequence[Sink],
        alerts: AlertEngine | None = None,
        classes: frozenset[str] | None = None,
        on_tick: Callable[[], None] | None = None,
        on_error: Callable[[str], None] | None = None,
        on_crash: Callable[[str], None] | None = None,
        clock=time.monotonic,
        wall_clock=time.time,
    ) -> None:
        self.view = view
        self._tracker = tracker
        self._zones = zones
        self._events = events
        self._sinks = tuple(sinks)
        self._alerts = alerts
        self._classes = classes
        self._on_tick = on_tick
        self._on_error = on_error
        self._on_crash = on_crash
        self._clock = clock
        self._wall = wall_clock
        self.results = LatestSlot[FrameResult]()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # zones are replaced and counted from API threads
        self._event_ids: dict[int, str] = {}  # track id -> its open event
        self._thread = threading.Thread(target=self._run, name=f"publisher-{view.session_id[:8]}", daemon=True)
        self.frames_published = 0
        self.publish_errors = 0
        self.alerts_raised = 0
        self.sink_errors: dict[str, int] = {}
        self.rate = RateMeter(clock=clock)
        self.latency = LatencyWindow()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Signal the thread; it ends the session's open events and tells the sinks on its way out."""
        self._stop.set()
        self.results.close()

    def join(self, timeout: float) -> bool:
        if self._thread.ident is not None:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- read from other threads -------------------------------------------------------------

    def zones(self) -> ZoneConfig:
        with self._lock:
            return self._zones.config

    def set_zones(self, config: ZoneConfig) -> None:
        with self._lock:
            self._zones.reconfigure(config)

    def counts(self) -> dict:
        with self._lock:
            return self._zones.counts()

    @property
    def events_open(self) -> int:
        return self._events.open_count

    # -- the loop ----------------------------------------------------------------------------

    def _run(self) -> None:
        with log_context(LogContext(self.view.session_id, self.view.camera)):
            self._loop()

    def _loop(self) -> None:
        last_tick = self._clock()
        try:
            while not self._stop.is_set():
                result = self.results.get(timeout=TICK_S / 2)
                if result is not None:
                    self._publish_counted(result)
                now = self._clock()
                if now - last_tick >= TICK_S:
                    last_tick = now
                    self._tick_counted()
        except Exception as exc:  # noqa: BLE001 - a dead publisher is a failed session, said in words
            log.exception("publisher of session %s crashed", self.view.session_id)
            if self._on_crash is not None:
                self._on_crash(f"Publisher crashed: {exc}")
        finally:
            self._finish()

    def _tick_counted(self) -> None:
        """One tick; a failure in it (ending events, the status to viewers) costs that tick only."""
        try:
            self._tick()
        except Exception as exc:  # noqa: BLE001 - counted, reported in status, logged (not per tick)
            self._error(f"The once-a-second update failed: {exc}", exc)

    def _tick(self) -> None:
        changes = self._events.tick(self._wall())
        if changes:
            self._forget_ended(changes)
            self._fan_out(Published(self.view, None, (), tuple(changes)), None)
        if self._on_tick is not None:
            self._on_tick()

    def _finish(self) -> None:
        """The session ended: close its open events and let every sink forget it."""
        try:
            changes = self._events.close_all()
            if changes:
                self._fan_out(Published(self.view, None, (), tuple(changes)), None)
        except Exception:  # noqa: BLE001 - shutting down: log, and still tell the sinks
            log.exception("session %s: closing its events failed", self.view.session_id)
        for sink in self._sinks:
            try:
                sink.session_ended(self.view.session_id)
            except Exception:  # noqa: BLE001 - one sink's failure must not keep the others from hearing
                log.exception("sink %s: forgetting session %s failed", sink.name, self.view.session_id)

    def _publish_counted(self, result: FrameResult) -> None:
        """Publish one frame; a failure in the analytics (a bug, bad data) costs that frame only."""
        try:
            item = self._analyse(result)
        except Exception as exc:  # noqa: BLE001 - counted, reported in status, logged (not per frame)
            self._error(f"Analysing frame {result.index} failed: {exc}", exc)
            return
        self._fan_out(item, result)
        latency = self._clock() - result.frame.monotonic
        self.latency.add(latency)
        self.frames_published += 1
        self.rate.mark()

    def _analyse(self, result: FrameResult) -> Published:
        detections: Sequence[Detection] = result.detections
        if self._classes is not None:
            detections = [d for d in detections if d.class_name in self._classes]
        tracked = self._tracker.update(detections, result.timestamp)
        width, height = result.size
        with self._lock:
            update = self._zones.update(tracked, width=width, height=height, timestamp=result.timestamp)
        fired: dict[int, list[str]] = {}
        for hit in update.hits:
            if hit.track_id is not None:
                fired.setdefault(hit.track_id, []).append(hit.rule)
        tracked_result = FrameResult(result.session_id, result.frame, tuple(tracked), result.inference_s)
        changes = self._events.update(result.frame, tracked, zones_of=update.zones_of, rules_fired=fired)
        for change in changes:
            if change.kind == "new":
                self._event_ids[change.event.track_id] = change.event.id
        self._forget_ended(changes)
        alerts = [self._rule_alert(hit, result.index) for hit in update.hits]
        if self._alerts is not None:
            classic = self._alerts.evaluate(
                tracked,
                now=self._clock(),
                width=width,
                height=height,
                frame_index=result.index,
                timestamp=result.timestamp,
            )
            alerts.extend(self._with_event(a) for a in classic)
        self.alerts_raised += len(alerts)
        return Published(self.view, tracked_result, tuple(alerts), tuple(changes))

    def _rule_alert(self, hit: RuleHit, frame_index: int) -> Alert:
        return Alert(
            hit.class_name,
            hit.confidence,
            hit.bbox,
            frame_index,
            hit.timestamp,
            track_id=hit.track_id,
            kind=hit.kind,
            rule=hit.rule,
            zone=hit.zone,
            line=hit.line,
            direction=hit.direction,
            count=hit.count,
            ask=hit.ask,
            event_id=self._event_ids.get(hit.track_id) if hit.track_id is not None else None,
        )

    def _with_event(self, alert: Alert) -> Alert:
        if alert.track_id is None or alert.track_id not in self._event_ids:
            return alert
        return replace(alert, event_id=self._event_ids[alert.track_id])

    def _forget_ended(self, changes: Sequence[EventChange]) -> None:
        ended = [c.event.track_id for c in changes if c.kind == "end"]
        if ended:
            for track_id in ended:
                self._event_ids.pop(track_id, None)
            with self._lock:
                self._zones.forget(ended)

    def _fan_out(self, item: Published, result: FrameResult | None) -> None:
        for sink in self._sinks:
            try:
                sink.handle(item)
            except Exception as exc:  # noqa: BLE001 - one output's failure costs that output this item
                self.sink_errors[sink.name] = self.sink_errors.get(sink.name, 0) + 1
                where = f"frame {result.index}" if result is not None else "an event update"
                self._error(f"Output {sink.name} failed on {where}: {exc}", exc)

    def _error(self, message: str, exc: BaseException) -> None:
        self.publish_errors += 1
        if self._on_error is not None:
            self._on_error(message)
        if self.publish_errors == 1 or self.publish_errors % 100 == 0:
            log.error("session %s: %s (%d so far)", self.view.session_id, message, self.publish_errors, exc_info=exc)
