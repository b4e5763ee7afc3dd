"""The recordings API through the real service: an event's clip is the camera's own video around it
(pre- and post-roll, cut at keyframes), the segment list and an export of a time range, and every
bad request refused in words. The scripted walking people make real events; the GStreamer camera
sends H.264 with a keyframe every second."""

from __future__ import annotations

import io
import time

import av
import pytest

from scripted_detector import WalkingPeople
from support import make_settings, run_service, running_camera, start_session, wait_until

KEYFRAME_S = 1.0  # the test camera's keyframe interval (key-int-max = fps)
PADDING_S = 1.0


@pytest.fixture
def recording_service(tiny_model_dir, tmp_path):
    settings = make_settings(
        tiny_model_dir,
        data_dir=tmp_path / "data",
        record_segment_s=1.0,
        record_segment_max_s=3.0,
        record_sweep_s=0.5,
        record_pre_s=PADDING_S,
        record_post_s=PADDING_S,
        record_clips_max=1,
    )
    service = run_service(settings, detector_factory=lambda _settings: WalkingPeople())
    yield service
    service.stop()


def decoded(body: bytes) -> tuple[str, int, int, list[float]]:
    """The codec, size and frame times (s) of an MP4 held in memory."""
    with av.open(io.BytesIO(body)) as container:
        stream = container.streams.video[0]
        times = [float(frame.time) for frame in container.decode(stream)]
        return stream.codec_context.name, stream.codec_context.width, stream.codec_context.height, times


def test_an_events_clip_is_the_cameras_video_around_it_and_ranges_export(recording_service):
    with running_camera() as camera, recording_service.client() as client:
        sid = start_session(client, camera.url, camera="gate", record="events")["session_id"]

        # an event that has ended, its pre-roll and post-roll both recorded (not one that began as
        # the recording did)
        def ended():
            events = client.get("/api/v1/events", params={"session_id": sid, "limit": 50}).json()["events"]
            segments = client.get("/api/v1/recordings", params={"session_id": sid}).json()["segments"]
            if not segments:
                return None
            first, newest = segments[0]["start_time"], max(s["end_time"] for s in segments)
            covered = [e for e in events if e["end_time"] and e["end_time"] + PADDING_S < newest]
            return next((e for e in covered if e["start_time"] - PADDING_S - KEYFRAME_S > first), None)

        event = wait_until(ended, timeout=60)
        assert event, "no event ended with its post-roll recorded"

        # the clip: the camera's codec and size, from the keyframe at or before start - pre to end + post
        answer = client.get(f"/api/v1/events/{event['id']}/clip.mp4")
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "video/mp4"
        codec, width, height, times = decoded(answer.content)
        assert (codec, width, height) == ("h264", 320, 240)
        clip_start = float(answer.headers["x-clip-start"])
        asked_start, asked_end = event["start_time"] - PADDING_S, event["end_time"] + PADDING_S
        assert asked_start - KEYFRAME_S - 0.2 <= clip_start <= asked_start + 0.1, (clip_start, asked_start)
        duration = times[-1] - times[0]
        assert asked_end - clip_start - 0.3 <= duration + 1 / 15 <= asked_end - asked_start + KEYFRAME_S + 0.3, (
            duration,
            asked_end - asked_start,
        )
        # `padding` asks for more around it
        wider = client.get(f"/api/v1/events/{event['id']}/clip.mp4", params={"padding": 0})
        assert wider.status_code == 200 and float(wider.headers["x-clip-start"]) >= clip_start

        # the segments of the session: what is kept, never where the files are
        segments = client.get("/api/v1/recordings", params={"camera": "gate"}).json()["segments"]
        assert segments and all("path" not in s for s in segments)
        assert {s["codec"] for s in segments} == {"h264"} and {s["mode"] for s in segments} == {"events"}

        # an export of the camera over the event's time
        export = client.get(
            "/api/v1/recordings/export.mp4", params={"camera": "gate", "after": asked_start, "before": asked_end}
        )
        assert export.status_code == 200, export.text
        assert decoded(export.content)[:3] == ("h264", 320, 240)
        # one place for clips (RECORD_CLIPS_MAX=1): each stream gave it back, or these would be 429
        assert [client.get(f"/api/v1/events/{event['id']}/clip.mp4").status_code for _ in range(3)] == [200] * 3


def test_bad_requests_for_recordings_are_refused_in_words(recording_service):
    now = time.time()
    with recording_service.client() as client:
        cases = [
            ("/api/v1/recordings/export.mp4", {"after": now - 60, "before": now}, 422, "exactly one of camera"),
            ("/api/v1/recordings/export.mp4", {"camera": "gate", "after": now, "before": now - 60}, 422, "later than"),
            ("/api/v1/recordings/export.mp4", {"camera": "gate", "after": now - 7200, "before": now}, 422,
             "RECORD_EXPORT_MAX_S"),
            ("/api/v1/recordings/export.mp4", {"camera": "gate", "after": now * 1000, "before": now * 1000 + 5}, 422,
             "milliseconds"),
            ("/api/v1/recordings/export.mp4", {"camera": "gate", "after": now + 60, "before": now + 120}, 422,
             "in the future"),
            ("/api/v1/recordings/export.mp4", {"camera": "nowhere", "after": now - 60, "before": now}, 404,
             "Nothing was recorded of camera 'nowhere'"),
            ("/api/v1/recordings", {"after": now, "before": now - 1}, 422, "later than"),
            ("/api/v1/recordings", {"limit": 0}, 422, "limit"),
            ("/api/v1/events/" + "0" * 32 + "/clip.mp4", {}, 404, "No event"),
            ("/api/v1/events/not-an-id/clip.mp4", {}, 404, "32 hex digits"),
            ("/api/v1/events/" + "0" * 32 + "/clip.mp4", {"padding": -1}, 422, "padding"),
        ]  # fmt: skip
        for path, params, status, words in cases:
            answer = client.get(path, params=params)
            assert answer.status_code == status and words in answer.json()["detail"], (path, params, answer.text)
