"""The session manager: owns every session of this replica, and stops them all at shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

from rtdetr_service.core.logs import log_context
from rtdetr_service.core.types import ModelInfo
from rtdetr_service.ingest.reader import StreamReader
from rtdetr_service.ingest.urls import DestinationPolicy, StreamError, redact_url, validate_stream_url
from rtdetr_service.outputs import messages
from rtdetr_service.outputs.base import Sink
from rtdetr_service.outputs.hub import Hub
from rtdetr_service.sessions.records import SessionRecord
from rtdetr_service.sessions.session import Session, SessionError, SessionOptions

if TYPE_CHECKING:
    from rtdetr_service.inference.worker import InferenceWorker
    from rtdetr_service.outputs.recordings.recordings import Recordings
    from rtdetr_service.sessions.settings import SessionSettings

log = logging.getLogger(__name__)

_SHUTTING_DOWN = "The service is shutting down; start the session elsewhere"


class SessionStore(Protocol):
    """What the manager and the routes ask of the sessions recorded in the store (sessions/cluster.py)."""

    replica: str
    interval_s: float
    shared: bool

    def record_pending(self, options: SessionOptions) -> tuple[str, str]: ...
    def record(self, session: Session) -> None: ...
    def stopped(self, session_id: str) -> None: ...
    def request_stop(self, session_id: str) -> bool: ...
    def update_options(self, session_id: str, options: dict) -> int: ...
    def options_changed_here(self, session_id: str, changes: dict) -> None: ...
    def find(self, session_id: str) -> SessionRecord | None: ...
    def list(self) -> list[SessionRecord]: ...


class SessionManager:
    """Owns every session of this replica: start, stop, look up, and stop all at shutdown."""

    def __init__(self, settings: SessionSettings, hub: Hub) -> None:
        self.settings = settings
        self.hub = hub
        self.session_hub = hub  # what sessions tell viewers through: the hub, or the bus's OwnerHub
        self.worker: InferenceWorker | None = None
        self.sinks: list[Sink] = []
        self.cluster: SessionStore | None = None  # the sessions recorded in the store (sessions/cluster.py)
        self.recordings: Recordings | None = None  # where sessions record (None without an event store)
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

    def attach_worker(self, worker: InferenceWorker, sinks: Sequence[Sink] = (), session_hub=None) -> None:
        """The model is ready: sessions may start, and publish to these sinks. `session_hub` is what
        sessions tell their viewers through (the bus's OwnerHub: viewers here and on other replicas)."""
        self.sinks = list(sinks)
        if session_hub is not None:
            self.session_hub = session_hub
        self.worker = worker

    def control(self, session_id: str, action: str) -> None:
        """A viewer's `pause`, `resume` or `stop` for a session of this replica; ValueError in words."""
        session = self.find(session_id)
        if session is None:
            raise ValueError(f"session {session_id} does not run on this replica")
        if action in ("pause", "resume"):
            session.paused = action == "pause"
            self.session_hub.publish_event(session_id, messages.status_message(session.snapshot()))
        elif action == "stop":
            self.stop(session_id, "stopped by a viewer")
        else:
            raise ValueError(f"unknown action {action!r}: pause, resume or stop")

    async def start(
        self,
        options: SessionOptions,
        *,
        reader_factory: Callable[..., StreamReader] | None = None,
        identity: tuple[str, str] | None = None,
    ) -> Session:
        """Open the stream, then run the session; on any failure nothing is left behind.

        `reader_factory` replaces the network reader (benchmarks feed paced local files through
        it); URLs given to the default reader must pass the scheme check. A new session is
        recorded in the store (when there is one) as this replica's; `identity` (id, viewer
        token) runs a recorded session again, as the cluster does with the sessions it claims.
        """
        # The camera is known from the start, the session id once it is built.
        with log_context(camera=options.camera):
            return await self._start(options, reader_factory, identity)

    async def _start(
        self,
        options: SessionOptions,
        reader_factory: Callable[..., StreamReader] | None,
        identity: tuple[str, str] | None,
    ) -> Session:
        worker = self._ready_worker()
        shown = redact_url(options.stream_url)
        options, reader_factory = self._reader_for(options, reader_factory)
        ticket = self._reserve()
        session: Session | None = None
        try:
            session = self._build(ticket, options, worker, reader_factory, identity)
            await self._open(session)
            self._commit(ticket, session)
            if self.cluster is not None and identity is None:
                await asyncio.to_thread(self.cluster.record, session)
            if identity is not None:
                # Run here again (moved from another replica, or resumed): viewers that stayed
                # connected through the move learn its stream as it is now.
                self.session_hub.publish_event(session.id, session.stream_info_message())
        except asyncio.CancelledError:
            # The caller went away while the camera was answering (the HTTP layer cancels the
            # start): nobody holds this session's viewer token, so it must not run. Stopping
            # it interrupts FFmpeg's open at once.
            log.info("start on %s cancelled: the caller went away while the stream was opening", shown)
            self._abandon(ticket, session, "start cancelled: the caller went away")
            if self.cluster is not None and session is not None and identity is None:
                self.cluster.stopped(session.id)  # in case it was recorded already
            raise
        except SessionError as exc:
            log.warning("start on %s failed: %s: %s", shown, exc.code, exc)
            self._abandon(ticket, session, f"start failed: {exc}")
            raise
        except BaseException as exc:
            log.warning("start on %s failed: %r", shown, exc)
            self._abandon(ticket, session, "start failed")
            raise
        with log_context(session.log_context):
            log.info("session %s started on %s (%s)", session.id, shown, session.stream)
        return session

    def _reader_for(
        self, options: SessionOptions, reader_factory: Callable[..., StreamReader] | None
    ) -> tuple[SessionOptions, Callable[..., StreamReader]]:
        """The options and reader to start with: a given reader as is; the network reader only
        for a URL of an allowed scheme, under the destination policy."""
        if reader_factory is not None:
            return options, reader_factory
        try:
            url = validate_stream_url(options.stream_url, self.settings.allowed_schemes)
        except StreamError as exc:
            log.info("start on %s refused: %s", redact_url(options.stream_url), exc)
            raise SessionError(exc.kind.value, str(exc)) from exc
        network = functools.partial(StreamReader, policy=self.policy, schemes=tuple(self.settings.allowed_schemes))
        return dataclasses.replace(options, stream_url=url), network

    def _reserve(self) -> object:
        """A ticket for one start: a place among MAX_SESSIONS and one among MAX_OPENS."""
        with self._lock:
            self._refuse_if_closing()
            if len(self._sessions) + len(self._opening) >= self.settings.max_sessions:
                raise SessionError(
                    "too_many_sessions",
                    f"MAX_SESSIONS={self.settings.max_sessions} sessions are running; stop one first",
                )
            if self._opens >= self.settings.max_opens:
                raise SessionError(
                    "too_many_opens",
                    f"MAX_OPENS={self.settings.max_opens} streams are being opened right now; retry in a few seconds",
                )
            ticket = object()
            self._opening[ticket] = None
            self._opens += 1
        return ticket

    def _build(
        self,
        ticket: object,
        options: SessionOptions,
        worker: InferenceWorker,
        reader: Callable[..., StreamReader],
        identity: tuple[str, str] | None,
    ) -> Session:
        """The session of this ticket, not yet opened; stop_all() stops it from now on."""
        try:
            session = Session(
                options,
                settings=self.settings,
                worker=worker,
                hub=self.session_hub,
                sinks=self.sinks,
                model=worker.detector.info,
                reader_factory=reader,
                identity=identity,
                recordings=self.recordings,
            )
        except BaseException:
            self._open_done()  # no open thread will run to give the place back
            raise
        with self._lock:
            self._opening[ticket] = session
        return session

    async def _open(self, session: Session) -> None:
        """Open the session's stream on a thread of the open pool; a failure as a SessionError."""
        try:
            opening = self._open_pool.submit(session.open)
        except RuntimeError:  # stop_all() shut the pool down a moment ago
            self._open_done()
            raise SessionError("shutting_down", _SHUTTING_DOWN) from None
        # Counted until the thread is done with it (or it never ran), not until we stop
        # waiting: a cancelled start's FFmpeg may take a moment to give up.
        opening.add_done_callback(lambda _: self._open_done())
        try:
            await asyncio.wrap_future(opening)
        except StreamError as exc:
            with self._lock:
                self._refuse_if_closing()  # stop_all() interrupted this open: that is the reason
            raise SessionError(exc.kind.value, str(exc)) from exc
        except ValueError as exc:  # zones in pixels that do not fit the stream's picture
            raise SessionError("invalid_zones", str(exc)) from exc

    def _commit(self, ticket: object, session: Session) -> None:
        """Run the opened session and list it in place of its ticket."""
        with self._lock:
            # stop_all() may have run while the stream was opening; it has stopped this
            # session already, so it must not start now.
            self._refuse_if_closing()
            session.start()
            del self._opening[ticket]
            self._sessions[session.id] = session

    def _open_done(self) -> None:
        with self._lock:
            self._opens -= 1

    def _abandon(self, ticket: object, session: Session | None, reason: str) -> None:
        with self._lock:
            self._opening.pop(ticket, None)
            if session is not None and self._sessions.get(session.id) is session:
                del self._sessions[session.id]  # committed, then its recording failed
        if session is not None:
            session.stop(reason)

    def _refuse_if_closing(self) -> None:
        if self._closing:
            raise SessionError("shutting_down", _SHUTTING_DOWN)

    def _ready_worker(self) -> InferenceWorker:
        worker = self.worker
        if worker is None:
            raise SessionError("model_not_ready", "The model is still loading; retry in a few seconds")
        return worker

    def model(self) -> ModelInfo:
        """The loaded model; SessionError(model_not_ready) while it is still loading."""
        return self._ready_worker().detector.info

    def get(self, session_id: str) -> Session:
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None:
            raise SessionError("session_not_found", f"No session with id {session_id!r}")
        return session

    def find(self, session_id: str) -> Session | None:
        with self._lock:
            return self._sessions.get(session_id)

    def list(self) -> list[Session]:
        with self._lock:
            return list(self._sessions.values())

    def stop(self, session_id: str, reason: str = "stopped by request") -> Session:
        """Stop a session of this replica for good (recorded as stopped in the store)."""
        with self._lock:
            session = self._sessions.pop(session_id, None)
        if session is None:
            raise SessionError("session_not_found", f"No session with id {session_id!r}")
        # Recorded before its viewers are told: whoever hears `session_stopped` and asks finds it
        # stopped, on every replica.
        if self.cluster is not None:
            self.cluster.stopped(session_id)
        session.stop(reason)
        return session

    def drop(self, session_id: str, reason: str, *, handover: bool = False) -> Session | None:
        """Stop this replica's copy of a session, leaving the store alone: the cluster calls it when
        another replica owns the session now (`handover`: its viewers stay, told it is moving), or
        it was stopped from elsewhere."""
        with self._lock:
            session = self._sessions.pop(session_id, None)
        if session is not None:
            session.stop(reason, handover=handover)
        return session

    def free_places(self) -> int:
        """Sessions this replica may still take under MAX_SESSIONS (none once it shuts down)."""
        with self._lock:
            if self._closing:
                return 0
            return max(0, self.settings.max_sessions - len(self._sessions) - len(self._opening))

    def stop_all(self, reason: str = "service shutting down", *, handover: bool = False) -> list[Session]:
        """Stop every session, those still opening their stream included, and refuse new ones;
        `handover` when they go on elsewhere (drained: see Session.stop)."""
        with self._lock:
            self._closing = True
            sessions = [*self._sessions.values(), *(s for s in self._opening.values() if s is not None)]
            self._sessions.clear()
        for session in sessions:
            session.stop(reason, handover=handover)
        # The opens still running were interrupted by their session's stop; none queue behind.
        self._open_pool.shutdown(wait=False, cancel_futures=True)
        return sessions
