"""Faults of the parts several replicas share, against the real parts: PostgreSQL stopped for 30 s,
the NATS bus killed and started again, an owner frozen (SIGSTOP) past its lease and thawed. The
replicas run the scripted walking people, so events are real and keep coming."""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import pytest

from cluster import HAPROXY, LEASE_S, Deployment, deploy
from servers import running_postgres
from support import frame_results, running_camera, wait_until

pytestmark = pytest.mark.skipif(not os.path.exists(HAPROXY), reason="haproxy is not installed")

OUTAGE_S = 30.0


def _start_on(deployment: Deployment, replica: str, camera_url: str) -> dict:
    with deployment.client(replica) as http:
        started = http.post("/api/v1/video/start", json={"stream_url": camera_url, "camera": "gate"})
    assert started.status_code == 200 and started.headers["x-replica"] == replica, started.text
    return started.json()


def _status_on(deployment: Deployment, replica: str, session_id: str) -> httpx.Response:
    with deployment.client(replica) as http:
        return http.get(f"/api/v1/video/status/{session_id}")


def _events(deployment: Deployment, session_id: str) -> list[dict]:
    with deployment.client() as http:
        answer = http.get("/api/v1/events", params={"session_id": session_id, "limit": 500})
    assert answer.status_code == 200, answer.text
    return answer.json()["events"]


def _event_store(deployment: Deployment, replica: str) -> dict:
    with deployment.client(replica) as http:
        outputs = http.get("/ready").json()["outputs"]
    return next(o for o in outputs if o["name"] == "event_store")


def _watch(ws, seconds: float) -> int:
    """Read a JSON viewer for `seconds` (a viewer that stops reading is dropped as stalled); frames seen."""
    frames, deadline = 0, time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            frames += json.loads(ws.recv(timeout=left))["type"] == "frame_result"
        except TimeoutError:
            break
    return frames


def _until_message(ws, accept, seconds: float) -> dict | None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        message = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
        if accept(message):
            return message
    return None


def test_postgresql_down_for_30_s_stops_no_camera_and_loses_no_event(tiny_model_dir, tmp_path):
    with (
        running_postgres() as server,  # a server of its own: this test stops it
        deploy(tiny_model_dir, tmp_path, server.url(server.new_database()), replicas=2, lease_s=LEASE_S,
               max_sessions=2) as deployment,
        running_camera() as camera,
    ):  # fmt: skip
        body = _start_on(deployment, "r1", camera.url)
        session_id = body["session_id"]
        with deployment.viewer(body["websocket_path"], "r2") as ws:
            assert len(frame_results(ws, 2, seconds=20)) == 2

            # when the database goes away for 30 s (ten leases)
            down_at = time.time()
            server.down()
            before = _status_on(deployment, "r1", session_id).json()["stats"]["frames_inferred"]
            # control that needs the store answers 503 in words, on any replica
            with deployment.client("r2") as r2:
                answer = r2.get(f"/api/v1/video/status/{session_id}")
                assert answer.status_code == 503 and answer.json()["error"] == "store_unavailable", answer.text
                assert "session store cannot be read" in answer.json()["detail"]
            with deployment.client("r1") as r1:
                refused = r1.post("/api/v1/video/start", json={"stream_url": camera.url})
                assert refused.status_code == 503 and refused.json()["error"] == "store_unavailable", refused.text
            # the session keeps running and inferring on its replica, and its viewer elsewhere keeps watching
            assert _watch(ws, OUTAGE_S / 2) > 10
            during = _status_on(deployment, "r1", session_id).json()
            assert during["state"] == "running" and during["stats"]["frames_inferred"] > before, during
            with deployment.client("r1") as r1:
                ready = r1.get("/ready")  # still ready (it runs its cameras), and says why calls fail
            warnings = ready.json()["warnings"]
            assert ready.status_code == 200 and any("session store cannot be reached" in w for w in warnings), warnings
            held = _event_store(deployment, "r1")
            assert held["state"] == "failing" and "held until the database answers again" in held["detail"], held
            assert _watch(ws, OUTAGE_S / 2) > 10
            up_at = time.time()
            server.up()

            # then every replica answers again; the session never moved (its owner renewed first:
            # until then its lease reads as run out, and the state `moving`)
            def answered():
                answer = _status_on(deployment, "r2", session_id)
                return answer.status_code == 200 and answer.json()["state"] == "running" and answer.json()

            status = wait_until(answered, timeout=15)
            assert status and status["replica"] == "r1", _status_on(deployment, "r2", session_id).json()
            _watch(ws, LEASE_S + 2)  # a lease and a claim round later, still there
            assert _status_on(deployment, "r2", session_id).json()["replica"] == "r1"
            # the events of the outage are written, none dropped
            assert wait_until(lambda: _event_store(deployment, "r1")["state"] == "ok", timeout=15)
            events = _events(deployment, session_id)
            assert any(down_at < e["start_time"] < up_at for e in events), [e["start_time"] for e in events]
            assert _event_store(deployment, "r1")["dropped"] == 0
            assert len({e["id"] for e in events}) == len(events)
            assert len(frame_results(ws, 2, seconds=10)) == 2


def test_the_bus_going_away_is_told_to_remote_viewers_and_frames_come_back_with_it(deployment):
    with running_camera() as camera:
        body = _start_on(deployment, "r1", camera.url)
        with deployment.viewer(body["websocket_path"], "r2") as ws:
            assert len(frame_results(ws, 2, seconds=20)) == 2
            # when the bus dies
            deployment.bus.kill()
            told = _until_message(ws, lambda m: m["type"] == "error", seconds=10)
            assert told and "bus between replicas" in told["detail"] and "unreachable" in told["detail"], told

            # its owner is not troubled: it keeps running and inferring
            def inferred() -> int:
                return _status_on(deployment, "r1", body["session_id"]).json()["stats"]["frames_inferred"]

            before = inferred()
            assert wait_until(lambda: inferred() > before + 5, timeout=10)
            # and when the bus is back, frames come again on the same connection
            deployment.bus.start()
            assert len(frame_results(ws, 3, seconds=30)) == 3


def test_an_owner_frozen_past_its_lease_stops_its_copy_when_thawed_and_writes_nothing(deployment):
    with running_camera() as camera:
        body = _start_on(deployment, "r1", camera.url)
        session_id = body["session_id"]
        # r1 has events open (people walking) when it freezes
        assert wait_until(lambda: any(e["active"] for e in _events(deployment, session_id)), timeout=30)
        deployment.replicas.signal("r1", signal.SIGSTOP)
        try:
            # r2 takes the session once r1's lease runs out
            def taken():
                answer = _status_on(deployment, "r2", session_id).json()
                return answer["replica"] == "r2" and answer["state"] == "running" and answer

            assert wait_until(taken, timeout=LEASE_S + 15)
        finally:
            deployment.replicas.signal("r1", signal.SIGCONT)
        # r1 wakes up, learns at its next renewal it lost the session, and stops its copy
        with deployment.client("r1") as r1:
            assert wait_until(lambda: r1.get("/ready").json()["sessions"] == 0, timeout=LEASE_S + 5)
        # every write it tried about the session meanwhile (its open events ending) was fenced out
        log = deployment.replicas["r1"].log_path
        assert wait_until(lambda: "another replica runs now" in log.read_text(), timeout=10), log.read_text()[-2000:]
        # and the record is r2's as r2 wrote it
        status = _status_on(deployment, "r2", session_id).json()
        assert status["replica"] == "r2" and status["state"] == "running", status
