"""Recording through the real service: a session started with `record` writes segments that play,
says so in its status and /metrics; a recordings folder that becomes unwritable costs segments only
(inference goes on), said in words in status and /ready, and writing resumes once it is fixed."""

from __future__ import annotations

import io
import re
import time

import av

from scripted_detector import WalkingPeople
from support import make_settings, run_service, running_camera, start_session, wait_until


def recording(client, session_id: str) -> dict:
    answer = client.get(f"/api/v1/video/status/{session_id}")
    assert answer.status_code == 200, answer.text
    return answer.json()


def metric(client, name: str, session_id: str) -> float:
    text = client.get("/metrics").text
    found = re.search(rf'^{name}(?:_total)?{{session="{session_id}"}} ([0-9.e+]+)$', text, re.M)
    return float(found.group(1)) if found else -1.0


def inference_rate(client, session_id: str, seconds: float = 4.0) -> float:
    """Frames inferred per second over the next `seconds`, from the session's own counter."""
    first, since = recording(client, session_id)["stats"]["frames_inferred"], time.monotonic()
    time.sleep(seconds)
    last, until = recording(client, session_id)["stats"]["frames_inferred"], time.monotonic()
    return (last - first) / (until - since)


def test_a_recording_session_writes_playable_segments_and_survives_an_unwritable_folder(tiny_model_dir, tmp_path):
    settings = make_settings(
        tiny_model_dir, data_dir=tmp_path / "data", record_segment_s=1.0, record_segment_max_s=3.0, record_sweep_s=0.5
    )
    service = run_service(settings, detector_factory=lambda _settings: WalkingPeople())

    try:
        with running_camera(fps=15) as camera, service.client() as client:
            # Given a session that records everything
            started = start_session(client, camera.url, camera="gate", record="continuous")
            sid = started["session_id"]
            status = wait_until(lambda: (s := recording(client, sid))["recording"]["segments"] >= 2 and s, timeout=20)
            assert status["record"] == "continuous" and status["recording"]["state"] in ("recording", "waiting")
            assert metric(client, "rtdetr_recording_segments", sid) >= 2
            healthy = inference_rate(client, sid)
            assert healthy > 0
            files = sorted((settings.data_dir / "recordings" / "gate").rglob("*.mp4"))
            assert len(files) >= 2
            with av.open(str(files[0])) as container:
                assert sum(len(p.decode()) for p in container.demux(container.streams.video[0]) if p.size) > 0

            # When the recordings folder becomes a file
            folder = settings.data_dir / "recordings"
            aside = settings.data_dir / "recordings.aside"
            folder.rename(aside)
            folder.write_bytes(b"not a folder")
            try:
                status = wait_until(lambda: (s := recording(client, sid))["recording"]["failing"] and s, timeout=15)
                inferred = status["stats"]["frames_inferred"]
                # Then inference goes on, the loss is counted and said in words, in status and /ready
                assert "recordings" in status["recording"]["last_error"]
                assert status["recording"]["dropped_segments"] >= 1
                assert wait_until(
                    lambda: recording(client, sid)["stats"]["frames_inferred"] > inferred + 15, timeout=15
                )
                # at the rate of the healthy phase of this run: writing is what fails, nothing waits on it
                failing = inference_rate(client, sid)
                assert recording(client, sid)["recording"]["failing"]
                assert failing >= 0.8 * healthy, (failing, healthy)
                warnings = client.get("/ready").json()["warnings"]
                assert any(sid in w and "not recording" in w for w in warnings), warnings
                assert metric(client, "rtdetr_recording_failing", sid) == 1
                assert metric(client, "rtdetr_recording_dropped_segments", sid) >= 1
                assert recording(client, sid)["state"] == "running"
            finally:
                folder.unlink()
                aside.rename(folder)
            # And once fixed, segments are written again
            before = recording(client, sid)["recording"]["segments"]
            wait_until(
                lambda: (r := recording(client, sid)["recording"])["segments"] > before and not r["failing"], timeout=20
            )
            assert metric(client, "rtdetr_recording_failing", sid) == 0
    finally:
        service.stop()


def test_a_session_that_does_not_record_has_no_recorder(tiny_model_dir, tmp_path, rtsp_url):
    settings = make_settings(tiny_model_dir, data_dir=tmp_path / "data", record="off")
    service = run_service(settings, detector_factory=lambda _settings: WalkingPeople())
    try:
        with service.client() as client:
            sid = start_session(client, rtsp_url)["session_id"]
            wait_until(lambda: recording(client, sid)["stats"]["frames_decoded"] > 10, timeout=15)
            status = recording(client, sid)
            assert status["record"] == "off" and status["recording"] is None
            assert not (settings.data_dir / "recordings").exists() or not any(
                (settings.data_dir / "recordings").rglob("*.mp4")
            )
    finally:
        service.stop()


def test_a_camera_reconnect_in_the_middle_of_an_event_gives_a_clip_that_plays_across_the_gap(tiny_model_dir, tmp_path):
    settings = make_settings(
        tiny_model_dir,
        data_dir=tmp_path / "data",
        record_segment_s=1.0,
        record_segment_max_s=3.0,
        record_pre_s=1.0,
        record_post_s=1.0,
        event_end_after_s=10.0,
    )
    # One person who walks so slowly (5 min across) that the track survives the gap: the same event.
    t0 = time.time()
    walker = WalkingPeople(walk_s=300.0, period_s=1000.0, clock=lambda: time.time() - t0)
    service = run_service(settings, detector_factory=lambda _settings: walker)
    try:
        with running_camera() as camera, service.client() as client:
            # Given an event under way, recorded
            sid = start_session(client, camera.url, camera="gate", record="events", tracking={"keep_s": 10.0})[
                "session_id"
            ]

            def live_event():
                events = client.get("/api/v1/events", params={"session_id": sid}).json()["events"]
                return next((e for e in events if e["active"] and e["start_time"] < time.time() - 3), None)

            event = wait_until(live_event, timeout=20)
            assert event, "no event under way"

            # When the camera goes away for 3 s in the middle of it and comes back
            camera.stop()
            gap_start = time.time()
            time.sleep(3.0)
            camera.start()
            gap_end = time.time()
            assert wait_until(lambda: any(s["start_time"] > gap_end + 2 for s in recorded(client, sid)), timeout=20), (
                "nothing recorded after the reconnect"
            )
            assert recording(client, sid)["stats"]["reconnects"] >= 1

            # Then it is still the same event, and its clip decodes end to end, with frames on both sides
            same = client.get(f"/api/v1/events/{event['id']}").json()
            assert same["active"] and same["has_clip"], same
            answer = client.get(same["clip_url"])
            assert answer.status_code == 200, answer.text
            clip_start = float(answer.headers["x-clip-start"])
            with av.open(io.BytesIO(answer.content)) as container:
                stream = container.streams.video[0]
                assert stream.codec_context.name == "h264"
                walls = [clip_start + float(frame.time) for frame in container.decode(stream)]
            assert any(w < gap_start - 0.5 for w in walls) and any(w > gap_end + 1.0 for w in walls), (
                gap_start,
                gap_end,
                walls[0],
                walls[-1],
            )
            # and the gap stays a gap in time: no picture was made up for it
            assert not [w for w in walls if gap_start + 0.5 < w < gap_end - 0.5]
            assert walls == sorted(walls)
    finally:
        service.stop()


def recorded(client, session_id: str) -> list[dict]:
    answer = client.get("/api/v1/recordings", params={"session_id": session_id, "limit": 1000})
    assert answer.status_code == 200, answer.text
    return answer.json()["segments"]
