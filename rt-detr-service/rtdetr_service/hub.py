"""WebSocket fan-out: each viewer has a newest-frame slot and its own sender task.

Publisher threads hand messages over with `publish_*` (thread-safe); the event loop does the
sending. A slow viewer skips frames; it never delays the session or other viewers.
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
    frames_sent: int = 0
    frames_skipped: int = 0


class Hub:
    """Registry of viewers per session; must be created inside the running event loop."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._viewers: dict[str, set[Viewer]] = {}

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
        """Send this viewer's messages until it disconnects or the session ends."""
        ws = viewer.websocket
        while True:
            await viewer.wake.wait()
            viewer.wake.clear()
            while viewer.events:
                await ws.send_text(viewer.events.popleft())
            payload, viewer.frame = viewer.frame, None
            if payload is not None:
                data = payload.for_format(viewer.format)
                if isinstance(data, bytes):
                    await ws.send_bytes(data)
                elif data is not None:
                    await ws.send_text(data)
                viewer.frames_sent += 1
            if viewer.closing is not None:
                if ws.application_state == WebSocketState.CONNECTED:
                    await ws.close(code=1000, reason=viewer.closing[:120])
                return

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
