"""H.265 cameras are recorded as they send it: the GStreamer camera encoding with x265enc (Debian's
gstreamer1.0-plugins-bad), the real reader and recorder, then the real service. Segments hold the
camera's own packets (a keyframe's NAL units byte for byte, as for H.264 in test_recorder.py), and an
event's clip plays as HEVC."""

from __future__ import annotations

import io
import subprocess

import av
import pytest

from rtdetr_service.core.types import VideoPacket, VideoTemplate
from rtdetr_service.ingest.reader import StreamReader
from rtdetr_service.outputs.recordings.index import RecordingIndex
from rtdetr_service.outputs.recordings.recorder import Recorder
from rtdetr_service.outputs.recordings.settings import RecordingSettings
from rtdetr_service.outputs.store import migrate
from rtdetr_service.outputs.store.schema import Database

from scripted_detector import WalkingPeople
from support import (
    SYSTEM_PYTHON,
    make_settings,
    nal_units,
    read_segment,
    run_service,
    running_camera,
    start_session,
    wait_until,
)


def _gst_has(element: str) -> bool:
    probe = (
        "import gi; gi.require_version('Gst', '1.0'); from gi.repository import Gst; Gst.init(None); "
        f"raise SystemExit(0 if Gst.ElementFactory.find({element!r}) else 1)"
    )
    return subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, timeout=30).returncode == 0


pytestmark = pytest.mark.skipif(
    not _gst_has("x265enc"), reason="GStreamer's x265enc is not installed (gstreamer1.0-plugins-bad)"
)


def test_an_h265_camera_is_recorded_in_segments_of_its_own_packets(tmp_path):
    # Given the H.265 camera's packets, as the reader hands them on, fed to a recorder cutting every second
    db = Database(None, tmp_path, 5.0)
    migrate.upgrade(db)
    index = RecordingIndex(db, tmp_path)
    settings = RecordingSettings(record_segment_s=1.0, record_segment_max_s=3.0)
    rec = Recorder(
        "3f1c0000-0000-4000-8000-000000000002",
        "hevc-cam",
        mode="continuous",
        settings=settings,
        data_dir=tmp_path,
        index=index,
    )
    templates: list[VideoTemplate] = []
    packets: list[VideoPacket] = []

    def on_connect(template: VideoTemplate) -> None:
        templates.append(template)
        rec.on_connect(template)

    def on_packet(packet: VideoPacket) -> None:
        packets.append(packet)
        rec.on_packet(packet)

    rec.start()
    try:
        with running_camera(codec="h265") as camera:
            reader = StreamReader(
                camera.url,
                on_frame=lambda frame: None,
                on_state=lambda state, error: None,
                open_timeout=5,
                read_timeout=2,
                reconnect_min=0.2,
                reconnect_max=1,
                on_packet=on_packet,
                on_connect=on_connect,
            )
            reader.open()
            reader.start()
            assert wait_until(lambda: sum(p.is_keyframe for p in packets) >= 4, timeout=20)
            reader.stop(2.0)
    finally:
        assert rec.stop(5.0)
    try:
        # Then the segments are HEVC, start at a keyframe, decode whole, and hold the camera's bytes
        assert (templates[0].codec, templates[0].width, templates[0].height) == ("hevc", 320, 240)
        keyframes = [p for p in packets if p.is_keyframe]
        segments = index.list()
        assert len(segments) >= 3
        for segment in segments:
            info, read, pictures = read_segment(index.file(segment))
            assert info == ("hevc", 320, 240) and segment.codec == "hevc"
            assert read[0][1], "a segment starts with a keyframe"
            assert pictures == len(read) > 0
            opening = next(k for k in keyframes if k.wall == segment.start_time)
            assert nal_units(read[0][0]) == nal_units(opening.data)
    finally:
        db.dispose()


def test_an_h265_sessions_event_clip_plays_as_hevc(tiny_model_dir, tmp_path):
    settings = make_settings(tiny_model_dir, data_dir=tmp_path / "data", record_segment_s=1.0, record_segment_max_s=3.0)
    service = run_service(settings, detector_factory=lambda _settings: WalkingPeople())
    try:
        with running_camera(codec="h265") as camera, service.client() as client:
            # Given a session on an H.265 camera that records around events
            sid = start_session(client, camera.url, camera="gate", record="events")["session_id"]
            status = client.get(f"/api/v1/video/status/{sid}").json()
            assert status["stream"]["codec"] == "hevc", status

            # When one of its events has a clip
            def clipped():
                events = client.get("/api/v1/events", params={"session_id": sid}).json()["events"]
                return next((e for e in events if not e["active"] and e["has_clip"]), None)

            event = wait_until(clipped, timeout=30)
            assert event, "no ended event with a clip"
            answer = client.get(event["clip_url"])
            assert answer.status_code == 200, answer.text

            # Then it plays: HEVC at the camera's size, every packet decoding
            with av.open(io.BytesIO(answer.content)) as container:
                stream = container.streams.video[0]
                assert (stream.codec_context.name, stream.codec_context.width, stream.codec_context.height) == (
                    "hevc",
                    320,
                    240,
                )
                frames = list(container.decode(stream))
            assert len(frames) >= 15  # a second or more of the 15 fps camera
            segments = client.get("/api/v1/recordings", params={"session_id": sid}).json()["segments"]
            assert segments and {s["codec"] for s in segments} == {"hevc"}
    finally:
        service.stop()
