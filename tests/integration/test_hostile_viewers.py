"""Given viewers that stall, flood or send nonsense, when they hold a session's sockets, then
they are closed in words and lose their slots, and the session and other viewers carry on."""

from __future__ import annotations

import json
import time

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from support import make_settings, never_reading_viewer, run_service, start_session

STALL_S = 2.0


@pytest.fixture(scope="module")
def service(tiny_model_dir):
    service = run_service(make_settings(tiny_model_dir, max_viewers=2, viewer_stall_s=STALL_S))
    yield service
    service.stop()


def _start(service, url: str, **extra) -> dict:
    with service.client() as client:
        return start_session(client, url, **extra)


def _close_code(ws, seconds: float = 15.0) -> int | None:
    """Read until the server closes; the close code it sent (None: no close frame)."""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            ws.recv(timeout=seconds)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None
    except TimeoutError:
        return -1
    return -1


def _websocket_connections(service) -> int:
    return sum(type(c).__name__.startswith("WebSockets") for c in service.server.server_state.connections)


def test_stalled_viewers_are_closed_and_free_their_slots(service, snow_camera):
    hub = service.app.state.hub
    body = _start(service, snow_camera.url, jpeg_quality=100)
    session_id = body["session_id"]
    url = service.ws_base + body["websocket_path"]
    try:
        # given every viewer slot held by clients that never read
        first, second = never_reading_viewer(url), never_reading_viewer(url)
        with connect(url, open_timeout=10) as refused:
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    refused.recv(timeout=5)
            assert info.value.rcvd.code == 4429
        # when VIEWER_STALL_S passes, then their slots are free
        deadline = time.monotonic() + STALL_S + 5
        while hub.viewer_count(session_id) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert hub.viewer_count(session_id) == 0
        # and a real viewer gets in and gets frames
        with connect(url, open_timeout=10) as viewer:
            kinds = [json.loads(viewer.recv(timeout=10))["type"] for _ in range(5)]
            assert "stream_info" in kinds and "frame_result" in kinds, kinds
            # a stalled client that reads again in time finds the close frame with its reason
            assert _close_code(first) == 4408
            # one that never reads again is cut off: its connection is gone from the server
            deadline = time.monotonic() + 10
            while _websocket_connections(service) > 1 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert _websocket_connections(service) == 1  # the real viewer's
        second.close()
    finally:
        with service.client() as client:
            client.post("/api/v1/video/stop", json={"session_id": session_id})


def test_a_deeply_nested_control_message_gets_words(service, snow_camera):
    body = _start(service, snow_camera.url, enable_drawing=False)
    try:
        with connect(service.ws_base + body["websocket_path"], open_timeout=10) as ws:
            ws.send("[" * 2000 + "]" * 2000)  # deeper than Python's parser goes, under 4 KiB
            ws.send("[" * 100_000)  # far over the size of any control message
            errors = []
            deadline = time.monotonic() + 10
            while len(errors) < 2 and time.monotonic() < deadline:
                message = json.loads(ws.recv(timeout=10))
                if message["type"] == "error":
                    errors.append(message["detail"])
            assert "must be JSON" in errors[0] and "at most 4096 bytes" in errors[1], errors
            # and the socket still works
            ws.send(json.dumps({"type": "control", "action": "resume"}))
            assert any(json.loads(ws.recv(timeout=10))["type"] == "frame_result" for _ in range(30))
    finally:
        with service.client() as client:
            client.post("/api/v1/video/stop", json={"session_id": body["session_id"]})


def test_a_flood_of_control_messages_is_rate_limited(service, snow_camera):
    body = _start(service, snow_camera.url, enable_drawing=False)
    url = service.ws_base + body["websocket_path"]
    try:
        with connect(url, open_timeout=10) as flooder, connect(url, open_timeout=10) as watcher:
            # when one viewer sends 2000 pause/resume messages as fast as it can
            started = time.monotonic()
            for i in range(2000):
                flooder.send(json.dumps({"type": "control", "action": "pause" if i % 2 else "resume"}))
            flooder.send(json.dumps({"type": "control", "action": "resume"}))
            flood_s = time.monotonic() - started
            # then the other viewer sees a bounded number of status broadcasts, not 2000
            statuses = 0
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                try:
                    statuses += json.loads(watcher.recv(timeout=0.5))["type"] == "status"
                except TimeoutError:
                    pass
            allowed = 10 + 5 * (flood_s + 2.0) + 5  # burst + rate x time + the session's own ticks
            assert statuses <= allowed, (statuses, allowed)
            # and the flooder is told why
            texts = []
            while True:
                try:
                    texts.append(json.loads(flooder.recv(timeout=1.0)))
                except TimeoutError:
                    break
            assert any(m["type"] == "error" and "too many messages" in m["detail"] for m in texts)
    finally:
        with service.client() as client:
            client.post("/api/v1/video/stop", json={"session_id": body["session_id"]})
