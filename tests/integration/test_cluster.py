"""Several replicas of the real service behind HAProxy (standing in for Kong): the balancer
spreads calls over every ready replica and takes a dead one out of rotation by its /ready check."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from cluster import HAPROXY, LEASE_S, Balancer, Deployment, Replicas
from support import frame_results, running_camera, wait_until

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not os.path.exists(HAPROXY), reason="haproxy is not installed")


@pytest.fixture
def two_replicas(tiny_model_dir, tmp_path):
    key = "cluster-" + secrets.token_hex(8)
    with contextlib.ExitStack() as parts:
        replicas = Replicas(tiny_model_dir, tmp_path, 2, API_KEYS=key)
        parts.callback(replicas.stop)
        replicas.start()
        balancer = Balancer({name: replicas[name].port for name in replicas.names}, tmp_path)
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


def _readme_session() -> tuple[str, str]:
    """The README's shell session, cut where it sends the reader to the viewer: (start and status, stop)."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## One session from a shell", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    first, rest = block.split("# the viewer page", 1)
    return first, rest.split("\n", 1)[1]


def _run_pinned(script: str, routes: list[str], folder: Path, deployment: Deployment, camera_url: str, **env) -> str:
    """Run README shell lines in bash against the balancer, the n-th curl asking for routes[n]; stdout.
    Each call's answer headers are kept in folder/headers.<n>, to see where it landed."""
    (folder / "calls").write_text("0")
    (folder / "routes").write_text("\n".join(routes) + "\n")
    (folder / ".run").mkdir(exist_ok=True)
    (folder / ".run" / "api_key").write_text(deployment.key)
    prelude = f"""set -euo pipefail
DIR={folder}
curl() {{
  local n; n=$(( $(cat "$DIR/calls") + 1 )); echo "$n" > "$DIR/calls"
  command curl -H "X-Route-To: $(sed -n "${{n}}p" "$DIR/routes")" -D "$DIR/headers.$n" "$@"
}}
"""
    script = script.replace("http://127.0.0.1:8080", deployment.balancer.url)
    script = script.replace("rtsp://127.0.0.1:8554/camera", camera_url)
    done = subprocess.run(["bash", "-c", prelude + script], cwd=folder, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, **env))  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def _landed(folder: Path, n: int) -> str:
    headers = (folder / f"headers.{n}").read_text().lower()
    return headers.split("x-replica: ", 1)[1].split()[0]


@pytest.mark.replicas(3)
def test_the_readme_session_works_with_each_call_on_another_replica(deployment, tmp_path):
    first, stop = _readme_session()
    with running_camera() as camera:
        # start on r1 and status on r2, as the README has them, through the balancer
        out = _run_pinned(first + 'echo\necho "SID=$SID"\n', ["r1", "r2"], tmp_path, deployment, camera.url)
        assert [_landed(tmp_path, 1), _landed(tmp_path, 2)] == ["r1", "r2"]
        status_line, sid_line = out.strip().splitlines()[-2:]  # curl prints no newline of its own
        session_id = sid_line.removeprefix("SID=")
        status = json.loads(status_line)
        assert status["session_id"] == session_id and status["replica"] == "r1" and status["state"] == "running"
        with deployment.client("r1") as r1:
            path = r1.get("/api/v1/video/sessions").json()["sessions"][0]["websocket_path"]
        # a viewer on r3, relayed over the bus from r1
        with deployment.viewer(path, "r3") as ws:
            assert len(frame_results(ws, 3, seconds=20)) == 3
            # zones put on r1 reach the viewer on r3 (the owner's `zones` message)
            spec = {"zones": [{"name": "door", "points": [[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]}]}
            with deployment.client("r1") as r1:
                assert r1.put(f"/api/v1/video/sessions/{session_id}/zones", json=spec).status_code == 200
            assert _next_of(ws, "zones", seconds=10)["zones"]["zones"][0]["name"] == "door"
            # stop on r2, as the README has it: the viewer on r3 hears it and is closed
            out = _run_pinned(stop, ["r2"], tmp_path, deployment, camera.url, SID=session_id, KEY=deployment.key)
            assert _landed(tmp_path, 1) == "r2" and json.loads(out)["status"] == "stopped", out
            assert _next_of(ws, "session_stopped", seconds=10)["session_id"] == session_id
        for name in ("r1", "r2", "r3"):
            with deployment.client(name) as http:
                assert wait_until(lambda: http.get(f"/api/v1/video/status/{session_id}").status_code == 404, 10)


def _next_of(ws, kind: str, seconds: float) -> dict:
    """The next message of that type on a JSON viewer socket, within `seconds` (the others passed over)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        message = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
        if message["type"] == kind:
            return message
    raise AssertionError(f"no {kind} message within {seconds} s")


def _states_seen(ws, until, seconds: float) -> tuple[list[str], list[dict]]:
    """The `status` states a JSON viewer is told, and its frames, until `until(frames)` holds."""
    states, frames = [], []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not until(frames):
        message = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
        if message["type"] == "status":
            if not states or states[-1] != message["state"]:
                states.append(message["state"])
        elif message["type"] == "frame_result":
            frames.append(message)
    return states, frames


def _events_with_snapshots(deployment: Deployment, session_id: str) -> list[dict]:
    with deployment.client() as http:
        events = http.get("/api/v1/events", params={"session_id": session_id, "limit": 500}).json()["events"]
    return [e for e in events if e["snapshot_url"]]


def _status_everywhere(deployment: Deployment, session_id: str, n: int = 4) -> list[dict]:
    with deployment.client() as http:
        answers = [http.get(f"/api/v1/video/status/{session_id}") for _ in range(n)]
    return [dict(a.json(), answered_by=a.headers["x-replica"], code=a.status_code) for a in answers]


def _running_on(deployment: Deployment, session_id: str, replica: str | None = None):
    (status,) = _status_everywhere(deployment, session_id, n=1)
    good = status["state"] == "running" and (replica is None or status["replica"] == replica)
    return status if good else None


def test_any_replica_answers_and_a_killed_owners_session_moves_under_its_viewers_eyes(deployment):
    with running_camera() as camera, deployment.client("r1") as r1:
        started = r1.post("/api/v1/video/start", json={"stream_url": camera.url, "camera": "gate"})
        assert started.status_code == 200 and started.headers["x-replica"] == "r1", started.text
        body = started.json()
        session_id = body["session_id"]

        # every replica answers for it, and names its owner
        answers = _status_everywhere(deployment, session_id)
        assert {a["answered_by"] for a in answers} == {"r1", "r2"}
        assert all(a["code"] == 200 and a["replica"] == "r1" and a["state"] == "running" for a in answers), answers
        with deployment.client() as http:
            assert [s["session_id"] for s in http.get("/api/v1/video/sessions").json()["sessions"]] == [session_id]
        # zones put through either replica are kept
        zones = {}
        for name, x in (("r1", 0.0), ("r2", 0.5)):
            spec = {"zones": [{"name": f"from-{name}", "points": [[x, 0.0], [x + 0.5, 0.0], [x + 0.5, 1.0], [x, 1.0]]}]}
            with deployment.client(name) as http:
                put = http.put(f"/api/v1/video/sessions/{session_id}/zones", json=spec)
            assert put.status_code == 200, put.text
            zones = put.json()["zones"]
        assert [z["name"] for z in zones["zones"]] == ["from-r2"]
        # live counts only its owner has: the other replica says where they are
        assert r1.get(f"/api/v1/video/sessions/{session_id}/counts").status_code == 200
        with deployment.client("r2") as r2:
            counts = r2.get(f"/api/v1/video/sessions/{session_id}/counts")
        assert counts.status_code == 409 and counts.json()["error"] == "session_elsewhere", counts.text
        assert "r1" in counts.json()["detail"]

        # r1 has written events with snapshots
        assert wait_until(lambda: _events_with_snapshots(deployment, session_id), timeout=20)
        # a viewer on r2, relayed from r1
        with deployment.viewer(body["websocket_path"], "r2") as ws:
            assert len(frame_results(ws, 3, seconds=20)) == 3
            # when its owner dies without a word
            killed_at = time.time()
            deployment.replicas.signal("r1", signal.SIGKILL)
            deployment.replicas.wait("r1", 5)
            # the viewer is told the session is moving, then frames come again on the same
            # connection, once r2 runs it (same id), within the lease and a claim round or two
            states, again = _states_seen(ws, lambda frames: len(frames) >= 3, seconds=LEASE_S + 20)
            assert len(again) >= 3, (states, again)
            assert "moving" in states and states[-1] == "running", states
        status = _running_on(deployment, session_id, "r2")
        assert status and status["camera"] == "gate" and status["stats"] is not None, status
        # the snapshots r1 wrote before it died are served by r2 (one DATA_DIR for all replicas)
        with deployment.client("r2") as r2:
            events = r2.get("/api/v1/events", params={"session_id": session_id, "limit": 500}).json()["events"]
            shot = next(e for e in events if e["snapshot_url"] and e["start_time"] < killed_at)
            image = r2.get(shot["snapshot_url"])
        assert image.status_code == 200 and image.content[:2] == b"\xff\xd8", image.status_code
        with deployment.client() as http:
            assert http.get(f"/api/v1/video/sessions/{session_id}/zones").json()["zones"] == zones
            # and a stop through any replica stops it for good
            assert http.post("/api/v1/video/stop", json={"session_id": session_id}).status_code == 200
            assert wait_until(lambda: http.get(f"/api/v1/video/status/{session_id}").status_code == 404, timeout=5)


@pytest.mark.lease(30.0)
def test_a_drained_replicas_sessions_move_at_once_and_all_resume_when_every_replica_restarts(deployment):
    with running_camera() as camera:
        ids = {}
        for name in ("r1", "r2"):
            with deployment.client(name) as http:
                started = http.post("/api/v1/video/start", json={"stream_url": camera.url, "camera": f"on-{name}"})
            assert started.status_code == 200 and started.headers["x-replica"] == name, started.text
            ids[name] = started.json()
        # a viewer on r2 of r1's session
        with deployment.viewer(ids["r1"]["websocket_path"], "r2") as ws:
            assert len(frame_results(ws, 3, seconds=20)) == 3
            deployment.replicas.signal("r1", signal.SIGTERM)
            # released at drain, claimed at r2's next claim round (every second) and opened; a lease
            # left to run out would take 30 s. The viewer is told `moving` and stays connected.
            states, again = _states_seen(ws, lambda frames: len(frames) >= 3, seconds=15)
            assert len(again) >= 3 and "moving" in states and states[-1] == "running", (states, again)
        assert _running_on(deployment, ids["r1"]["session_id"], "r2")
        # uvicorn ends a graceful shutdown by raising the signal again: -SIGTERM is a clean exit
        assert deployment.replicas.wait("r1", 30) in (0, -signal.SIGTERM)
        # the last replica standing drains too: nobody takes them, and they stay wanted
        deployment.replicas.signal("r2", signal.SIGTERM)
        assert deployment.replicas.wait("r2", 30) in (0, -signal.SIGTERM)
        # every replica starts again (an upgrade): every session runs again, same id, same viewer token
        deployment.replicas.start("r1", "r2")
        # back in the balancer's rotation at its next check of each (every second)
        assert wait_until(lambda: deployment.in_rotation("r1", "r2"), timeout=10)
        for body in ids.values():
            assert wait_until(lambda b=body: _running_on(deployment, b["session_id"]), timeout=15), body
            with deployment.viewer(body["websocket_path"], "r1") as ws:
                assert len(frame_results(ws, 2, seconds=20)) == 2


@pytest.mark.replicas(3)
@pytest.mark.max_sessions(1)
def test_a_start_no_replica_has_room_for_is_pending_and_runs_once_a_place_frees(deployment):
    with running_camera() as camera, deployment.client() as http:
        # three places in all: the first three starts run (one may be handed over: 202, then claimed)
        first = [http.post("/api/v1/video/start", json={"stream_url": camera.url}) for _ in range(3)]
        assert all(a.status_code in (200, 202) for a in first), [a.text for a in first]
        ids = [a.json()["session_id"] for a in first]
        assert all(wait_until(lambda sid=sid: _running_on(deployment, sid), timeout=15) for sid in ids)
        assert {_running_on(deployment, sid)["replica"] for sid in ids} == {"r1", "r2", "r3"}
        # when a fourth comes, no replica has room: recorded as pending, in words
        fourth = http.post("/api/v1/video/start", json={"stream_url": camera.url, "camera": "fourth"})
        assert fourth.status_code == 202, fourth.text
        body = fourth.json()
        assert body["status"] == "pending" and "MAX_SESSIONS=1" in body["message"] and body["viewer_token"]
        (status,) = _status_everywhere(deployment, body["session_id"], n=1)
        assert status["state"] == "pending" and status["replica"] is None and status["camera"] == "fourth"
        # and every replica counts it among the pending (the autoscaler's signal), within a renewal
        assert wait_until(lambda: "rtdetr_sessions_pending 1.0" in http.get("/metrics").text, timeout=5)
        # then it runs as soon as one is stopped
        assert http.post("/api/v1/video/stop", json={"session_id": ids[0]}).status_code == 200
        assert wait_until(lambda: _running_on(deployment, body["session_id"]), timeout=15), _status_everywhere(
            deployment, body["session_id"], n=1
        )
