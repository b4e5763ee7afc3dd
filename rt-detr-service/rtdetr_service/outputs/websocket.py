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


class WebSocketSink:
    name = "websocket"

    def __init__(self, hub: Hub, encoder) -> None:
        self._hub = hub
        self._encoder = encoder
        self._annotator = Annotator()
        self._lock = threading.Lock()  # every session's publisher thread counts here
        self.handled = 0
        self.sent = 0

    def handle(self, item: Published) -> None:
        session_id = item.session.session_id
        for alert in item.alerts:
            self._hub.publish_event(session_id, messages.alert_message(session_id, alert))
        result = item.result
        if result is None:
            return
        with self._lock:
            self.handled += 1
        formats = self._hub.formats(session_id)
        if not formats:
            return
        jpeg = None
        if item.session.enable_drawing:
            annotated = self._annotator.annotate(result.frame.image, result.detections)
            jpeg = self._encoder.encode(annotated, item.session.jpeg_quality)
        header = messages.frame_header(session_id, result, result.detections)
        payload = FramePayload(
            text=messages.frame_json(header, jpeg) if "json" in formats else None,
            binary=messages.frame_binary(header, jpeg) if "binary" in formats else None,
        )
        self._hub.publish_frame(session_id, payload)
        with self._lock:
            self.sent += 1

    def session_ended(self, session_id: str) -> None:
        pass

    def close(self, timeout: float = 0.0) -> None:
        pass

    def stats(self) -> SinkStats:
        # Viewer-side skips are counted per viewer by the hub (frames_skipped), not here.
        return SinkStats(name=self.name, handled=self.handled, sent=self.sent)
