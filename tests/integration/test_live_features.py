"""Given a running session, alerts fire by rule, viewers can pause/resume/stop it, binary frames
decode, and health, readiness and metrics tell the truth about the model and sessions."""

from __future__ import annotations

import json
import struct
import time

import cv2
import httpx
import numpy as np
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from support import frame_results, start_session


def test_alerts_and_binary_frames(live_service, rtsp_url, stop_sessions):
    with live_service.client() as client:
        body = start_session(
            client,
            rtsp_url,
            confidence_threshold=0.0,
            alert={"classes": [], "min_confidence": 0.0, "cooldown_s": 60},
        )
    alerts, frames = [], []
    with connect(live_service.ws_base + body["websocket_path"] + "&format=binary", open_timeout=10) as ws:
        deadline = time.monotonic() + 30
        while (len(frames) < 5 or not alerts) and time.monotonic() < deadline:
            message = ws.recv(timeout=10)
            if isinstance(message, bytes):
                (n,) = struct.unpack(">I", message[:4])
                frames.append((json.loads(message[4 : 4 + n]), message[4 + n :]))
            elif (parsed := json.loads(message))["type"] == "alert":
                alerts.append(parsed)
    assert alerts, "an every-class rule at confidence 0 must fire"
    assert set(alerts[0]["data"]) >= {"class_name", "confidence", "bbox"}
    header, jpeg = frames[-1]
    assert header["type"] == "frame_result" and "annotated_frame" not in header
    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (240, 320, 3)
    # cooldown 60 s: each class alerted at most once
    names = [a["data"]["class_name"] for a in alerts]
    assert len(names) == len(set(names))


def test_class_filter_and_no_drawing(live_service, rtsp_url, stop_sessions):
    with live_service.client() as client:
        body = start_session(
            client, rtsp_url, confidence_threshold=0.0, classes=["person"], enable_drawing=False, alert=None
        )
    with connect(live_service.ws_base + body["websocket_path"], open_timeout=10) as ws:
        results = frame_results(ws, 3, recv_timeout=15)
    assert len(results) == 3
    assert all(r["annotated_frame"] is None for r in results)
    assert all(d["class_name"] == "person" for r in results for d in r["detections"])
    assert any(r["detections"] for r in results)  # threshold 0 keeps every person query


def test_viewer_controls(live_service, rtsp_url, stop_sessions):
    with live_service.client() as client:
        body = start_session(client, rtsp_url)
        session_id = body["session_id"]
        with connect(live_service.ws_base + body["websocket_path"], open_timeout=10) as ws:
            ws.send(json.dumps({"type": "control", "action": "pause"}))
            time.sleep(1.0)
            inferred = client.get(f"/api/v1/video/status/{session_id}").json()["stats"]["frames_inferred"]
            time.sleep(1.5)
            status = client.get(f"/api/v1/video/status/{session_id}").json()
            assert status["paused"] is True
            assert status["stats"]["frames_inferred"] <= inferred + 1  # at most one batch in flight
            assert status["stats"]["frames_decoded"] > 0

            ws.send(json.dumps({"type": "control", "action": "resume"}))
            time.sleep(1.5)
            assert client.get(f"/api/v1/video/status/{session_id}").json()["stats"]["frames_inferred"] > inferred + 2

            ws.send("not json")
            ws.send(json.dumps({"type": "control", "action": "stop"}))
            stopped = None
            try:
                while True:
                    message = json.loads(ws.recv(timeout=10))
                    if message["type"] == "session_stopped":
                        stopped = message
            except ConnectionClosed as closed:
                assert closed.rcvd.code == 1000
            assert stopped and stopped["reason"] == "stopped by a viewer"
        assert client.get(f"/api/v1/video/status/{session_id}").status_code == 404


def test_health_ready_metrics(live_service, rtsp_url, stop_sessions):
    base = live_service.base_url
    assert httpx.get(f"{base}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{base}/ready").json()
    assert ready["ready"] is True
    assert ready["model"]["trained"] is False and "NOT trained" in ready["model"]["warning"]
    assert ready["jpeg_encoder"] == "opencv" and ready["inference_errors"] == 0
    with live_service.client() as client:
        session_id = start_session(client, rtsp_url)["session_id"]
        time.sleep(2)
    text = httpx.get(f"{base}/metrics", headers={"apikey": live_service.api_key}).text
    assert f'rtdetr_session_frames_decoded_total{{session="{session_id}"}}' in text
    assert f'rtdetr_session_decode_errors_total{{session="{session_id}"}} 0.0' in text
    assert f'rtdetr_session_publish_errors_total{{session="{session_id}"}} 0.0' in text
    # BACKEND=auto on a CPU: OpenVINO
    assert 'rtdetr_model_info{backend="openvino",device="cpu"' in text and 'trained="false"' in text
    assert "rtdetr_batch_size_count" in text
    assert f'rtdetr_frame_latency_seconds_count{{session="{session_id}"}}' in text
    assert "process_resident_memory_bytes" in text


def test_openapi_docs(live_service):
    assert httpx.get(f"{live_service.base_url}/docs").status_code == 200
    paths = httpx.get(f"{live_service.base_url}/openapi.json").json()["paths"]
    assert {"/api/v1/video/start", "/api/v1/video/stop", "/api/v1/video/status/{session_id}"} <= set(paths)


def test_the_viewer_page_is_served_locked_down(live_service):
    import httpx

    # the page that takes the API key runs only its own scripts, talks only to its own origin,
    # cannot be framed, and is revalidated after an upgrade
    for path in ("/", "/ui/app.js"):
        response = httpx.get(live_service.base_url + path)
        assert response.status_code == 200, path
        csp = response.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "connect-src 'self'" in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-cache"
    # the API answers are not the page's business
    assert "content-security-policy" not in httpx.get(live_service.base_url + "/health").headers


def test_a_viewer_told_a_session_stopped_finds_it_stopped(live_service, rtsp_url, stop_sessions, monkeypatch):
    # The race is narrow (the store's write after the viewers are told), so the test looks at the
    # store at the very moment the viewers are told, instead of hoping to ask in between.
    manager = live_service.app.state.manager
    hub = manager.session_hub
    seen = []
    close_session = hub.close_session

    def told(session_id, message, reason):
        seen.append(manager.cluster.find(session_id).desired)
        close_session(session_id, message, reason)

    monkeypatch.setattr(hub, "close_session", told)
    with live_service.client() as client:
        session_id = start_session(client, rtsp_url)["session_id"]
        assert client.post("/api/v1/video/stop", json={"session_id": session_id}).status_code == 200
        assert client.get(f"/api/v1/video/status/{session_id}").status_code == 404
    assert seen == ["stop"]
