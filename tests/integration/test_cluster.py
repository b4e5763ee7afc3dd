"""Several replicas of the real service behind HAProxy (standing in for Kong): the balancer
spreads calls over every ready replica and takes a dead one out of rotation by its /ready check."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal

import httpx
import pytest
from websockets.sync.client import connect

from cluster import HAPROXY, Balancer
from servers import NatsServer, service_process
from support import frame_results, free_port, running_camera, wait_until

pytestmark = pytest.mark.skipif(not os.path.exists(HAPROXY), reason="haproxy is not installed")


@pytest.fixture
def two_replicas(tiny_model_dir, tmp_path):
    key = "cluster-" + secrets.token_hex(8)
    with contextlib.ExitStack() as parts:
        replicas = {}
        for name in ("r1", "r2"):
            folder = tmp_path / name
            folder.mkdir()
            service = service_process(tiny_model_dir, folder, API_KEYS=key)
            parts.callback(service.stop)
            replicas[name] = service
        balancer = Balancer({name: s.port for name, s in replicas.items()}, tmp_path)
        balancer.start()
        parts.callback(balancer.stop)
        yield balancer, replicas, key


def test_calls_land_on_every_ready_replica_and_a_dead_one_leaves_the_rotation(two_replicas):
    balancer, replicas, key = two_replicas
    # both replicas pass the /ready check within a few seconds of the balancer's start
    assert wait_until(lambda: set(balancer.landings("/health", 6)) == {"r1", "r2"}, timeout=10)
    with httpx.Client(base_url=balancer.url, headers={"apikey": key}, timeout=10) as http:
        answers = [http.get("/api/v1/video/sessions") for _ in range(20)]
    assert [a.status_code for a in answers] == [200] * 20
    landed = [a.headers["x-replica"] for a in answers]
    assert landed.count("r1") >= 8 and landed.count("r2") >= 8, landed

    replicas["r1"].proc.send_signal(signal.SIGKILL)
    replicas["r1"].proc.wait(5)
    # two failed checks a second apart take it out; the balancer retries a dead server's calls elsewhere
    assert wait_until(lambda: set(balancer.landings("/health", 6)) == {"r2"}, timeout=10)
    with httpx.Client(base_url=balancer.url, headers={"apikey": key}, timeout=10) as http:
        answers = [http.get("/api/v1/video/sessions") for _ in range(10)]
    assert [a.status_code for a in answers] == [200] * 10
    assert {a.headers["x-replica"] for a in answers} == {"r2"}


# -- sessions shared through PostgreSQL -------------------------------------------------------------

LEASE_S = 3.0


@pytest.fixture
def pg_replicas(tiny_model_dir, tmp_path, postgres_url, request):
    """Two replicas sharing one PostgreSQL database and a NATS bus, behind the balancer;
    SESSION_LEASE_S is LEASE_S unless the test is marked `lease(seconds)`."""
    marker = request.node.get_closest_marker("lease")
    lease_s = marker.args[0] if marker else LEASE_S
    places = request.node.get_closest_marker("max_sessions")
    max_sessions = str(places.args[0]) if places else "2"
    key = "cluster-" + secrets.token_hex(8)
    with contextlib.ExitStack() as parts:
        bus = NatsServer(free_port(), tmp_path)
        bus.start()
        parts.callback(bus.kill)
        replicas = {}
        for name in ("r1", "r2"):
            folder = tmp_path / name
            folder.mkdir()
            service = service_process(
                tiny_model_dir, folder, API_KEYS=key, DATABASE_URL=postgres_url, REPLICA_ID=name,
                SESSION_LEASE_S=str(lease_s), MAX_SESSIONS=max_sessions, BUS_URL=bus.url,
            )  # fmt: skip
            parts.callback(service.stop)
            replicas[name] = service
        balancer = Balancer({name: s.port for name, s in replicas.items()}, tmp_path)
        balancer.start()
        parts.callback(balancer.stop)
        assert wait_until(lambda: set(balancer.landings("/health", 6)) == {"r1", "r2"}, timeout=10)
        yield balancer, replicas, key


def _status_everywhere(balancer: Balancer, key: str, session_id: str, n: int = 4) -> list[dict]:
    with httpx.Client(base_url=balancer.url, headers={"apikey": key}, timeout=10) as http:
        answers = [http.get(f"/api/v1/video/status/{session_id}") for _ in range(n)]
    return [dict(a.json(), answered_by=a.headers["x-replica"], code=a.status_code) for a in answers]


def test_any_replica_answers_for_a_session_and_a_killed_owner_hands_it_over_within_the_lease(pg_replicas):
    balancer, replicas, key = pg_replicas
    with running_camera() as camera, httpx.Client(base_url=balancer.url, headers={"apikey": key}, timeout=30) as http:
        started = http.post("/api/v1/video/start", json={"stream_url": camera.url, "camera": "gate"})
        assert started.status_code == 200, started.text
        session_id, owner = started.json()["session_id"], started.headers["x-replica"]
        other = ({"r1", "r2"} - {owner}).pop()

        # every replica answers for it, and names its owner
        answers = _status_everywhere(balancer, key, session_id)
        assert {a["answered_by"] for a in answers} == {"r1", "r2"}
        assert all(a["code"] == 200 and a["replica"] == owner and a["state"] == "running" for a in answers), answers
        listed = http.get("/api/v1/video/sessions").json()["sessions"]
        assert [s["session_id"] for s in listed] == [session_id]
        # zones put through any replica (twice: one lands on the owner, one on the other) are kept
        zones = {}
        for name, x in (("left", 0.0), ("right", 0.5)):
            spec = {"zones": [{"name": name, "points": [[x, 0.0], [x + 0.5, 0.0], [x + 0.5, 1.0], [x, 1.0]]}]}
            put = http.put(f"/api/v1/video/sessions/{session_id}/zones", json=spec)
            assert put.status_code == 200, put.text
            zones = put.json()["zones"]
        assert [z["name"] for z in zones["zones"]] == ["right"]
        # live counts only its owner has: the other replica says where they are
        counts = [http.get(f"/api/v1/video/sessions/{session_id}/counts") for _ in range(2)]
        by_replica = {a.headers["x-replica"]: a for a in counts}
        assert by_replica[owner].status_code == 200 and by_replica[other].status_code == 409
        assert by_replica[other].json()["error"] == "session_elsewhere" and owner in by_replica[other].json()["detail"]

        # when its owner dies without a word
        replicas[owner].proc.send_signal(signal.SIGKILL)
        replicas[owner].proc.wait(5)

        # then the other replica runs it, same id, within the lease and a claim round or two
        def moved():
            (status,) = _status_everywhere(balancer, key, session_id, n=1)
            return status if status["replica"] == other and status["state"] == "running" else None

        status = wait_until(moved, timeout=LEASE_S + 10)
        assert status, _status_everywhere(balancer, key, session_id, n=1)
        assert status["camera"] == "gate" and status["stats"] is not None, status
        assert http.get(f"/api/v1/video/sessions/{session_id}/zones").json()["zones"] == zones

        # and a stop through any replica stops it for good
        assert http.post("/api/v1/video/stop", json={"session_id": session_id}).status_code == 200
        assert wait_until(lambda: http.get(f"/api/v1/video/status/{session_id}").status_code == 404, timeout=5)


@pytest.mark.lease(30.0)
def test_sigterm_drains_a_replica_and_the_other_takes_its_sessions_long_before_its_lease_runs_out(pg_replicas):
    balancer, replicas, key = pg_replicas
    with running_camera() as camera, httpx.Client(base_url=balancer.url, headers={"apikey": key}, timeout=30) as http:
        started = http.post("/api/v1/video/start", json={"stream_url": camera.url})
        assert started.status_code == 200, started.text
        session_id, owner = started.json()["session_id"], started.headers["x-replica"]
        other = ({"r1", "r2"} - {owner}).pop()

        replicas[owner].proc.send_signal(signal.SIGTERM)

        def taken():
            (status,) = _status_everywhere(balancer, key, session_id, n=1)
            return status if status["replica"] == other and status["state"] == "running" else None

        # released at drain, claimed at the other's next claim round (every second) and opened; a
        # lease left to run out would take 30 s
        assert wait_until(taken, timeout=10), _status_everywhere(balancer, key, session_id, n=1)
        replicas[owner].proc.wait(30)


def test_a_viewer_on_another_replica_sees_the_session_and_keeps_seeing_it_when_its_owner_dies(pg_replicas):
    balancer, replicas, key = pg_replicas
    with running_camera() as camera, httpx.Client(base_url=balancer.url, headers={"apikey": key}, timeout=30) as http:
        started = http.post("/api/v1/video/start", json={"stream_url": camera.url})
        assert started.status_code == 200, started.text
        body, owner = started.json(), started.headers["x-replica"]
        other = ({"r1", "r2"} - {owner}).pop()
        # a viewer connected to the replica that does not run it, with the token from the start
        url = f"ws://127.0.0.1:{replicas[other].port}{body['websocket_path']}"
        with connect(url, open_timeout=10) as ws:
            first = json.loads(ws.recv(timeout=10))
            assert first["type"] == "stream_info" and first["session_id"] == body["session_id"], first
            assert len(frame_results(ws, 3, seconds=20)) == 3  # relayed over the bus from the owner

            replicas[owner].proc.send_signal(signal.SIGKILL)
            replicas[owner].proc.wait(5)
            # frames stop, then come again on the same connection once this replica runs the session
            again = frame_results(ws, 3, seconds=LEASE_S + 20)
            assert len(again) == 3, again
        status = http.get(f"/api/v1/video/status/{body['session_id']}").json()
        assert status["replica"] == other and status["state"] == "running", status


@pytest.mark.max_sessions(1)
def test_a_start_no_replica_has_room_for_is_pending_and_runs_once_a_place_frees(pg_replicas):
    balancer, replicas, key = pg_replicas
    with running_camera() as camera, httpx.Client(base_url=balancer.url, headers={"apikey": key}, timeout=30) as http:
        # two places in all: the first two starts run (one may be handed over: 202, then claimed)
        first = [http.post("/api/v1/video/start", json={"stream_url": camera.url}) for _ in range(2)]
        assert all(a.status_code in (200, 202) for a in first), [a.text for a in first]
        ids = [a.json()["session_id"] for a in first]

        def running(session_id):
            (status,) = _status_everywhere(balancer, key, session_id, n=1)
            return status["state"] == "running" and status

        assert all(wait_until(lambda sid=sid: running(sid), timeout=15) for sid in ids)
        owners = {running(sid)["replica"] for sid in ids}
        assert owners == {"r1", "r2"}
        # when a third comes, no replica has room: recorded as pending, in words
        third = http.post("/api/v1/video/start", json={"stream_url": camera.url, "camera": "third"})
        assert third.status_code == 202, third.text
        body = third.json()
        assert body["status"] == "pending" and "MAX_SESSIONS=1" in body["message"] and body["viewer_token"]
        (status,) = _status_everywhere(balancer, key, body["session_id"], n=1)
        assert status["state"] == "pending" and status["replica"] is None and status["camera"] == "third"
        # and every replica counts it among the pending (the autoscaler's signal), within a renewal
        assert wait_until(lambda: "rtdetr_sessions_pending 1.0" in http.get("/metrics").text, timeout=5)
        # then it runs as soon as one is stopped
        assert http.post("/api/v1/video/stop", json={"session_id": ids[0]}).status_code == 200
        assert wait_until(lambda: running(body["session_id"]), timeout=15), _status_everywhere(
            balancer, key, body["session_id"], n=1
        )
