"""Sessions: one stream, its reader, its publisher stage, its state; and their manager."""

from __future__ import annotations

import dataclasses
import enum
import logging
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

from rtdetr_service.analytics.alerts import AlertEngine, AlertRule
from rtdetr_service.analytics.events import EventLifecycle
from rtdetr_service.analytics.publisher import Publisher
from rtdetr_service.analytics.tracking import Tracker, TrackerOptions
from rtdetr_service.analytics.zones import ZoneConfig, ZoneEngine
from rtdetr_service.core.logs import LogContext, log_context
from rtdetr_service.core.results import SessionSnapshot, SessionView
from rtdetr_service.core.slot import LatestSlot
from rtdetr_service.core.stats import RateMeter, SessionStats
from rtdetr_service.core.types import Detection, Frame, FrameResult, ModelInfo, StreamInfo, VideoPacket, VideoTemplate
from rtdetr_service.core.vlm import DescribeOptions
from rtdetr_service.ingest.reader import ReaderState, StreamReader
from rtdetr_service.outputs import messages
from rtdetr_service.outputs.base import Sink
from rtdetr_service.outputs.hub import Hub
from rtdetr_service.outputs.recordings.recorder import Recorder, RecorderStats
from rtdetr_service.outputs.recordings.settings import RecordMode

if TYPE_CHECKING:
    from rtdetr_service.inference.worker import InferenceWorker
    from rtdetr_service.outputs.recordings.recordings import Recordings
    from rtdetr_service.sessions.settings import SessionSettings

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
    """A request on sessions that cannot be served: `code` names why (web/errors.py maps it to a
    status), the message says it in words a user can act on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


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
    record: RecordMode = "off"  # what of the camera's video is kept (the start route fills in RECORD)
    describe: DescribeOptions | None = None  # its events described by the vision-language model; None: never


class Session:
    """One camera: reader thread → (shared inference worker) → publisher thread → sinks."""

    def __init__(
        self,
        options: SessionOptions,
        *,
        settings: SessionSettings,
        worker: InferenceWorker,
        hub: Hub,
        sinks: Sequence[Sink],
        model: ModelInfo,
        clock=time.monotonic,
        reader_factory: Callable[..., StreamReader] = StreamReader,
        identity: tuple[str, str] | None = None,
        recordings: Recordings | None = None,
    ) -> None:
        # A new session gets a new id and viewer token; one run again elsewhere keeps both.
        self.id, self.viewer_token = identity or (str(uuid.uuid4()), secrets.token_urlsafe(24))
        self.log_context = LogContext(self.id, options.camera)  # what this session's log lines carry
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
        # The recorder gets the reader's packets; it costs the reader a copy of each, nothing more. The
        # record mode can change while the session runs (set_record): the reader hands packets to the
        # session, which passes them to the recorder of the moment, and keeps each connection's
        # template so that a recorder attached mid-stream knows what it records.
        self._recordings = recordings
        self.recorder: Recorder | None = None
        self._template: VideoTemplate | None = None
        self._recorder_lock = threading.Lock()  # the template and the recorder, as the reader sees them
        self._record_change = threading.Lock()  # one change of record mode (or the stop) at a time
        self._started = False
        if options.record != "off" and recordings is not None:
            self.recorder = recordings.recorder(self.id, options.camera, options.record)
        self._reader = reader_factory(
            options.stream_url,
            on_frame=self._on_frame,
            on_state=self._on_reader_state,
            open_timeout=settings.open_timeout_s,
            read_timeout=settings.read_timeout_s,
            reconnect_min=settings.reconnect_min_s,
            reconnect_max=settings.reconnect_max_s,
            name=f"reader-{self.id[:8]}",
            on_packet=self._on_packet if self.recorder is not None else None,
            on_connect=self._on_connect,
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
            self._hub.publish_event(self.id, messages.status_message(self.snapshot()))
        return changed

    def open(self) -> StreamInfo:
        """Open the stream (blocking, bounded by OPEN_TIMEOUT_S), then build the publisher for
        its size; raises StreamError, or ValueError for zones that do not fit the picture."""
        with log_context(self.log_context):  # on a thread of the open pool
            self.stream = self._reader.open()
            zones = ZoneConfig.from_dict(self.options.zones or {}, width=self.stream.width, height=self.stream.height)
            self._publisher = self._build_publisher(zones)
        return self.stream

    def _build_publisher(self, zones: ZoneConfig) -> Publisher:
        options, settings = self.options, self._settings
        view = self._view()
        return Publisher(
            view,
            tracker=Tracker(
                options.tracking,
                activation_threshold=options.confidence_threshold,
                frame_rate=self.stream.fps if self.stream and self.stream.fps > 0 else 30.0,
            ),
            # A box missed for a frame or two still stands where it was: occupancy must not re-fire.
            zones=ZoneEngine(zones, hold_s=options.tracking.keep_s),
            events=EventLifecycle(
                self.id,
                options.camera,
                end_after_s=settings.event_end_after_s,
                track_hz=settings.event_track_hz,
                track_max_points=settings.event_track_max_points,
            ),
            sinks=self._sinks,
            alerts=AlertEngine(options.alert_rule) if options.alert_rule else None,
            classes=options.classes,
            on_tick=self._tick,
            on_error=self._publish_error,
            on_crash=self._publisher_crashed,
            clock=self._clock,
        )

    def _view(self) -> SessionView:
        """What the sinks know of the session: its events have clips when it has a recorder."""
        options = self.options
        records = self.recorder is not None
        return SessionView(
            self.id, options.camera, options.enable_drawing, options.jpeg_quality, records, options.describe
        )

    def start(self) -> None:
        # RUNNING first: a reader that loses the stream at once reports `reconnecting`, which
        # must not be overwritten afterwards. The reader's thread logs under who started it.
        with log_context(self.log_context):
            self._set_state(SessionState.RUNNING)
            self._worker.register(self)
            self._publisher.start()
            with self._record_change:
                self._started = True
                if self.recorder is not None:
                    self.recorder.start()
            self._reader.start()

    def stop(self, reason: str = "stopped by request", timeout: float = 0.5, *, handover: bool = False) -> bool:
        """Stop everything this session owns; idempotent and legal from every state.

        Returns True when every thread has ended within `timeout`. A reader blocked inside FFmpeg
        ends by itself within READ_TIMEOUT_S and releases the stream on its way out. With
        `handover` the session goes on elsewhere (another replica takes it): its viewers are told
        it is `moving` and stay connected, instead of `session_stopped` and closed.
        """
        with log_context(self.log_context):
            return self._stop_threads(reason, timeout, handover)

    def _stop_threads(self, reason: str, timeout: float, handover: bool = False) -> bool:
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
        with self._record_change:  # a change of record mode under way ends first, and none starts after
            recorder = self.recorder
        if recorder is not None:
            # The segment being written is finished and indexed: the packets up to the stop are kept.
            recorder.stop(max(0.5, deadline - time.monotonic()))
        if handover:
            self._hub.publish_event(self.id, messages.moving_message(self.id, reason))
            log.info("session %s stopped here, handed over: %s", self.id, reason)
            return not self._alive()
        self._hub.close_session(self.id, messages.stopped_message(self.id, reason), reason)
        log.info("session %s stopped: %s", self.id, reason)
        return not self._alive()

    def _alive(self) -> bool:
        recording = self.recorder is not None and self.recorder.alive
        return recording or self._reader.alive or (self._publisher is not None and self._publisher.alive)

    def join(self, timeout: float) -> bool:
        """Wait for the session's threads to end (after stop)."""
        deadline = time.monotonic() + timeout
        self._reader.join(timeout)
        if self._publisher is not None:
            self._publisher.join(max(0.0, deadline - time.monotonic()))
        if self.recorder is not None:
            self.recorder.join(max(0.0, deadline - time.monotonic()))
        return not self._alive()

    # -- reader side -----------------------------------------------------------------------

    def _on_connect(self, template: VideoTemplate) -> None:
        with self._recorder_lock:
            self._template = template
            if self.recorder is not None:
                self.recorder.on_connect(template)

    def _on_packet(self, packet: VideoPacket) -> None:
        recorder = self.recorder
        if recorder is not None:
            recorder.on_packet(packet)

    def _on_frame(self, frame: Frame) -> None:
        self.frames_decoded += 1
        self._source_rate.mark()
        if self._frames.empty:
            # The model keeps up: convert here, on this session's own thread, in parallel with
            # other sessions. When it does not, most frames are replaced unread and are never
            # converted; the worker converts the few it takes.
            frame.convert()
        self._frames.put(frame)

    def _on_reader_state(self, state: ReaderState, error: str | None) -> None:
        match state:
            case ReaderState.RECONNECTING:
                self._set_state(SessionState.RECONNECTING, error)
            case ReaderState.RUNNING:
                self._set_state(SessionState.RUNNING)
                if self._reader.info is not None:
                    self.stream = self._reader.info
            case ReaderState.FAILED:
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
            self._hub.publish_event(self.id, messages.status_message(self.snapshot()))

    def _publish_error(self, message: str) -> None:
        self.last_error = message

    def _publisher_crashed(self, message: str) -> None:
        if self._set_state(SessionState.FAILED, message):
            self._worker.unregister(self.id)
            self._reader.stop(0.0)  # a failed session must not keep the camera connection

    # -- recording ---------------------------------------------------------------------------

    def set_record(self, mode: RecordMode, timeout: float = 2.0) -> None:
        """Record `off`, `events` or `continuous` from now on. A recorder is started (from the next
        keyframe) or stopped (its segment finished and indexed, within `timeout`); from events to
        continuous or back, the segment being written is kept as the new mode says. Without
        recordings the mode is kept and the status says why nothing is recorded."""
        with self._record_change:
            if self._stop.is_set():
                raise SessionError("session_not_found", f"Session {self.id} has stopped")
            self.options = dataclasses.replace(self.options, record=mode)
            current = self.recorder
            if mode == "off" or self._recordings is None:
                self._reader.hand_packets(None)
                with self._recorder_lock:
                    self.recorder = None
                if current is not None:
                    current.stop(timeout)
            elif current is not None:
                current.mode = mode
            else:
                self._attach(self._recordings.recorder(self.id, self.options.camera, mode))
        if self._publisher is not None:
            self._publisher.view = self._view()  # its events' messages say has_clip from now on
        log.info("session %s records %s", self.id, mode)

    def _attach(self, recorder: Recorder) -> None:
        if self._started:
            recorder.start()
        with self._recorder_lock:
            if self._template is not None:
                recorder.on_connect(self._template)
            self.recorder = recorder
        self._reader.hand_packets(self._on_packet)

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
        self._hub.publish_event(self.id, messages.zones_message(self.id, zones))
        return zones

    def counts(self) -> dict:
        return self._publisher.counts() if self._publisher is not None else {"zones": {}, "lines": {}, "rules": {}}

    def _ready_publisher(self) -> Publisher:
        if self._publisher is None:
            raise SessionError("session_not_ready", "The session is still opening its stream")
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
        return SessionSnapshot(
            self.id, self._state.value, self.paused, self.last_error, stats, self.counts(), self._recording()
        )

    def _recording(self) -> dict | None:
        """The recorder's figures and state; None when the session does not record."""
        if self.recorder is not None:
            return self.recorder.stats().as_dict()
        if self.options.record != "off" and self._recordings is None:
            words = "not recording: recordings need the event store (EVENTS_ENABLED), which is not open"
            return RecorderStats(self.options.record, 0, 0, 0, 0, 0, 0, True, words, False).as_dict() | {
                "state": "unavailable"
            }
        return None

    def stream_info_message(self) -> dict:
        zones = self._publisher.zones().as_dict() if self._publisher is not None else ZoneConfig().as_dict()
        return messages.stream_info_message(
            self.snapshot(), self.stream, self.model, enable_drawing=self.options.enable_drawing, zones=zones
        )
