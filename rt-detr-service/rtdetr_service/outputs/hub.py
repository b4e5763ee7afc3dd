"""WebSocket fan-out: each viewer has a newest-frame slot and its own sender task.

Publisher threads hand messages over with `publish_*` (thread-safe); the event loop does the
sending. A slow viewer skips frames; it never delays the session or other viewers. A viewer
whose socket takes nothing for `stall_s` while a message waits for it is closed (4408) and its
slot freed at once: otherwise clients that connect and never read would hold every slot.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from starlette.websockets import WebSocket, WebSocketState

log = logging.getLogger(__name__)

Format = Literal["json", "binary"]
ALERT_BACKLOG = 64  # events (alerts, status) per viewer; beyond this the oldest are dropped
STALLED = 4408  # close code of a viewer that stopped taking messages (4000 + HTTP 408)


@dataclass(slots=True)
class FramePayload:
    """One processed frame, serialised once per wire format a viewer asked for."""

    text: str | None = None
    binary: bytes | None = None

    def for_format(self, fmt: Format) -> str | bytes | None:
        return self.text if fmt == "json" else self.binary


@dataclass(eq=False)
class Viewer:
    websocket: WebSocket
    session_id: str
    format: Format
    frame: FramePayload | None = None
    events: deque = field(default_factory=lambda: deque(maxlen=ALERT_BACKLOG))
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closing: str | None = None  # reason, once the session ended
    close_code: int = 1000
    frames_sent: int = 0
    frames_skipped: int = 0


class Hub:
    """Registry of viewers per session; must be created inside the running event loop."""

    def __init__(self, stall_s: float = 10.0, close_grace_s: float = 5.0) -> None:
        self._loop = asyncio.get_running_loop()
        self._viewers: dict[str, set[Viewer]] = {}
        self._stall_s = stall_s
        # How long a stalled viewer gets to take its close frame before its connection is cut.
        self._close_grace_s = close_grace_s

    # -- called from the event loop --------------------------------------------------------

    def attach(self, websocket: WebSocket, session_id: str, fmt: Format) -> Viewer:
        viewer = Viewer(websocket, session_id, fmt)
        self._viewers.setdefault(session_id, set()).add(viewer)
        return viewer

    def detach(self, viewer: Viewer) -> None:
        viewers = self._viewers.get(viewer.session_id)
        if viewers is not None:
            viewers.discard(viewer)
            if not viewers:
                self._viewers.pop(viewer.session_id, None)

    async def serve(self, viewer: Viewer) -> None:
        """Send this viewer's messages until it disconnects, stalls or the session ends."""
        ws = viewer.websocket
        while True:
            await viewer.wake.wait()
            viewer.wake.clear()
            try:
                while viewer.events:
                    await self._send(ws, viewer.events.popleft())
                payload, viewer.frame = viewer.frame, None
                if payload is not None:
                    data = payload.for_format(viewer.format)
                    if data is not None:
                        await self._send(ws, data)
                    viewer.frames_sent += 1
            except TimeoutError:
                self.detach(viewer)  # the slot is free now, whatever the close below takes
                log.warning(
                    "viewer of session %s closed: it took no message for VIEWER_STALL_S=%g s",
                    viewer.session_id,
                    self._stall_s,
                )
                await self._close_socket(ws, STALLED, f"viewer stalled: took no message for {self._stall_s:g} s")
                return
            if viewer.closing is not None:
                await self._close_socket(ws, viewer.close_code, viewer.closing[:120])
                return

    async def _send(self, ws: WebSocket, data: str | bytes) -> None:
        # The server's send waits while the socket's buffers are full: that wait is the stall.
        async with asyncio.timeout(self._stall_s):
            if isinstance(data, bytes):
                await ws.send_bytes(data)
            else:
                await ws.send_text(data)

    async def _close_socket(self, ws: WebSocket, code: int, reason: str) -> None:
        """Close with `code`; a client that does not take even the close frame is cut off."""
        if ws.application_state != WebSocketState.CONNECTED:
            return
        try:
            async with asyncio.timeout(self._close_grace_s):
                await ws.close(code=code, reason=reason)
        except TimeoutError:
            _abort(ws)

    def reply(self, viewer: Viewer, message: dict) -> None:
        """Queue a message for one viewer (answers to its control messages)."""
        viewer.events.append(json.dumps(message, separators=(",", ":")))
        viewer.wake.set()

    async def close_all(self, message_for, reason: str, code: int, timeout: float) -> None:
        """Give every viewer `message_for(session_id)` and close it with `code`; wait until they
        have gone, at most `timeout` seconds (the shutdown: before the server drops them)."""
        viewers = [v for group in self._viewers.values() for v in group]
        for viewer in viewers:
            viewer.events.append(json.dumps(message_for(viewer.session_id), separators=(",", ":")))
            viewer.closing, viewer.close_code = reason, code
            viewer.wake.set()
        deadline = self._loop.time() + timeout
        while self._viewers and self._loop.time() < deadline:
            await asyncio.sleep(0.02)

    # -- thread-safe entry points ----------------------------------------------------------

    def viewer_count(self, session_id: str) -> int:
        return len(self._viewers.get(session_id, ()))

    def delivery(self, session_id: str) -> tuple[int, int]:
        """Frames sent to this session's viewers and frames they skipped (a newer one replaced
        them before the socket could take them), summed over its viewers."""
        viewers = list(self._viewers.get(session_id, ()))
        return sum(v.frames_sent for v in viewers), sum(v.frames_skipped for v in viewers)

    def formats(self, session_id: str) -> set[Format]:
        return {v.format for v in list(self._viewers.get(session_id, ()))}

    def publish_frame(self, session_id: str, payload: FramePayload) -> None:
        self._call(self._set_frame, session_id, payload)

    def publish_event(self, session_id: str, message: dict) -> None:
        self._call(self._add_event, session_id, json.dumps(message, separators=(",", ":")))

    def close_session(self, session_id: str, message: dict, reason: str) -> None:
        """Tell every viewer the session ended, then close their sockets."""
        self._call(self._close, session_id, json.dumps(message, separators=(",", ":")), reason)

    def _call(self, fn, *args) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            fn(*args)
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, *args)

    def _set_frame(self, session_id: str, payload: FramePayload) -> None:
        for viewer in self._viewers.get(session_id, ()):
            if viewer.frame is not None:
                viewer.frames_skipped += 1
            viewer.frame = payload
            viewer.wake.set()

    def _add_event(self, session_id: str, text: str) -> None:
        for viewer in self._viewers.get(session_id, ()):
            viewer.events.append(text)
            viewer.wake.set()

    def _close(self, session_id: str, text: str, reason: str) -> None:
        for viewer in self._viewers.get(session_id, ()):
            viewer.events.append(text)
            viewer.closing = reason
            viewer.wake.set()


def _abort(ws: WebSocket) -> None:
    """Drop the connection without flushing what its buffers hold. ASGI has no abort, and a
    graceful close waits for a client that reads nothing forever; uvicorn's protocol is the
    owner of the `receive` callable, and its transport can abort."""
    protocol = getattr(getattr(ws, "_receive", None), "__self__", None)
    transport = getattr(protocol, "transport", None)
    if transport is not None and hasattr(transport, "abort"):
        transport.abort()
