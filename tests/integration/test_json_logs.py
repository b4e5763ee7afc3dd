"""Given the service as its own process with LOG_FORMAT=json, when a session on a camera with a
password runs, loses its camera, gets it back, is watched and is stopped, then every line of the log
is a JSON object naming the replica, the session's lines (the start and stop path, the reader's
thread) name its session and camera, and no secret is in any line."""

from __future__ import annotations

import json
import signal

import httpx
from websockets.sync.client import connect

from servers import service_process
from support import start_session, wait_until

FIELDS = {"time", "level", "logger", "replica", "session", "camera", "message"}


def _status(client: httpx.Client, session_id: str) -> str:
    return client.get(f"/api/v1/video/status/{session_id}").json()["state"]


def test_json_log_lines_carry_the_replica_and_each_sessions_id_and_camera(tiny_model_dir, own_camera, tmp_path):
    # given the service logging JSON lines at INFO as replica "replica-test-1"
    service = service_process(
        tiny_model_dir, tmp_path, LOG_LEVEL="info", LOG_FORMAT="json", REPLICA_ID="replica-test-1"
    )
    try:
        headers = {"apikey": service.api_key}
        with httpx.Client(base_url=service.base_url, headers=headers, timeout=30) as client:
            # when a session on a camera with a password runs, is watched, loses its camera and gets it back
            url = own_camera.url.replace("rtsp://", "rtsp://admin:camera-pass-731@")
            body = start_session(client, url, camera="gate")
            session_id, token = body["session_id"], body["viewer_token"]
            with connect(f"ws://127.0.0.1:{service.port}{body['websocket_path']}", open_timeout=10) as ws:
                assert json.loads(ws.recv(timeout=10))["type"] == "stream_info"
            own_camera.stop()
            assert wait_until(lambda: _status(client, session_id) == "reconnecting", timeout=20)
            own_camera.start()
            assert wait_until(lambda: _status(client, session_id) == "running", timeout=30)
            # and is stopped, then the service is told to end
            assert client.post("/api/v1/video/stop", json={"session_id": session_id}).status_code == 200
        service.proc.send_signal(signal.SIGTERM)
        service.proc.wait(20)
    finally:
        service.stop()
    output = (tmp_path / "service.log").read_text()

    # then every line is one JSON object with every field, from this replica
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert lines and all(FIELDS <= line.keys() for line in lines), output
    assert {line["replica"] for line in lines} == {"replica-test-1"}
    assert any(line["logger"].startswith("uvicorn") for line in lines), "uvicorn's lines go through the same handler"

    # and the session's lines name its id and camera: the start, the reader's loss and return, the stop
    ours = [line for line in lines if line["session"] == session_id]
    assert {line["camera"] for line in ours} == {"gate"}
    messages = [line["message"] for line in ours]
    assert any(m.startswith(f"session {session_id} started") for m in messages), messages
    assert any(m.startswith(f"session {session_id} stopped") for m in messages), messages
    on_reader = [line["message"] for line in ours if line["logger"] == "rtdetr_service.ingest.reader"]
    assert any(m.startswith("stream rtsp://***@") and " lost: " in m for m in on_reader), messages
    assert any(m.startswith("reconnected to rtsp://***@") for m in on_reader), messages
    # lines about no session say so
    assert any(line["session"] is None and line["message"].startswith("ready:") for line in lines), output

    # and no secret is in any line, the viewer's access line masked
    for secret in (service.api_key, token, "camera-pass-731"):
        assert secret not in output, f"secret leaked into the log:\n{output}"
    assert any("token=***" in line["message"] for line in lines)
