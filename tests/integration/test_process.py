"""Given the service as its own process (`python -m rtdetr_service`), when it serves a session and
gets SIGTERM, then it stops the session cleanly, exits, and its log holds no secret."""

from __future__ import annotations

import json
import signal

import httpx
from websockets.sync.client import connect

from servers import service_process
from support import start_session


def test_sigterm_stops_sessions_and_logs_no_secrets(tiny_model_dir, rtsp_url, tmp_path):
    # given the service as its own process, logging at INFO, with a viewer of a session on a camera with a password
    service = service_process(tiny_model_dir, tmp_path, LOG_LEVEL="info")
    try:
        headers = {"apikey": service.api_key}
        user_url = rtsp_url.replace("rtsp://", "rtsp://admin:camera-pass-123@")
        with httpx.Client(base_url=service.base_url, headers=headers, timeout=30) as client:
            body = start_session(client, user_url)
        token = body["viewer_token"]
        with connect(f"ws://127.0.0.1:{service.port}{body['websocket_path']}", open_timeout=10) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "stream_info"
            ws.recv(timeout=10)
        status = httpx.get(f"{service.base_url}/api/v1/video/status/{body['session_id']}", headers=headers).json()
        assert "camera-pass-123" not in json.dumps(status)
        assert status["stream_url"].startswith("rtsp://***@")

        # when
        service.proc.send_signal(signal.SIGTERM)
        service.proc.wait(20)
    finally:
        service.stop()
    output = (tmp_path / "service.log").read_text()

    # then
    # uvicorn re-raises the signal once shutdown is complete, as a well-behaved daemon does
    assert service.proc.returncode in (0, -signal.SIGTERM), output
    assert "1 session(s) stopped" in output and "Application shutdown complete" in output
    assert "RANDOM-WEIGHT" in output or "NOT trained" in output
    for secret in (service.api_key, token, "camera-pass-123"):
        assert secret not in output, f"secret leaked into the log:\n{output}"
    assert "token=***" in output  # the viewer's access line is there, masked
