"""Given the service as its own process (`python -m rtdetr_service`), when it serves a session and
gets SIGTERM, then it stops the session cleanly, exits, and its log holds no secret."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
from websockets.sync.client import connect

from support import ROOT, free_port

SECRET_KEY = "process-test-key-7f3a9c"


def test_sigterm_stops_sessions_and_logs_no_secrets(tiny_model_dir, rtsp_url):
    port = free_port()
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT / "rt-detr-service"),
        API_KEYS=SECRET_KEY,
        PORT=str(port),
        MODEL=str(tiny_model_dir),
        DEVICE="cpu",
        INPUT_SIZE="320",
        CPU_THREADS="1",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtdetr_service"],
        cwd=ROOT / "rt-detr-service",
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        headers = {"apikey": SECRET_KEY}
        user_url = rtsp_url.replace("rtsp://", "rtsp://admin:camera-pass-123@")
        body = httpx.post(
            f"{base}/api/v1/video/start", json={"stream_url": user_url}, headers=headers, timeout=30
        ).json()
        token = body["viewer_token"]
        with connect(f"ws://127.0.0.1:{port}{body['websocket_path']}", open_timeout=10) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "stream_info"
            ws.recv(timeout=10)
        status = httpx.get(f"{base}/api/v1/video/status/{body['session_id']}", headers=headers).json()
        assert "camera-pass-123" not in json.dumps(status)
        assert status["stream_url"].startswith("rtsp://***@")

        # when
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    # then
    # uvicorn re-raises the signal once shutdown is complete, as a well-behaved daemon does
    assert proc.returncode in (0, -signal.SIGTERM), output
    assert "1 session(s) stopped" in output and "Application shutdown complete" in output
    assert "RANDOM-WEIGHT" in output or "NOT trained" in output
    for secret in (SECRET_KEY, token, "camera-pass-123"):
        assert secret not in output, f"secret leaked into the log:\n{output}"
    assert "token=***" in output  # the viewer's access line is there, masked
