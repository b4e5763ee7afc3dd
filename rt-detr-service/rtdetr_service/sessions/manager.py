"""The session manager: owns every session of this replica, and stops them all at shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable, Sequence

from rtdetr_service.core.logs import log_context
from rtdetr_service.core.types import ModelInfo
from rtdetr_service.ingest.reader import StreamReader
from rtdetr_service.ingest.urls import DestinationPolicy, StreamError, redact_url, validate_stream_url
from rtdetr_service.outputs.base import Sink
from rtdetr_service.outputs.hub import Hub
from rtdetr_service.sessions.session import Session, SessionError, SessionOptions

if TYPE_CHECKING:
    from rtdetr_service.inference.worker import InferenceWorker
    from rtdetr_service.sessions.settings import SessionSettings

log = logging.getLogger(__name__)

_SHUTTING_DOWN = "The service is shutting down; start the session elsewhere"


class SessionManager:
    """Owns every session of this replica: start, stop, look up, and stop all at shutdown."""

    def __init__(self, settings: SessionSettings, hub: Hub) -> None:
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
        # The camera is known from the start, the session id once it is built.
        with log_context(camera=options.camera):
            return await self._start(options, reader_factory)

    async def _start(self, options: SessionOptions, reader_factory: Callable[..., StreamReader] | None) -> Session:
        worker = self._ready_worker()
        shown = redact_url(options.stream_url)
        options, reader_factory = self._reader_for(options, reader_factory)
        ticket = self._reserve()
        session: Session | None = None
        try:
            session = self._build(ticket, options, worker, reader_factory)
            await self._open(session)
            self._commit(ticket, session)
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
        self, ticket: object, options: SessionOptions, worker: InferenceWorker, reader: Callable[..., StreamReader]
    ) -> Session:
        """The session of this ticket, not yet opened; stop_all() stops it from now on."""
        try:
            session = Session(
                options,
                settings=self.settings,
                worker=worker,
                hub=self.hub,
                sinks=self.sinks,
                model=worker.detector.info,
                reader_factory=reader,
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
        with self._lock:
            session = self._sessions.pop(session_id, None)
        if session is None:
            raise SessionError("session_not_found", f"No session with id {session_id!r}")
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
