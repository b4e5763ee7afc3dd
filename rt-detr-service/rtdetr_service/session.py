"""Sessions: one stream, its reader, its publisher, its stats and viewers; and their manager."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import enum
import json
import logging
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .alerts import Alert, AlertEngine, AlertRule
from .annotate import Annotator
from .encode import JpegEncoder
from .hub import FramePayload, Hub, pack_binary
from .slot import LatestSlot
from .source import StreamError, StreamReader, redact_url, validate_stream_url
from .stats import LatencyWindow, RateMeter
from .types import Detection, Frame, ModelInfo, StreamInfo

if TYPE_CHECKING:
    from .batcher import InferenceWorker
    from .config import Settings
    from .metrics import Metrics

log = logging.getLogger(__name__)


class SessionState(str, enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    RECONNECTING = "reconnecting"
    STOPPED = "stopped"
    FAILED = "failed"


# Legal transitions; anything else is a bug and is refused.
_TRANSITIONS = {
    SessionState.STARTING: {SessionState.RUNNING, SessionState.STOPPED, SessionState.FAILED},
    SessionState.RUNNING: {SessionState.RECONNECTING, SessionState.STOPPED, SessionState.FAILED},
    SessionState.RECONNECTING: {SessionState.RUNNING, SessionState.STOPPED, SessionState.FAILED},
    SessionState.FAILED: {SessionState.STOPPED},
    SessionState.STOPPED: set(),
}


def can_transition(current: SessionState, new: SessionState) -> bool:
    return new == current or new in _TRANSITIONS[current]


class SessionError(Exception):
    """A start/stop request that cannot be served; `code` and `status` map to the HTTP answer."""

    def __init__(self, code: str, status: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """What a start call asked for, already validated."""

    stream_url: str
    enable_drawing: bool = True
    confidence_threshold: float = 0.5
    classes: frozenset[str] | None = None
    alert_rule: AlertRule | None = None
    jpeg_quality: int = 75


class Session:
    """One camera: reader thread → (shared inference worker) → publisher thread → viewers."""

    def __init__(
        self,
        options: SessionOptions,
        *,
        settings: Settings,
        worker: InferenceWorker,
        hub: Hub,
        encoder: JpegEncoder,
        model: ModelInfo,
        metrics: Metrics | None = None,
        clock=time.monotonic,
        reader_factory: Callable[..., StreamReader] = StreamReader,
    ) -> None:
        self.id = str(uuid.uuid4())
        self.viewer_token = secrets.token_urlsafe(24)
        self.options = options
        self.model = model
        self._worker = worker
        self._hub = hub
        self._encoder = encoder
        self._metrics = metrics
        self._clock = clock
        self._annotator = Annotator()
        self._alerts = AlertEngine(options.alert_rule) if options.alert_rule else None
        self._lock = threading.Lock()
        self._state = SessionState.STARTING
        self.paused = False
        self.last_error: str | None = None
        self.started_at = time.time()
        self.stream: StreamInfo | None = None

        self._frames = LatestSlot[Frame](on_put=worker.notify)
        self._results = LatestSlot[tuple[Frame, list[Detection]]]()
        self._stop = threading.Event()
        self._publisher = threading.Thread(target=self._publish_loop, name=f"publisher-{self.id[:8]}", daemon=True)
        self._reader = reader_factory(
            options.stream_url,
            on_frame=self._on_frame,
            on_state=self._on_reader_state,
            open_timeout=settings.open_timeout_s,
            read_timeout=settings.read_timeout_s,
            reconnect_min=settings.reconnect_min_s,
            reconnect_max=settings.reconnect_max_s,
            name=f"reader-{self.id[:8]}",
        )
        self.frames_decoded = 0
        self.frames_inferred = 0
        self.frames_published = 0
        self.paused_drops = 0
        self.alerts_raised = 0
        self.publish_errors = 0
        self._source_rate = RateMeter(clock=clock)
        self._inference_rate = RateMeter(clock=clock)
        self._publish_rate = RateMeter(clock=clock)
        self._latency = LatencyWindow()

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        return self._state

    def _set_state(self, new: SessionState, error: str | None = None) -> bool:
        with self._lock:
            if not can_transition(self._state, new):
                return False
            changed = new != self._state
            self._state = new
            if error is not None:
                self.last_error = error
        if changed and new not in (SessionState.STOPPED,):
            self._hub.publish_event(self.id, self.status_message())
        return changed

    def open(self) -> StreamInfo:
        """Open the stream (blocking, bounded by OPEN_TIMEOUT_S); raises StreamError."""
        self.stream = self._reader.open()
        return self.stream

    def start(self) -> None:
        # RUNNING first: a reader that loses the stream at once reports `reconnecting`, which
        # must not be overwritten afterwards.
        self._set_state(SessionState.RUNNING)
        self._worker.register(self)
        self._publisher.start()
        self._reader.start()

    def stop(self, reason: str = "stopped by request", timeout: float = 0.5) -> bool:
        """Stop everything this session owns; idempotent and legal from every state.

        Returns True when every thread has ended within `timeout`. A reader blocked inside FFmpeg
        ends by itself within READ_TIMEOUT_S and releases the stream on its way out.
        """
        with self._lock:
            if self._stop.is_set():
                already = True
            else:
                already = False
                self._stop.set()
                self._state = SessionState.STOPPED
        if already:
            return not (self._reader.alive or self._publisher.is_alive())
        self._worker.unregister(self.id)
        deadline = time.monotonic() + timeout
        # Signal both threads before waiting on either, so the publisher is not left running
        # while the reader's wait uses up the whole timeout.
        self._reader.stop(0.0)
        self._frames.close()
        self._results.close()
        if self._publisher.is_alive():
            self._publisher.join(max(0.0, deadline - time.monotonic()))
        self._reader.join(max(0.0, deadline - time.monotonic()))
        self._hub.close_session(self.id, {"type": "session_stopped", "session_id": self.id, "reason": reason}, reason)
        if self._metrics is not None:
            self._metrics.forget_session(self.id)
        log.info("session %s stopped: %s", self.id, reason)
        return not (self._reader.alive or self._publisher.is_alive())

    def join(self, timeout: float) -> bool:
        """Wait for the session's threads to end (after stop)."""
        deadline = time.monotonic() + timeout
        self._reader.join(timeout)
        if self._publisher.ident:
            self._publisher.join(max(0.0, deadline - time.monotonic()))
        return not (self._reader.alive or self._publisher.is_alive())

    # -- reader side -----------------------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        self.frames_decoded += 1
        self._source_rate.mark()
        if self._frames.empty:
            # The model keeps up: convert here, on this session's own thread, in parallel with
            # other sessions. When it does not, most frames are replaced unread and are never
            # converted; the worker converts the few it takes.
            frame.convert()
        self._frames.put(frame)

    def _on_reader_state(self, state: str, error: str | None) -> None:
        if state == "reconnecting":
            self._set_state(SessionState.RECONNECTING, error)
        elif state == "running":
            self._set_state(SessionState.RUNNING)
            if self._reader.info is not None:
                self.stream = self._reader.info
        elif state == "failed":
            if self._set_state(SessionState.FAILED, error):
                self._worker.unregister(self.id)

    # -- worker side (BatchClient) ---------------------------------------------------------

    @property
    def confidence_threshold(self) -> float:
        return self.options.confidence_threshold

    def take_frame(self) -> Frame | None:
        frame = self._frames.take()
        if frame is not None and self.paused:
            self.paused_drops += 1
            return None
        return frame

    def deliver(self, frame: Frame, detections: list[Detection], inference_s: float) -> None:
        if self.options.classes is not None:
            detections = [d for d in detections if d.class_name in self.options.classes]
        self.frames_inferred += 1
        self._inference_rate.mark()
        if self._alerts is not None:
            for alert in self._alerts.evaluate(
                detections,
                now=self._clock(),
                width=frame.width,
                height=frame.height,
                frame_index=frame.index,
                timestamp=frame.timestamp,
            ):
                self._raise_alert(alert)
        self._results.put((frame, detections))

    def _raise_alert(self, alert: Alert) -> None:
        self.alerts_raised += 1
        log.warning(
            "ALERT session=%s class=%s confidence=%.2f bbox=%s frame=%d",
            self.id,
            alert.class_name,
            alert.confidence,
            [round(v) for v in alert.bbox],
            alert.frame_index,
        )
        self._hub.publish_event(
            self.id,
            {"type": "alert", "session_id": self.id, "timestamp": alert.timestamp, "data": alert.as_data()},
        )
        if self._metrics is not None:
            self._metrics.alert(alert.class_name)

    # -- publisher -------------------------------------------------------------------------

    def _publish_loop(self) -> None:
        last_status = 0.0
        try:
            while not self._stop.is_set():
                item = self._results.get(timeout=0.5)
                now = time.monotonic()
                if item is not None:
                    self._publish_or_count(*item)
                if now - last_status >= 1.0:
                    last_status = now
                    if self._hub.viewer_count(self.id):
                        self._hub.publish_event(self.id, self.status_message())
        except Exception as exc:  # noqa: BLE001 - surface as a failed session with words, not a silent dead thread
            log.exception("publisher of session %s crashed", self.id)
            if self._set_state(SessionState.FAILED, f"Publisher crashed: {exc}"):
                self._worker.unregister(self.id)
                self._reader.stop(0.0)  # a failed session must not keep the camera connection

    def _publish_or_count(self, frame: Frame, detections: list[Detection]) -> None:
        """Publish one frame; a failure (a transient encoder or GPU error) costs that frame only."""
        try:
            self._publish(frame, detections)
        except Exception as exc:  # noqa: BLE001 - counted, reported in status, logged (not per frame)
            self.publish_errors += 1
            self.last_error = f"Publishing frame {frame.index} failed: {exc}"
            if self.publish_errors == 1 or self.publish_errors % 100 == 0:
                log.exception("session %s: %s (%d so far)", self.id, self.last_error, self.publish_errors)

    def _publish(self, frame: Frame, detections: list[Detection]) -> None:
        formats = self._hub.formats(self.id)
        if formats:
            jpeg = None
            if self.options.enable_drawing:
                annotated = self._annotator.annotate(frame.image, detections)
                jpeg = self._encoder.encode(annotated, self.options.jpeg_quality)
            header = {
                "type": "frame_result",
                "session_id": self.id,
                "timestamp": frame.timestamp,
                "frame_index": frame.index,
                "detections": [d.as_dict() for d in detections],
            }
            payload = FramePayload()
            if "json" in formats:
                message = dict(header, annotated_frame=base64.b64encode(jpeg).decode() if jpeg else None)
                payload.text = json.dumps(message, separators=(",", ":"))
            if "binary" in formats:
                payload.binary = pack_binary(header, jpeg)
            self._hub.publish_frame(self.id, payload)
        latency = time.monotonic() - frame.monotonic
        self._latency.add(latency)
        self.frames_published += 1
        self._publish_rate.mark()
        if self._metrics is not None and not self._stop.is_set():  # stop() has dropped its series
            self._metrics.frame_latency(self.id, latency)

    # -- reporting -------------------------------------------------------------------------

    @property
    def dropped_frames(self) -> int:
        return self._frames.dropped + self._results.dropped + self.paused_drops

    @property
    def reconnects(self) -> int:
        return self._reader.reconnects

    def stats(self) -> dict:
        return {
            "source_fps": self._source_rate.rate(),
            "inference_fps": self._inference_rate.rate(),
            "published_fps": self._publish_rate.rate(),
            "frames_decoded": self.frames_decoded,
            "frames_inferred": self.frames_inferred,
            "frames_published": self.frames_published,
            "dropped_frames": self.dropped_frames,
            "latency_ms": self._latency.percentiles_ms(),
            "viewers": self._hub.viewer_count(self.id),
            "reconnects": self.reconnects,
            "decode_errors": self._reader.decode_errors,
            "publish_errors": self.publish_errors,
            "alerts": self.alerts_raised,
        }

    def status(self) -> dict:
        return {
            "session_id": self.id,
            "state": self._state.value,
            "paused": self.paused,
            "stream_url": redact_url(self.options.stream_url),
            "stream": self.stream.as_dict() if self.stream else None,
            "enable_drawing": self.options.enable_drawing,
            "confidence_threshold": self.options.confidence_threshold,
            "classes": sorted(self.options.classes) if self.options.classes is not None else None,
            "stats": self.stats(),
            "last_error": self.last_error,
            "started_at": self.started_at,
            "model": self.model.as_dict(),
        }

    def status_message(self) -> dict:
        return {
            "type": "status",
            "session_id": self.id,
            "state": self._state.value,
            "paused": self.paused,
            "stats": self.stats(),
            "last_error": self.last_error,
        }

    def stream_info_message(self) -> dict:
        info = self.stream.as_dict() if self.stream else {"width": 0, "height": 0, "fps": 0.0, "codec": ""}
        return {
            "type": "stream_info",
            "session_id": self.id,
            **info,
            "state": self._state.value,
            "paused": self.paused,
            "enable_drawing": self.options.enable_drawing,
            "class_names": list(self.model.class_names),
            "model": self.model.as_dict(),
            "warning": self.model.warning,
        }

    @property
    def websocket_path(self) -> str:
        return f"/ws/stream/{self.id}?token={self.viewer_token}"


class SessionManager:
    """Owns every session of this replica: start, stop, look up, and stop all at shutdown."""

    def __init__(
        self,
        settings: Settings,
        hub: Hub,
        encoder: JpegEncoder,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.hub = hub
        self.encoder = encoder
        self.metrics = metrics
        self.worker: InferenceWorker | None = None
        self._sessions: dict[str, Session] = {}
        # Start calls past the MAX_SESSIONS check, by ticket: their session (None until it is
        # built) is opening its stream and counts against MAX_SESSIONS.
        self._opening: dict[object, Session | None] = {}
        self._closing = False
        self._lock = threading.Lock()

    def attach_worker(self, worker: InferenceWorker) -> None:
        self.worker = worker

    async def start(
        self, options: SessionOptions, *, reader_factory: Callable[..., StreamReader] | None = None
    ) -> Session:
        """Open the stream, then run the session; on any failure nothing is left behind.

        `reader_factory` replaces the network reader (benchmarks feed paced local files through
        it); URLs given to the default reader must pass the scheme check.
        """
        worker = self._ready_worker()
        if reader_factory is None:
            try:
                url = validate_stream_url(options.stream_url, self.settings.allowed_schemes)
            except StreamError as exc:
                raise SessionError(exc.kind.value, 422, str(exc)) from exc
            options = dataclasses.replace(options, stream_url=url)
        with self._lock:
            self._refuse_if_closing()
            if len(self._sessions) + len(self._opening) >= self.settings.max_sessions:
                raise SessionError(
                    "too_many_sessions",
                    429,
                    f"MAX_SESSIONS={self.settings.max_sessions} sessions are running; stop one first",
                )
            ticket = object()
            self._opening[ticket] = None
        session: Session | None = None
        try:
            session = Session(
                options,
                settings=self.settings,
                worker=worker,
                hub=self.hub,
                encoder=self.encoder,
                model=worker.detector.info,
                metrics=self.metrics,
                reader_factory=reader_factory or StreamReader,
            )
            with self._lock:
                self._opening[ticket] = session
            try:
                await asyncio.to_thread(session.open)
            except StreamError as exc:
                with self._lock:
                    self._refuse_if_closing()
                status = {"stream_unavailable": 502, "stream_timeout": 504}.get(exc.kind.value, 422)
                raise SessionError(exc.kind.value, status, str(exc)) from exc
            with self._lock:
                # stop_all() may have run while the stream was opening; it has stopped this
                # session already, so it must not start now.
                self._refuse_if_closing()
                session.start()
                del self._opening[ticket]
                self._sessions[session.id] = session
        except BaseException:
            with self._lock:
                self._opening.pop(ticket, None)
            if session is not None:
                session.stop("start failed")
            raise
        log.info("session %s started on %s (%s)", session.id, redact_url(options.stream_url), session.stream)
        return session

    def _refuse_if_closing(self) -> None:
        if self._closing:
            raise SessionError("shutting_down", 503, "The service is shutting down; start the session elsewhere")

    def _ready_worker(self) -> InferenceWorker:
        worker = self.worker
        if worker is None:
            raise SessionError("model_not_ready", 503, "The model is still loading; retry in a few seconds")
        return worker

    def model(self) -> ModelInfo:
        """The loaded model; SessionError(503) while it is still loading."""
        return self._ready_worker().detector.info

    def get(self, session_id: str) -> Session:
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None:
            raise SessionError("session_not_found", 404, f"No session with id {session_id!r}")
        return session

    def find(self, session_id: str) -> Session | None:
        with self._lock:
            return self._sessions.get(session_id)

    def list(self) -> list[Session]:
        with self._lock:
            return list(self._sessions.values())

    def stop(self, session_id: str, reason: str = "stopped by request") -> Session:
        with self._lock:
            session = self._sessions.pop(session_id, None)
        if session is None:
            raise SessionError("session_not_found", 404, f"No session with id {session_id!r}")
        session.stop(reason)
        return session

    def stop_all(self, reason: str = "service shutting down") -> list[Session]:
        """Stop every session, those still opening their stream included, and refuse new ones."""
        with self._lock:
            self._closing = True
            sessions = [*self._sessions.values(), *(s for s in self._opening.values() if s is not None)]
            self._sessions.clear()
        for session in sessions:
            session.stop(reason)
        return sessions
