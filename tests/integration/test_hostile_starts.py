"""Given hostile cameras and impatient callers, when start is called, then no session is left
behind for a caller that went away, stop answers promptly whatever is opening, timeouts are
told from refusals, and the destination policy holds (on redirects too)."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import httpx
import pytest

from rtdetr_service.ingest.urls import DENIED_WORDS

from hostile_servers import delayed_proxy, garbage, header_flood, redirect_to, silent, trickle
from support import make_settings, run_service
from support import wait_until as _wait_for

START = "/api/v1/video/start"


@pytest.fixture(scope="module")
def service(tiny_model_dir):
    service = run_service(
        make_settings(
            tiny_model_dir,
            open_timeout_s=3.0,
            read_timeout_s=2.0,
            max_sessions=16,
            max_opens=12,
            stream_denied_networks="169.254.0.0/16,fe80::/10,127.0.0.2/32",
        )
    )
    yield service
    service.stop()


def _cleanup(service):
    manager = service.app.state.manager
    for session in manager.list():
        manager.stop(session.id, "test cleanup")


def test_a_start_whose_caller_went_away_leaves_no_session(service, fake_servers, rtsp_camera):
    # given a camera that answers after 2.5 s
    slow = fake_servers(delayed_proxy(rtsp_camera.port, 2.5))
    manager = service.app.state.manager
    # when the caller gives up after 1 s (curl -m 1)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            service.base_url + START, json={"stream_url": slow.url}, headers={"apikey": service.api_key}, timeout=1.0
        )
    # then, well after the camera has answered, no session runs and no place is held
    time.sleep(4.0)
    assert manager.list() == []
    assert manager._opening == {} and manager._opens == 0
    with service.client() as client:
        assert client.get("/api/v1/video/sessions").json()["sessions"] == []


def test_stop_answers_promptly_while_many_streams_are_opening(service, fake_servers, rtsp_url):
    manager = service.app.state.manager
    try:
        with service.client() as client:
            running = client.post(START, json={"stream_url": rtsp_url}).json()["session_id"]
        # given 12 starts in flight against a camera that trickles bytes
        trickler = fake_servers(trickle)
        answers: list[int] = []

        def start() -> None:
            with service.client() as c:
                answers.append(c.post(START, json={"stream_url": trickler.url}).status_code)

        threads = [threading.Thread(target=start) for _ in range(12)]
        for t in threads:
            t.start()
        assert _wait_for(lambda: manager._opens >= 12, 5), manager._opens
        # when a running session is stopped, then the answer comes within a second or two
        with service.client() as client:
            started = time.monotonic()
            response = client.post("/api/v1/video/stop", json={"session_id": running})
            took = time.monotonic() - started
        assert response.status_code == 200 and took < 2.0, took
        for t in threads:
            t.join(15)
        assert answers == [504] * 12
    finally:
        _cleanup(service)


def test_too_many_opens_at_once_are_refused_in_words(tiny_model_dir, fake_servers):
    service = run_service(make_settings(tiny_model_dir, open_timeout_s=2.0, max_opens=2))
    try:
        silent_camera = fake_servers(silent)
        answers: list[httpx.Response] = []

        def start() -> None:
            with service.client() as c:
                answers.append(c.post(START, json={"stream_url": silent_camera.url}))

        threads = [threading.Thread(target=start) for _ in range(2)]
        for t in threads:
            t.start()
        assert _wait_for(lambda: service.app.state.manager._opens == 2, 5)
        with service.client() as client:
            third = client.post(START, json={"stream_url": silent_camera.url})
        assert third.status_code == 429 and third.json()["error"] == "too_many_opens"
        assert "MAX_OPENS=2" in third.json()["detail"]
        for t in threads:
            t.join(10)
        assert sorted(a.status_code for a in answers) == [504, 504]
    finally:
        service.stop()


@pytest.mark.parametrize(
    "behaviour, status, code",
    [
        (silent, 504, "stream_timeout"),
        (trickle, 504, "stream_timeout"),
        (header_flood, 504, "stream_timeout"),
        (garbage, 502, "stream_unavailable"),
    ],
    ids=["silent", "trickle", "header-flood", "garbage"],
)
def test_timeouts_are_told_from_bad_answers(service, fake_servers, behaviour, status, code):
    with service.client() as client:
        response = client.post(START, json={"stream_url": fake_servers(behaviour).url})
    assert (response.status_code, response.json()["error"]) == (status, code), response.text
    if status == 504:
        assert "did not complete its answer within OPEN_TIMEOUT_S=3" in response.json()["detail"]


def test_a_frozen_camera_at_start_is_a_timeout(service, own_camera):
    # given a camera frozen before anyone connects (its kernel still accepts connections)
    os.kill(own_camera.proc.pid, signal.SIGSTOP)
    with service.client() as client:
        response = client.post(START, json={"stream_url": own_camera.url})
    assert response.status_code == 504 and response.json()["error"] == "stream_timeout", response.text


@pytest.mark.parametrize(
    "url",
    [
        "rtsp://169.254.169.254/latest/meta-data",
        "rtsp://169.254.169.254:80/",
        "rtsp://[fe80::1]:554/x",
        "rtsp://[::ffff:169.254.169.254]/x",
        "rtsp://127.0.0.2:1/camera",  # denied by this service's STREAM_DENIED_NETWORKS; port closed
        "rtsp://127.0.0.2:8554/camera",
    ],
)
def test_denied_destinations_get_one_answer_whatever_the_port(service, url):
    with service.client() as client:
        started = time.monotonic()
        response = client.post(START, json={"stream_url": url})
    assert response.status_code == 403, response.text
    assert response.json() == {"error": "destination_denied", "detail": DENIED_WORDS}
    assert time.monotonic() - started < 1.0  # nothing was connected to, so nothing timed out


def test_a_redirect_to_a_denied_destination_is_refused(service, fake_servers):
    target = fake_servers(silent, host="127.0.0.2")
    camera = fake_servers(redirect_to(target.url))
    with service.client() as client:
        response = client.post(START, json={"stream_url": camera.url})
    assert response.status_code == 403 and response.json()["detail"] == DENIED_WORDS
    assert bytes(target.received) == b""
    assert service.app.state.manager.list() == []


def test_a_failed_start_is_logged_with_its_reason(service, caplog):
    caplog.set_level(logging.INFO, logger="rtdetr_service")
    with service.client() as client:
        client.post(START, json={"stream_url": "rtsp://user:s3cret@127.0.0.1:1/camera"})
    lines = [r.getMessage() for r in caplog.records if "start on" in r.getMessage()]
    assert any("stream_unavailable" in line and "Connection refused" in line for line in lines), lines
    assert not any("s3cret" in line for line in lines)
