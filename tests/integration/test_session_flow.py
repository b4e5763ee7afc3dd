"""Given a real RTSP camera and the real service, when a client starts, watches and stops a
session, then it gets stream info, annotated frames of the source size, and nothing leaks."""

from __future__ import annotations

import base64
import json
import os
import threading
import time

import cv2
import numpy as np
from websockets.sync.client import connect

from support import frame_results


def _service_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith(("reader-", "publisher-"))}


def test_start_stream_stop(live_service, rtsp_url, stop_sessions):
    with live_service.client() as client:
        started = client.post("/api/v1/video/start", json={"stream_url": rtsp_url, "enable_drawing": True})
        assert started.status_code == 200, started.text
        body = started.json()
        assert body["status"] == "running"
        assert body["stream"]["width"] == 320 and body["stream"]["height"] == 240
        assert body["model"]["trained"] is False and "NOT trained" in body["message"]
        session_id = body["session_id"]
        assert any(name.endswith(session_id[:8]) for name in _service_threads())

        with connect(live_service.ws_base + body["websocket_path"], open_timeout=10) as ws:
            info = json.loads(ws.recv(timeout=10))
            assert info["type"] == "stream_info"
            assert (info["width"], info["height"]) == (320, 240)
            assert info["warning"] and "NOT trained" in info["warning"]
            frames = frame_results(ws, 20)

        assert len(frames) >= 20
        indices = [f["frame_index"] for f in frames]
        assert indices == sorted(indices) and len(set(indices)) == len(indices)
        for frame in frames[:3]:
            jpeg = base64.b64decode(frame["annotated_frame"])
            image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            assert image.shape == (240, 320, 3)
            for det in frame["detections"]:
                x1, y1, x2, y2 = det["bbox"]
                assert 0 <= x1 <= x2 <= 320 and 0 <= y1 <= y2 <= 240
                assert 0.5 <= det["confidence"] <= 1.0

        status = client.get(f"/api/v1/video/status/{session_id}").json()
        assert status["state"] == "running"
        assert status["stats"]["frames_decoded"] >= 20
        assert status["stats"]["latency_ms"]["p50"] is not None

        stopped = client.post("/api/v1/video/stop", json={"session_id": session_id})
        assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
        deadline = time.monotonic() + 5
        while any(session_id[:8] in n for n in _service_threads()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(session_id[:8] in n for n in _service_threads())
        assert client.get(f"/api/v1/video/status/{session_id}").status_code == 404
        assert client.get("/api/v1/video/sessions").json()["sessions"] == []


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_start_stop_cycles_leak_no_threads_or_descriptors(live_service, rtsp_url):
    # given a service that has already run one session (lazy imports and pools are warm)
    def cycle():
        with live_service.client() as client:
            body = client.post("/api/v1/video/start", json={"stream_url": rtsp_url}).json()
            with connect(live_service.ws_base + body["websocket_path"], open_timeout=10) as ws:
                assert frame_results(ws, 1)
            client.post("/api/v1/video/stop", json={"session_id": body["session_id"]})
        session_threads = lambda: {n for n in _service_threads() if body["session_id"][:8] in n}  # noqa: E731
        deadline = time.monotonic() + 5
        while session_threads() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not session_threads()

    cycle()
    time.sleep(0.5)
    fds, threads = _open_fds(), threading.active_count()
    # when sessions come and go
    for _ in range(3):
        cycle()
    time.sleep(0.5)
    # then descriptors and threads are back where they were (a small margin for pooled sockets)
    assert _open_fds() <= fds + 2, (fds, _open_fds())
    assert threading.active_count() <= threads, (threads, threading.enumerate())
