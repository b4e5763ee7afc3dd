"""Given a camera that freezes or comes back, and a service told to stop, when they happen, then
the session says so within the stated time, forgets errors it recovered from, and viewers are
told why before their sockets close."""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from servers import service_process
from support import start_session
from support import wait_until as _wait_for


def test_a_frozen_camera_leaves_running_within_the_read_timeout(live_service, own_camera, stop_sessions):
    read_timeout = live_service.app.state.settings.read_timeout_s
    with live_service.client() as client:
        session_id = start_session(client, own_camera.url)["session_id"]
        session = live_service.app.state.manager.get(session_id)
        assert _wait_for(lambda: session.frames_decoded > 10, 20)
        # when the camera process freezes (its sockets stay open, nothing more comes)
        os.kill(own_camera.proc.pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        # then the session leaves `running` within about READ_TIMEOUT_S, not twice that
        assert _wait_for(lambda: session.state.value != "running", 4 * read_timeout)
        took = time.monotonic() - frozen_at
        assert took < read_timeout + 1.0, (took, read_timeout)
        assert session.state.value == "reconnecting"


def test_last_error_is_cleared_once_the_stream_is_back(live_service, own_camera, stop_sessions):
    with live_service.client() as client:
        session_id = start_session(client, own_camera.url)["session_id"]

        def status():
            return client.get(f"/api/v1/video/status/{session_id}").json()

        own_camera.stop()
        lost = _wait_for(lambda: (s := status())["state"] == "reconnecting" and s, 15, 0.2)
        assert lost and lost["last_error"]
        own_camera.start()
        back = _wait_for(lambda: (s := status())["state"] == "running" and s["stats"]["reconnects"] >= 1 and s, 30, 0.2)
        assert back, status()
        assert back["last_error"] is None


def test_sigterm_tells_viewers_why_before_closing(tiny_model_dir, rtsp_url, tmp_path):
    # given the service as its own process, and a viewer of one of its sessions
    service = service_process(tiny_model_dir, tmp_path)
    try:
        with httpx.Client(base_url=service.base_url, headers={"apikey": service.api_key}, timeout=30) as client:
            path = start_session(client, rtsp_url)["websocket_path"]
        with connect(f"ws://127.0.0.1:{service.port}{path}", open_timeout=10) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "stream_info"
            # when the service gets SIGTERM
            service.proc.send_signal(signal.SIGTERM)
            # then the viewer is told why, then the close 1012 (service restart): the session is
            # kept (it runs again when the service is back), so it is `moving`, not stopped
            told = []
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    message = ws.recv(timeout=10)
                    if isinstance(message, str):
                        told.append(json.loads(message))
            assert info.value.rcvd is not None and info.value.rcvd.code == 1012
            last = told[-1]
            assert last["type"] == "status" and last["state"] == "moving", told
            assert "resumes on another replica, or here when it restarts" in last["last_error"], last
        service.proc.wait(30)
    finally:
        service.stop()
