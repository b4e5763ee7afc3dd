"""WebSocket `/ws/stream/{session_id}`: stream info, frame results, alerts, status; control messages in."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from .. import wire
from ..session import SessionError, SessionState

log = logging.getLogger(__name__)
router = APIRouter()


@router.websocket("/ws/stream/{session_id}")
async def stream(websocket: WebSocket, session_id: str, token: str = "", format: str = "json") -> None:
    app = websocket.app
    manager = app.state.manager
    hub = app.state.hub
    await websocket.accept()
    session = manager.find(session_id)
    if session is None:
        await websocket.close(code=4404, reason="Unknown session: it may have been stopped")
        return
    if not hmac.compare_digest(token.encode(), session.viewer_token.encode()):
        await websocket.close(code=4401, reason="Invalid viewer token")
        return
    if format not in ("json", "binary"):
        await websocket.close(code=4400, reason="format must be json or binary")
        return
    if hub.viewer_count(session_id) >= app.state.settings.max_viewers:
        await websocket.close(code=4429, reason="Too many viewers for this session")
        return

    viewer = hub.attach(websocket, session_id, format)
    sender = None
    try:
        await websocket.send_text(json.dumps(session.stream_info_message()))
        if session.state == SessionState.STOPPED:
            await websocket.close(code=1000, reason="session stopped")
            return
        sender = asyncio.create_task(hub.serve(viewer))
        receiver = asyncio.create_task(_receive_controls(websocket, manager, session))
        done, pending = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for task in done:
            exc = task.exception()
            if exc is not None and not isinstance(exc, (WebSocketDisconnect, RuntimeError)):
                log.warning("viewer of session %s ended with %r", session_id, exc)
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        hub.detach(viewer)


async def _receive_controls(websocket: WebSocket, manager, session) -> None:
    while True:
        received = await websocket.receive()
        if received["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(received.get("code", 1000))
        text = received.get("text")
        if text is None:
            await websocket.send_text(json.dumps({"type": "error", "detail": "messages must be JSON text"}))
            continue
        try:
            message = json.loads(text)
        except json.JSONDecodeError:
            await websocket.send_text(json.dumps({"type": "error", "detail": "messages must be JSON"}))
            continue
        action = message.get("action") if isinstance(message, dict) and message.get("type") == "control" else None
        if action in ("pause", "resume"):
            session.paused = action == "pause"
            manager.hub.publish_event(session.id, wire.status_message(session.snapshot()))
        elif action == "stop":
            with contextlib.suppress(SessionError):
                await asyncio.to_thread(manager.stop, session.id, "stopped by a viewer")
        else:
            await websocket.send_text(
                json.dumps({"type": "error", "detail": 'expected {"type": "control", "action": "pause|resume|stop"}'})
            )
