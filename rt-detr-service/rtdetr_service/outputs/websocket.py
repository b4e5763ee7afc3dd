"""The WebSocket sink: annotated JPEG frames, detections and alerts for a session's viewers.

Drawing and encoding happen only when someone is watching, on the session's own publisher
thread; the hub hands the bytes to the event loop and each viewer's sender, so a slow viewer
never holds this thread.
"""

from __future__ import annotations

import threading

from rtdetr_service.core.results import Published
from rtdetr_service.outputs import messages
from rtdetr_service.outputs.annotate import Annotator
from rtdetr_service.outputs.base import SinkStats
from rtdetr_service.outputs.hub import FramePayload, Hub


class FrameRenderer:
    """The annotated JPEG of a published frame, drawn and encoded once however many outputs send
    it (the local viewers' sink and the bus both ask for the frame they are handed)."""

    def __init__(self, encoder) -> None:
        self._encoder = encoder
        self._annotator = Annotator()
        self._lock = threading.Lock()  # every session's publisher thread renders here
        self._last: dict[str, tuple[tuple[int, float], bytes]] = {}  # session -> (frame key, JPEG)

    def jpeg(self, item: Published) -> bytes | None:
        """The frame's JPEG with its boxes drawn; None when drawing is off or there is no frame."""
        result = item.result
        if result is None or not item.session.enable_drawing:
            return None
        session_id, key = item.session.session_id, (result.index, result.timestamp)
        with self._lock:
            cached = self._last.get(session_id)
        if cached is not None and cached[0] == key:
            return cached[1]
        annotated = self._annotator.annotate(result.frame.image, result.detections)
        jpeg = self._encoder.encode(annotated, item.session.jpeg_quality)
        with self._lock:
            self._last[session_id] = (key, jpeg)
        return jpeg

    def forget(self, session_id: str) -> None:
        with self._lock:
            self._last.pop(session_id, None)


class WebSocketSink:
    name = "websocket"

    def __init__(self, hub: Hub, encoder, renderer: FrameRenderer | None = None) -> None:
        self._hub = hub
        self._renderer = renderer or FrameRenderer(encoder)
        self._lock = threading.Lock()  # every session's publisher thread counts here
        self.handled = 0
        self.sent = 0

    def handle(self, item: Published) -> None:
        session_id = item.session.session_id
        for alert in item.alerts:
            self._hub.publish_event(session_id, messages.alert_message(session_id, alert))
        for answer in item.answers:
            self._hub.publish_event(session_id, messages.answer_message(session_id, answer))
        result = item.result
        if result is None:
            return
        with self._lock:
            self.handled += 1
        formats = self._hub.formats(session_id)
        if not formats:
            return
        jpeg = self._renderer.jpeg(item)
        header = messages.frame_header(session_id, result, result.detections)
        payload = FramePayload(
            text=messages.frame_json(header, jpeg) if "json" in formats else None,
            binary=messages.frame_binary(header, jpeg) if "binary" in formats else None,
        )
        self._hub.publish_frame(session_id, payload)
        with self._lock:
            self.sent += 1

    def session_ended(self, session_id: str) -> None:
        self._renderer.forget(session_id)

    def close(self, timeout: float = 0.0) -> None:
        pass

    def stats(self) -> SinkStats:
        # Viewer-side skips are counted per viewer by the hub (frames_skipped), not here.
        return SinkStats(name=self.name, handled=self.handled, sent=self.sent)
