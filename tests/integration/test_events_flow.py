"""Objects, zones and events end to end: the real service and the GStreamer camera, with a
scripted detector in place of the model (people walking left to right) and everything after it
real: tracker, zone and line rules, alerts, the event store on SQLite, snapshots, REST, restart."""

from __future__ import annotations

import json
import sqlite3
import time

import cv2
import numpy as np
import pytest
from websockets.sync.client import connect

from scripted_detector import WALK_ZONES, WalkingPeople
from support import make_settings, run_service, start_session
from support import wait_until as _wait


@pytest.fixture
def events_settings(tiny_model_dir, tmp_path):
    return make_settings(
        tiny_model_dir, data_dir=tmp_path / "data", event_end_after_s=1.0, track_keep_s=0.5, track_min_hits=2
    )


def _service(settings, detector=None):
    detector = detector or WalkingPeople()
    return run_service(settings, detector_factory=lambda _settings: detector)


def _ended_event(client, session_id: str):
    events = client.get("/api/v1/events", params={"session_id": session_id}).json()["events"]
    return next((e for e in events if not e["active"] and e["has_snapshot"] and "right" in e["zones"]), None)


def test_a_walk_is_tracked_fires_each_rule_once_and_is_kept_as_an_event_with_a_snapshot(events_settings, rtsp_url):
    # given the service with zones, a line and two rules on a camera people walk across
    service = _service(events_settings)
    try:
        with service.client() as client:
            body = start_session(client, rtsp_url, camera="cam1", zones=WALK_ZONES, alert=None)
            session_id = body["session_id"]
            alerts, track_ids = [], set()
            # when a viewer watches for two walks (10 s)
            with connect(service.ws_base + body["websocket_path"], open_timeout=10) as ws:
                info = json.loads(ws.recv(timeout=10))
                assert info["type"] == "stream_info" and info["zones"]["zones"][0]["name"] == "right"
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    message = json.loads(ws.recv(timeout=10))
                    if message["type"] == "frame_result":
                        track_ids.update(d["track_id"] for d in message["detections"] if d["track_id"] is not None)
                    elif message["type"] == "alert":
                        alerts.append(message["data"])
            # then detections carry track ids, and each rule fired once per walker
            assert track_ids, "no detection carried a track id"
            enter = [a for a in alerts if a["rule"] == "someone-right"]
            crossing = [a for a in alerts if a["rule"] == "passing"]
            assert enter and crossing
            for fired in (enter, crossing):
                ids = [a["track_id"] for a in fired]
                assert len(ids) == len(set(ids)), f"a rule fired twice for one object: {fired}"
                assert all(a["event_id"] for a in fired)
            assert {a["kind"] for a in enter} == {"enter"} and {a["direction"] for a in crossing} == {"in"}
            # and the counts say so too
            counts = client.get(f"/api/v1/video/sessions/{session_id}/counts").json()["counts"]
            assert counts["lines"]["middle"]["in"]["person"] >= 1
            assert counts["rules"]["someone-right"] == len(enter)
            # and an ended walk is an event with the zone, the rule and a snapshot of the source size
            event = _wait(lambda: _ended_event(client, session_id), timeout=15)
            assert event, client.get("/api/v1/events").json()
            assert event["camera"] == "cam1" and event["label"] == "person"
            assert "someone-right" in event["rules"] and event["end_time"] >= event["start_time"]
            snapshot = client.get(event["snapshot_url"])
            assert snapshot.status_code == 200 and snapshot.headers["content-type"] == "image/jpeg"
            picture = cv2.imdecode(np.frombuffer(snapshot.content, np.uint8), cv2.IMREAD_COLOR)
            assert picture.shape == (240, 320, 3)
            assert client.get(f"/api/v1/events/{event['id']}").json()["id"] == event["id"]
            client.post("/api/v1/video/stop", json={"session_id": session_id})
    finally:
        service.stop()

    # when the service restarts on the same data directory, then the history is still there
    service = _service(events_settings)
    try:
        with service.client() as client:
            again = client.get(f"/api/v1/events/{event['id']}")
            assert again.status_code == 200 and again.json()["best_confidence"] == event["best_confidence"]
            listed = client.get("/api/v1/events", params={"camera": "cam1", "zone": "right", "label": "person"})
            assert event["id"] in [e["id"] for e in listed.json()["events"]]
            # and an event can be deleted, its snapshot with it
            assert client.delete(f"/api/v1/events/{event['id']}").status_code == 200
            assert client.get(f"/api/v1/events/{event['id']}").status_code == 404
            assert client.get(event["snapshot_url"]).status_code == 404
    finally:
        service.stop()


def _output(client, name: str) -> dict:
    return next(o for o in client.get("/api/v1/outputs").json()["outputs"] if o["name"] == name)


def _inferred_in(client, session_id: str, seconds: float) -> float:
    before = client.get(f"/api/v1/video/status/{session_id}").json()["stats"]["frames_inferred"]
    time.sleep(seconds)
    after = client.get(f"/api/v1/video/status/{session_id}").json()["stats"]["frames_inferred"]
    return (after - before) / seconds


def test_a_stalled_event_store_drops_and_says_so_but_inference_keeps_its_rate(tiny_model_dir, tmp_path, rtsp_url):
    # given a crowd (many events and snapshots per second) and a small store queue
    settings = make_settings(
        tiny_model_dir, data_dir=tmp_path / "data", event_end_after_s=1.0, track_keep_s=0.5, event_queue_size=16
    )
    service = _service(settings, WalkingPeople(rows=6, walk_s=4.0, period_s=4.5))
    try:
        with service.client() as client:
            session_id = start_session(client, rtsp_url, camera="cam1")["session_id"]
            assert _wait(lambda: client.get("/api/v1/events").json()["events"], timeout=15)
            healthy = _inferred_in(client, session_id, 4.0)
            # when another process holds the database's write lock (a stalled disk, as the store sees it)
            blocker = sqlite3.connect(settings.data_dir / "events.db", timeout=1, isolation_level=None)
            blocker.execute("BEGIN EXCLUSIVE")
            try:
                stalled = _inferred_in(client, session_id, 8.0)
                store = _output(client, "event_store")
                ready = client.get("/ready").json()
                status = client.get(f"/api/v1/video/status/{session_id}").json()
            finally:
                blocker.rollback()
                blocker.close()
            # then inference keeps its rate, the store drops (counted) and /ready says so in words
            assert healthy > 0 and stalled >= 0.8 * healthy, (healthy, stalled)
            assert store["dropped"] > 0 and store["state"] != "ok", store
            assert any("event_store" in w for w in ready["warnings"]), ready["warnings"]
            assert any("event_store" in w for w in status["warnings"]), status["warnings"]
            # and once the lock is gone the store writes again
            written = store["sent"]
            assert _wait(lambda: _output(client, "event_store")["sent"] > written, timeout=20)
    finally:
        service.stop()
