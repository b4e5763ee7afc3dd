"""Sessions: one stream, its reader, its publisher stage, its state; and their manager."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import logging
import secrets
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

from . import wire
from .alerts import AlertEngine, AlertRule
from .events import EventLifecycle
from .hub import Hub
from .publisher import Publisher
from .sinks import SessionView, Sink
from .slot import LatestSlot
from .source import DestinationPolicy, StreamError, StreamReader, redact_url, validate_stream_url
from .stats import RateMeter, SessionStats
from .tracking import Tracker, TrackerOptions
from .types import Detection, Frame, FrameResult, ModelInfo, StreamInfo
from .zones import ZoneConfig, ZoneEngine

if TYPE_CHECKING:
    from .batcher import InferenceWorker
    from .config import Settings

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
    """What a start call asked for, already validated (pixel zones are checked once the stream's
    size is known)."""

    stream_url: str
    enable_drawing: bool = True
    confidence_threshold: float = 0.5
    classes: frozenset[str] | None = None
    alert_rule: AlertRule | None = None
    jpeg_quality: int = 75
    camera: str | None = None
    zones: dict | None = field(default=None, compare=False)
    tracking: TrackerOptions = TrackerOptions()


@dataclass(frozen=True, slots=True)
class SessionSnapshot:
    """A session's state and figures at one moment; every status document is made from one."""

    session_id: str
    state: str
    paused: bool
    last_error: str | None
    stats: SessionStats
    counts: dict


class Session:
    """One camera: reader thread → (shared inference worker) → publisher thread → sinks."""

    def __init__(
        self,
        options: SessionOptions,
        *,
        settings: Settings,
        worker: InferenceWorker,
        hub: Hub,
        sinks: Sequence[Sink],
        model: ModelInfo,
        clock=time.monotonic,
        reader_factory: Callable[..., StreamReader] = StreamReader,
    ) -> None:
        self.id = str(uuid.uuid4())
        self.viewer_token = secrets.token_urlsafe(24)
        self.options = options
        self.model = model
        self._settings = settings
        self._worker = worker
        self._hub = hub
        self._sinks = sinks
        self._clock = clock
        self._lock = threading.Lock()
        self._state = SessionState.STARTING
        self.paused = False
        self.last_error: str | None = None
        self.started_at = time.time()
        self.stream: StreamInfo | None = None

        self._frames = LatestSlot[Frame](on_put=worker.notify)
        self._stop = threading.Event()
        self._publisher: Publisher | None = None
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
        self.paused_drops = 0
        self._source_rate = RateMeter(clock=clock)
        self._inference_rate = RateMeter(clock=clock)

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
            elif changed and new == SessionState.RUNNING:
                self.last_error = None  # recovered: the error is history (the log keeps it)
        if changed and new not in (SessionState.STOPPED,):
            self._hub.publish_event(self.id, wire.status_message(self.snapshot()))
        return changed

    def open(self) -> StreamInfo:
        """Open the stream (blocking, bounded by OPEN_TIMEOUT_S), then build the publisher for
        its size; raises StreamError, or ValueError for zones that do not fit the picture."""
        self.stream = self._reader.open()
        zones = ZoneConfig.from_dict(self.options.zones or {}, width=self.stream.width, height=self.stream.height)
        self._publisher = self._build_publisher(zones)
        return self.stream

    def _build_publisher(self, zones: ZoneConfig) -> Publisher:
        options, settings = self.options, self._settings
        view = SessionView(self.id, options.camera, options.enable_drawing, options.jpeg_quality)
        return Publisher(
            view,
            tracker=Tracker(
                options.tracking,
                activation_threshold=options.confidence_threshold,
                frame_rate=self.stream.fps if self.stream and self.stream.fps > 0 else 30.0,
            ),
            # A box missed for a frame or two still stands where it was: occupancy must not re-fire.
            zones=ZoneEngine(zones, hold_s=options.tracking.keep_s),
            events=EventLifecycle(self.id, options.camera, end_after_s=settings.event_end_after_s),
            sinks=self._sinks,
            alerts=AlertEngine(options.alert_rule) if options.alert_rule else None,
            classes=options.classes,
            on_tick=self._tick,
            on_error=self._publish_error,
            on_crash=self._publisher_crashed,
            clock=self._clock,
        )

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
            return not self._alive()
        self._worker.unregister(self.id)
        deadline = time.monotonic() + timeout
        # Signal both threads before waiting on either, so the publisher is not left running
        # while the reader's wait uses up the whole timeout.
        self._reader.stop(0.0)
        self._frames.close()
        if self._publisher is not None:
            self._publisher.stop()
            self._publisher.join(max(0.0, deadline - time.monotonic()))
        self._reader.join(max(0.0, deadline - time.monotonic()))
        self._hub.close_session(self.id, wire.stopped_message(self.id, reason), reason)
        log.info("session %s stopped: %s", self.id, reason)
        return not self._alive()

    def _alive(self) -> bool:
        return self._reader.alive or (self._publisher is not None and self._publisher.alive)

    def join(self, timeout: float) -> bool:
        """Wait for the session's threads to end (after stop)."""
        deadline = time.monotonic() + timeout
        self._reader.join(timeout)
        if self._publisher is not None:
            self._publisher.join(max(0.0, deadline - time.monotonic()))
        return not self._alive()

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
        """Hand the result to this session's publisher and return: the worker serves everyone."""
        self.frames_inferred += 1
        self._inference_rate.mark()
        self._publisher.results.put(FrameResult(self.id, frame, tuple(detections), inference_s))

    # -- publisher callbacks (its thread) ----------------------------------------------------

    def _tick(self) -> None:
        if self._hub.viewer_count(self.id):
            self._hub.publish_event(self.id, wire.status_message(self.snapshot()))

    def _publish_error(self, message: str) -> None:
        self.last_error = message

    def _publisher_crashed(self, message: str) -> None:
        if self._set_state(SessionState.FAILED, message):
            self._worker.unregister(self.id)
            self._reader.stop(0.0)  # a failed session must not keep the camera connection

    # -- zones -------------------------------------------------------------------------------

    def zones(self) -> dict:
        """The session's zones, lines and rules, in normalised coordinates."""
        return self._ready_publisher().zones().as_dict()

    def set_zones(self, spec: dict) -> dict:
        """Replace zones, lines and rules while the session runs; ValueError names what is wrong."""
        publisher = self._ready_publisher()
        width, height = (self.stream.width, self.stream.height) if self.stream else (None, None)
        config = ZoneConfig.from_dict(spec, width=width, height=height)
        publisher.set_zones(config)
        zones = config.as_dict()
        self._hub.publish_event(self.id, wire.zones_message(self.id, zones))
        return zones

    def counts(self) -> dict:
        return self._publisher.counts() if self._publisher is not None else {"zones": {}, "lines": {}, "rules": {}}

    def _ready_publisher(self) -> Publisher:
        if self._publisher is None:
            raise SessionError("session_not_ready", 409, "The session is still opening its stream")
        return self._publisher

    # -- reporting -------------------------------------------------------------------------

    @property
    def dropped_frames(self) -> int:
        published_drops = self._publisher.results.dropped if self._publisher is not None else 0
        return self._frames.dropped + published_drops + self.paused_drops

    @property
    def reconnects(self) -> int:
        return self._reader.reconnects

    @property
    def frames_published(self) -> int:
        return self._publisher.frames_published if self._publisher is not None else 0

    def snapshot(self) -> SessionSnapshot:
        """The one typed read of this session's state and figures."""
        publisher = self._publisher
        stats = SessionStats(
            source_fps=self._source_rate.rate(),
            inference_fps=self._inference_rate.rate(),
            published_fps=publisher.rate.rate() if publisher else 0.0,
            frames_decoded=self.frames_decoded,
            frames_inferred=self.frames_inferred,
            frames_published=self.frames_published,
            dropped_frames=self.dropped_frames,
            latency_ms=publisher.latency.percentiles_ms() if publisher else {"p50": None, "p99": None},
            viewers=self._hub.viewer_count(self.id),
            reconnects=self.reconnects,
            decode_errors=self._reader.decode_errors,
            publish_errors=publisher.publish_errors if publisher else 0,
            alerts=publisher.alerts_raised if publisher else 0,
            events_open=publisher.events_open if publisher else 0,
        )
        return SessionSnapshot(self.id, self._state.value, self.paused, self.last_error, stats, self.counts())

    def status(self) -> dict:
        snap = self.snapshot()
        return {
            "session_id": self.id,
            "state": snap.state,
            "paused": snap.paused,
            "camera": self.options.camera,
            "stream_url": redact_url(self.options.stream_url),
            "stream": self.stream.as_dict() if self.stream else None,
            "enable_drawing": self.options.enable_drawing,
            "confidence_threshold": self.options.confidence_threshold,
            "classes": sorted(self.options.classes) if self.options.classes is not None else None,
            "tracking": dataclasses.asdict(self.options.tracking),
            "stats": snap.stats.as_dict(),
            "counts": snap.counts,
            "last_error": snap.last_error,
            "started_at": self.started_at,
            "model": self.model.as_dict(),
        }

    def stream_info_message(self) -> dict:
        zones = self._publisher.zones().as_dict() if self._publisher is not None else ZoneConfig().as_dict()
        return wire.stream_info_message(
            self.snapshot(), self.stream, self.model, enable_drawing=self.options.enable_drawing, zones=zones
        )

    @property
    def websocket_path(self) -> str:
        return f"/ws/stream/{self.id}?token={self.viewer_token}"


class SessionManager:
    """Owns every session of this replica: start, stop, look up, and stop all at shutdown."""

    def __init__(self, settings: Settings, hub: Hub) -> None:
        self.settings = settings
        self.hub = hub
        self.worker: InferenceWorker | None = None
        self.sinks: list[Sink] = []
        self._sessions: dict[str, Session] = {}
        # Start calls past the MAX_SESSIONS check, by ticket: their session (None until it is
        # built) is opening its stream and counts against MAX_SESSIONS.
        self._opening: dict[object, Session | None] = {}
        self._closing = False
        self._lock = threading.Lock()
        # Opens wait on cameras for up to OPEN_TIMEOUT_S each: they get threads of their own, at
        # most MAX_OPENS, so that they never hold the event loop's default pool, which stop and
        # every other blocking call use. `_opens` counts open threads until they really end.
        self._open_pool = ThreadPoolExecutor(max_workers=settings.max_opens, thread_name_prefix="stream-open")
        self._opens = 0
        self.policy = DestinationPolicy(
            allowed=tuple(settings.stream_allowed_networks), denied=tuple(settings.stream_denied_networks)
        )

    def attach_worker(self, worker: InferenceWorker, sinks: Sequence[Sink] = ()) -> None:
        """The model is ready: sessions may start, and publish to these sinks."""
        self.sinks = list(sinks)
        self.worker = worker

    async def start(
        self, options: SessionOptions, *, reader_factory: Callable[..., StreamReader] | None = None
    ) -> Session:
        """Open the stream, then run the session; on any failure nothing is left behind.

        `reader_factory` replaces the network reader (benchmarks feed paced local files through
        it); URLs given to the default reader must pass the scheme check.
        """
        worker = self._ready_worker()
        shown = redact_url(options.stream_url)
        if reader_factory is None:
            try:
                url = validate_stream_url(options.stream_url, self.settings.allowed_schemes)
            except StreamError as exc:
                log.info("start on %s refused: %s", shown, exc)
                raise SessionError(exc.kind.value, 422, str(exc)) from exc
            options = dataclasses.replace(options, stream_url=url)
            reader_factory = functools.partial(
                StreamReader, policy=self.policy, schemes=tuple(self.settings.allowed_schemes)
            )
        with self._lock:
            self._refuse_if_closing()
            if len(self._sessions) + len(self._opening) >= self.settings.max_sessions:
                raise SessionError(
                    "too_many_sessions",
                    429,
                    f"MAX_SESSIONS={self.settings.max_sessions} sessions are running; stop one first",
                )
            if self._opens >= self.settings.max_opens:
                raise SessionError(
                    "too_many_opens",
                    429,
                    f"MAX_OPENS={self.settings.max_opens} streams are being opened right now; retry in a few seconds",
                )
            ticket = object()
            self._opening[ticket] = None
            self._opens += 1
        session: Session | None = None
        try:
            try:
                session = Session(
                    options,
                    settings=self.settings,
                    worker=worker,
                    hub=self.hub,
                    sinks=self.sinks,
                    model=worker.detector.info,
                    reader_factory=reader_factory,
                )
            except BaseException:
                self._open_done()
                raise
            with self._lock:
                self._opening[ticket] = session
            try:
                try:
                    opening = self._open_pool.submit(session.open)
                except RuntimeError:  # stop_all() shut the pool down a moment ago
                    self._open_done()
                    raise SessionError(
                        "shutting_down", 503, "The service is shutting down; start the session elsewhere"
                    ) from None
                # Counted until the thread is done with it (or it never ran), not until we stop
                # waiting: a cancelled start's FFmpeg may take a moment to give up.
                opening.add_done_callback(lambda _: self._open_done())
                await asyncio.wrap_future(opening)
            except StreamError as exc:
                with self._lock:
                    self._refuse_if_closing()
                status = {"stream_unavailable": 502, "stream_timeout": 504, "destination_denied": 403}.get(
                    exc.kind.value, 422
                )
                raise SessionError(exc.kind.value, status, str(exc)) from exc
            except ValueError as exc:  # zones in pixels that do not fit the stream's picture
                raise SessionError("invalid_zones", 422, str(exc)) from exc
            with self._lock:
                # stop_all() may have run while the stream was opening; it has stopped this
                # session already, so it must not start now.
                self._refuse_if_closing()
                session.start()
                del self._opening[ticket]
                self._sessions[session.id] = session
        except asyncio.CancelledError:
            # The caller went away while the camera was answering (the HTTP layer cancels the
            # start): nobody holds this session's viewer token, so it must not run. Stopping
            # it interrupts FFmpeg's open at once.
            log.info("start on %s cancelled: the caller went away while the stream was opening", shown)
            self._abandon(ticket, session, "start cancelled: the caller went away")
            raise
        except SessionError as exc:
            log.warning("start on %s failed: %s: %s", shown, exc.code, exc)
            self._abandon(ticket, session, f"start failed: {exc}")
            raise
        except BaseException as exc:
            log.warning("start on %s failed: %r", shown, exc)
            self._abandon(ticket, session, "start failed")
            raise
        log.info("session %s started on %s (%s)", session.id, shown, session.stream)
        return session

    def _open_done(self) -> None:
        with self._lock:
            self._opens -= 1

    def _abandon(self, ticket: object, session: Session | None, reason: str) -> None:
        with self._lock:
            self._opening.pop(ticket, None)
        if session is not None:
            session.stop(reason)

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
        # The opens still running were interrupted by their session's stop; none queue behind.
        self._open_pool.shutdown(wait=False, cancel_futures=True)
        return sessions
