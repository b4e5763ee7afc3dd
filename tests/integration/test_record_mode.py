"""A session's record mode set while it runs (PUT /api/v1/video/sessions/{id}/record), through the real
service and camera: a session started with `off` gets a recorder, `off` stops it with its last segment
kept, bad requests are refused in words; in a cluster, a change asked of another replica is recorded in
the store, applied by the owner at its next renewal, and kept when the session moves."""

from __future__ import annotations

import signal

import av
import pytest

from scripted_detector import WalkingPeople
from support import make_settings, run_service, running_camera, start_session, wait_until


def status(client, session_id: str) -> dict:
    answer = client.get(f"/api/v1/video/status/{session_id}")
    assert answer.status_code == 200, answer.text
    return answer.json()


def segments(client, session_id: str) -> list[dict]:
    answer = client.get("/api/v1/recordings", params={"session_id": session_id, "limit": 1000})
    assert answer.status_code == 200, answer.text
    return answer.json()["segments"]


def put_record(client, session_id: str, mode) -> dict:
    answer = client.put(f"/api/v1/video/sessions/{session_id}/record", json={"record": mode})
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_a_session_started_without_recording_records_once_asked_and_stops_when_told(tiny_model_dir, tmp_path):
    settings = make_settings(
        tiny_model_dir, data_dir=tmp_path / "data", record="off", record_segment_s=1.0, record_segment_max_s=3.0
    )
    service = run_service(settings, detector_factory=lambda _settings: WalkingPeople())
    try:
        with running_camera() as camera, service.client() as client:
            # Given a session started with recording off
            sid = start_session(client, camera.url, camera="gate")["session_id"]
            assert wait_until(lambda: status(client, sid)["stats"]["frames_decoded"] > 5, timeout=15)
            assert status(client, sid)["record"] == "off" and status(client, sid)["recording"] is None

            # Bad requests are refused in words
            bad = client.put(f"/api/v1/video/sessions/{sid}/record", json={"record": "sometimes"})
            assert bad.status_code == 422 and bad.json()["error"] == "invalid_request", bad.text
            assert "continuous" in bad.json()["detail"], bad.text
            unknown = client.put("/api/v1/video/sessions/no-such-session/record", json={"record": "events"})
            assert unknown.status_code == 404 and unknown.json()["error"] == "session_not_found", unknown.text

            # When it is asked to record everything, it records from the next keyframe on
            answer = put_record(client, sid, "continuous")
            assert answer["record"] == "continuous" and answer["recording"]["mode"] == "continuous", answer
            assert wait_until(lambda: len(segments(client, sid)) >= 2, timeout=20)
            assert status(client, sid)["record"] == "continuous"
            first = segments(client, sid)[0]
            assert first["mode"] == "continuous" and first["codec"] == "h264"
            files = sorted((settings.data_dir / "recordings" / "gate").rglob("*.mp4"))
            with av.open(str(files[0])) as container:
                assert sum(len(p.decode()) for p in container.demux(container.streams.video[0]) if p.size) > 0
            # and its events have clips
            has_clip = lambda: [  # noqa: E731
                e for e in client.get("/api/v1/events", params={"session_id": sid}).json()["events"] if e["has_clip"]
            ]
            clips = wait_until(has_clip, timeout=20)
            assert clips, "no event got a clip"
            event = clips[0]
            assert client.get(event["clip_url"]).status_code == 200

            # When it is told to stop recording, the segment being written is finished and kept, and no other
            answer = put_record(client, sid, "off")
            assert answer["record"] == "off" and answer["recording"] is None, answer
            kept = segments(client, sid)
            assert not list((settings.data_dir / "recordings").rglob("*.part"))
            frames = status(client, sid)["stats"]["frames_decoded"]
            assert wait_until(lambda: status(client, sid)["stats"]["frames_decoded"] > frames + 45, timeout=15)  # 3 s
            assert segments(client, sid) == kept
            assert status(client, sid)["state"] == "running"

            # And it can be asked again, in events mode
            answer = put_record(client, sid, "events")
            assert answer["recording"]["mode"] == "events"
            assert wait_until(lambda: any(s["mode"] == "events" for s in segments(client, sid)), timeout=20)
    finally:
        service.stop()


@pytest.mark.replicas(2)
def test_a_record_mode_asked_of_another_replica_is_applied_by_the_owner_and_kept_when_the_session_moves(
    deployment,
):
    with running_camera() as camera:
        # Given a session that r1 runs without recording
        with deployment.client("r1") as r1:
            started = r1.post("/api/v1/video/start", json={"stream_url": camera.url, "camera": "gate", "record": "off"})
            assert started.status_code == 200 and started.headers["x-replica"] == "r1", started.text
        sid = started.json()["session_id"]

        # When r2 is asked to make it record everything
        with deployment.client("r2") as r2:
            answer = r2.put(f"/api/v1/video/sessions/{sid}/record", json={"record": "continuous"})
            assert answer.status_code == 200 and answer.headers["x-replica"] == "r2", answer.text
            assert answer.json()["record"] == "continuous" and "r1" in answer.json()["message"], answer.text
            unknown = r2.put("/api/v1/video/sessions/no-such-session/record", json={"record": "events"})
            assert unknown.status_code == 404, unknown.text

        # Then r1 applies it at its next renewal and writes segments
        def recording_on_r1():
            with deployment.client("r1") as r1:
                shown = r1.get(f"/api/v1/video/status/{sid}").json()
            recording = shown.get("recording") or {}
            return shown["record"] == "continuous" and recording.get("segments", 0) >= 1 and shown

        assert wait_until(recording_on_r1, timeout=30)

        # And when r1 drains, r2 runs the session and records it as asked
        deployment.replicas.signal("r1", signal.SIGTERM)

        def recording_on_r2():
            with deployment.client("r2") as r2:
                shown = r2.get(f"/api/v1/video/status/{sid}").json()
            recording = shown.get("recording") or {}
            return shown.get("replica") == "r2" and shown["record"] == "continuous" and recording.get("mode") and shown

        moved = wait_until(recording_on_r2, timeout=30)
        assert moved, "the session did not go on recording on r2"
        assert moved["recording"]["mode"] == "continuous"
        deployment.replicas.wait("r1", 30)
