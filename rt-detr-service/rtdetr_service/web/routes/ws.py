"""WebSocket `/ws/stream/{session_id}`: stream info, frame results, alerts, status; control messages in."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from rtdetr_service.analytics.zones import ZoneConfig
from rtdetr_service.core.logs import LogContext, log_context
from rtdetr_service.outputs import messages
from rtdetr_service.outputs.bus.relay import BusRelay
from rtdetr_service.outputs.hub import Hub
from rtdetr_service.sessions.desired import options_from_record
from rtdetr_service.sessions.manager import SessionManager
from rtdetr_service.sessions.records import SessionRecord
from rtdetr_service.sessions.session import Session, SessionError, SessionState
from rtdetr_service.web.deps import HubDep, ManagerDep, RelayDep, SettingsDep

log = logging.getLogger(__name__)
router = APIRouter()

# Control messages are a few dozen bytes, sent by a person clicking: anything much bigger or
# faster is refused before it costs the event loop a parse or a status broadcast.
MAX_CONTROL_BYTES = 4096
CONTROL_RATE = 5.0  # messages per second, per viewer, sustained
CONTROL_BURST = 10
USAGE = 'expected {"type": "control", "action": "pause|resume|stop"}'


def viewer_path(session: Session) -> str:
    """Where a viewer of this session connects (the route below), its viewer token included."""
    return viewer_path_of(session.id, session.viewer_token)


def viewer_path_of(session_id: str, token: str) -> str:
    return f"/ws/stream/{session_id}?token={token}"


@router.websocket("/ws/stream/{session_id}")
async def stream(
    websocket: WebSocket,
    session_id: str,
    manager: ManagerDep,
    hub: HubDep,
    settings: SettingsDep,
    relay: RelayDep,
    token: str = "",
    format: str = "json",
) -> None:
    """One viewer, whichever replica runs the session: this one (the hub is fed by the session) or
    another (fed through the bus by the relay). The viewer stays when the session changes replica:
    the relay follows it there and back, and control messages go wherever it runs at the time."""
    await websocket.accept()
    session, record = manager.find(session_id), None
    if session is not None:
        refusal = _refusal(token, session.viewer_token, format)
    else:
        record, refusal = await _recorded(session_id, manager, relay, token, format)
    refusal = refusal or _full(hub, session_id, settings.max_viewers)
    if refusal is not None:
        await websocket.close(*refusal)
        return
    context = session.log_context if session is not None else LogContext(session_id, None)
    with log_context(context):  # the viewer's tasks copy it
        await _serve_viewer(websocket, session_id, session or record, manager, hub, relay, format)


def _refusal(token: str, expected: str, format: str) -> tuple[int, str] | None:
    """Why a viewer may not watch (close code, reason): a wrong token (compared in constant time), a bad format."""
    if not hmac.compare_digest(token.encode(), expected.encode()):
        return 4401, "Invalid viewer token"
    if format not in ("json", "binary"):
        return 4400, "format must be json or binary"
    return None


def _full(hub: Hub, session_id: str, max_viewers: int) -> tuple[int, str] | None:
    if hub.viewer_count(session_id) >= max_viewers:
        return 4429, "Too many viewers for this session"
    return None


async def _recorded(
    session_id: str, manager: SessionManager, relay: BusRelay | None, token: str, format: str
) -> tuple[SessionRecord | None, tuple[int, str] | None]:
    """A session this replica does not run, from the store, and why a viewer may not watch it (or None)."""
    record = None
    if manager.cluster is not None:
        with contextlib.suppress(SessionError):  # the store unreachable: said as unknown, in words below
            record = await asyncio.to_thread(manager.cluster.find, session_id)
    if record is None or record.desired != "run":
        return None, (4404, "Unknown session: it may have been stopped")
    refusal = _refusal(token, record.viewer_token, format)
    if refusal is None and relay is None:
        where = f"replica {record.owner}" if record.owner else "no replica yet"
        refusal = (4503, f"This session runs on {where}; without BUS_URL only its own replica shows it"[:120])
    return record, refusal


async def _serve_viewer(
    websocket: WebSocket,
    session_id: str,
    watched: Session | SessionRecord,
    manager: SessionManager,
    hub: Hub,
    relay: BusRelay | None,
    format: str,
) -> None:
    """`watched`: the session, when it runs here, else its record (another replica runs it, or
    none does right now)."""
    viewer = hub.attach(websocket, session_id, format)
    if relay is not None:
        relay.watch(session_id)  # relays it only while another replica runs it
    try:
        if isinstance(watched, Session):
            await websocket.send_text(json.dumps(watched.stream_info_message()))
            if watched.state == SessionState.STOPPED:
                await websocket.close(code=1000, reason="session stopped")
                return
        else:
            info = await relay.stream_info(session_id)
            if isinstance(info, str):  # no replica answers for it now: what the store knows, and why
                hub.reply(viewer, _recorded_info(watched, manager))
                info = messages.error_message(info)
            hub.reply(viewer, info)
        sender = asyncio.create_task(hub.serve(viewer))
        receiver = asyncio.create_task(_receive_controls(websocket, hub, viewer, _control(manager, relay, session_id)))
        await _until_either_ends(sender, receiver, session_id)
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        hub.detach(viewer)
        if relay is not None:
            relay.unwatch(session_id)


def _recorded_info(record: SessionRecord, manager: SessionManager) -> dict:
    options = options_from_record(record.options)
    try:  # zones in pixels need the picture's size: they come with the owner's stream_info
        zones = ZoneConfig.from_dict(options.zones or {}).as_dict()
    except ValueError:
        zones = ZoneConfig().as_dict()
    worker = manager.worker
    return messages.recorded_stream_info(
        record.id,
        record.shown_state,
        worker.detector.info if worker is not None else None,  # the replicas run the same model
        enable_drawing=options.enable_drawing,
        zones=zones,
    )


def _control(manager: SessionManager, relay: BusRelay | None, session_id: str):
    """A viewer's control, carried out wherever the session runs when it arrives."""

    async def act(action: str) -> str | None:
        session = manager.find(session_id)
        if session is None:
            if relay is None:
                return "this session no longer runs on this replica"
            return await relay.control(session_id, action)
        if action in ("pause", "resume"):
            session.paused = action == "pause"
            manager.session_hub.publish_event(session.id, messages.status_message(session.snapshot()))
        else:  # stop
            with contextlib.suppress(SessionError):
                await asyncio.to_thread(manager.stop, session.id, "stopped by a viewer")
        return None

    return act


async def _until_either_ends(sender: asyncio.Task, receiver: asyncio.Task, session_id: str) -> None:
    done, pending = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    for task in done:
        exc = task.exception()
        if exc is not None and not isinstance(exc, (WebSocketDisconnect, RuntimeError)):
            log.warning("viewer of session %s ended with %r", session_id, exc, exc_info=exc)


class _Bucket:
    """Token bucket: `take()` is True while the sender keeps to `rate` per second (with a burst)."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic) -> None:
        self._rate, self._burst, self._clock = rate, burst, clock
        self._tokens, self._at = float(burst), clock()
        self._warned_at = -1e9

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def warn(self) -> bool:
        """True at most once a second: whether to tell the sender it is being ignored."""
        now = self._clock()
        if now - self._warned_at >= 1.0:
            self._warned_at = now
            return True
        return False


async def _receive_controls(websocket: WebSocket, hub: Hub, viewer, act) -> None:
    """A viewer's control messages, rate-limited and checked; `act(action)` carries each out and
    says in words why it could not (None: done)."""
    bucket = _Bucket(CONTROL_RATE, CONTROL_BURST)

    def error(detail: str) -> None:
        # Through the viewer's own queue: its sender bounds every send by VIEWER_STALL_S.
        hub.reply(viewer, {"type": "error", "detail": detail})

    while True:
        received = await websocket.receive()
        if received["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(received.get("code", 1000))
        if not bucket.take():
            if bucket.warn():
                error(f"too many messages: at most {CONTROL_RATE:g} per second; the rest are ignored")
            continue
        text = received.get("text")
        if text is None:
            error("messages must be JSON text")
            continue
        if len(text) > MAX_CONTROL_BYTES:
            error(f"control messages are at most {MAX_CONTROL_BYTES} bytes; {USAGE}")
            continue
        try:
            message = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than Python parses
            error(f"messages must be JSON; {USAGE}")
            continue
        action = message.get("action") if isinstance(message, dict) and message.get("type") == "control" else None
        if action in ("pause", "resume", "stop"):
            problem = await act(action)
            if problem:
                error(problem)
        else:
            error(USAGE)
