"""Given a live session, when the camera goes away, freezes, or a viewer stalls, then the session
recovers by itself, stops promptly, and other viewers are not slowed."""

from __future__ import annotations

import os
import signal
import threading
import time

from websockets.sync.client import connect

from support import never_reading_viewer, start_session, wait_until


def test_reconnects_without_a_new_start_call(live_service, own_camera, stop_sessions):
    with live_service.client() as client:
        session_id = start_session(client, own_camera.url)["session_id"]

        def status():
            return client.get(f"/api/v1/video/status/{session_id}").json()

        assert wait_until(lambda: status()["stats"]["frames_decoded"] > 5, 20)

        # when the RTSP server goes away
        own_camera.stop()
        lost = wait_until(lambda: (s := status())["state"] == "reconnecting" and s, 15)
        assert lost and lost["state"] == "reconnecting"
        assert lost["last_error"]

        # and comes back on the same port
        own_camera.start()
        before = status()["stats"]["frames_decoded"]
        back = wait_until(
            lambda: (s := status())["state"] == "running" and s["stats"]["frames_decoded"] > before + 10 and s, 30
        )
        assert back, status()
        assert back["stats"]["reconnects"] >= 1


def test_stop_is_prompt_when_the_source_is_stuck(live_service, own_camera):
    manager = live_service.app.state.manager
    with live_service.client() as client:
        session_id = start_session(client, own_camera.url)["session_id"]
        session = manager.get(session_id)
        assert wait_until(lambda: session.frames_decoded > 5, 20)

        # given a camera that is frozen mid-stream (the reader blocks inside FFmpeg)
        os.kill(own_camera.proc.pid, signal.SIGSTOP)
        time.sleep(0.5)

        # when the session is stopped, then stop() returns within a second
        started = time.monotonic()
        manager.stop(session_id)
        assert time.monotonic() - started < 1.0
        assert client.get(f"/api/v1/video/status/{session_id}").status_code == 404

        # and the reader ends by itself within the read timeout, leaving no thread behind
        assert session.join(live_service.app.state.settings.read_timeout_s + 2)
        names = {t.name for t in threading.enumerate()}
        assert not any(session_id[:8] in n for n in names)


def test_stalled_viewer_does_not_slow_another(live_service, snow_camera, stop_sessions):
    hub = live_service.app.state.hub
    with live_service.client() as client:
        body = start_session(client, snow_camera.url, jpeg_quality=100)
        session = live_service.app.state.manager.get(body["session_id"])
        url = live_service.ws_base + body["websocket_path"]
        with never_reading_viewer(url), connect(url, open_timeout=10) as healthy:
            # taken now: after VIEWER_STALL_S the stalled viewer is closed and leaves the hub
            viewers = list(hub._viewers[session.id])

            def count_frames(seconds: float) -> int:
                received = 0
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    message = healthy.recv(timeout=5)
                    received += isinstance(message, str) and '"frame_result"' in message[:40]
                return received

            count_frames(5)  # given: by now the stalled viewer's buffers are full
            published_before = session.frames_published
            received = count_frames(8)
            published = session.frames_published - published_before

            stalled_viewer = max(viewers, key=lambda v: v.frames_skipped)
            # the stalled viewer really is stalled: it skipped frames it could not take
            assert stalled_viewer.frames_skipped > 10, stalled_viewer
            # the healthy viewer got (nearly) every frame the session published meanwhile
            assert published > 20
            assert received >= 0.8 * published, (received, published)
