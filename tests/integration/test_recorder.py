"""The recorder against the real GStreamer camera's packets: segments that play, keyframe first,
the camera's own bytes; reconnects, a camera without keyframes, a slow or unwritable disk, crashes."""

from __future__ import annotations

import dataclasses
import os
import threading
import time

import pytest

from rtdetr_service.core.types import VideoPacket, VideoTemplate
from rtdetr_service.ingest.reader import StreamReader
from rtdetr_service.outputs.recordings.index import RecordingIndex
from rtdetr_service.outputs.recordings.recorder import Recorder, _SegmentFile
from rtdetr_service.outputs.recordings.recordings import Recordings
from rtdetr_service.outputs.recordings.settings import RecordingSettings
from rtdetr_service.outputs.store import migrate
from rtdetr_service.outputs.store.schema import Database

from support import nal_units, read_segment, running_camera, wait_until

FPS = 15  # the camera sends a keyframe every second (key-int-max = fps)


@dataclasses.dataclass
class Capture:
    template: VideoTemplate
    packets: list[VideoPacket]
    connects: int


@pytest.fixture(scope="module")
def camera_packets() -> Capture:
    """About four seconds of the real camera's packets, as the reader hands them on."""
    templates: list[VideoTemplate] = []
    packets: list[VideoPacket] = []
    with running_camera(fps=FPS) as camera:
        reader = StreamReader(
            camera.url,
            on_frame=lambda frame: None,
            on_state=lambda state, error: None,
            open_timeout=5,
            read_timeout=2,
            reconnect_min=0.2,
            reconnect_max=1,
            on_packet=packets.append,
            on_connect=templates.append,
        )
        reader.open()
        reader.start()
        wait_until(lambda: sum(p.is_keyframe for p in packets) >= 5, timeout=20)
        reader.stop(2.0)
    return Capture(templates[0], list(packets), len(templates))


@pytest.fixture
def index(tmp_path) -> RecordingIndex:
    db = Database(None, tmp_path, 5.0)
    migrate.upgrade(db)
    yield RecordingIndex(db, tmp_path)
    db.dispose()


def settings(**values) -> RecordingSettings:
    return RecordingSettings(**({"record_segment_s": 1.0, "record_segment_max_s": 3.0} | values))


def recorder(index: RecordingIndex, **values) -> Recorder:
    return Recorder(
        "3f1c0000-0000-4000-8000-000000000001",
        "Gate Cam/1",
        mode="continuous",
        settings=settings(**values),
        data_dir=index.data_dir,
        index=index,
    )


def feed(rec: Recorder, capture: Capture, packets=None, *, paced: bool = True) -> None:
    """Hand the recorder a connection and its packets; `paced`: never faster than it writes, as a
    live camera is (a burst of four seconds at once would fill its queue)."""
    rec.on_connect(capture.template)
    for packet in capture.packets if packets is None else packets:
        if paced:
            wait_until(lambda: rec.stats().queued < 8 or not rec.alive)
        rec.on_packet(packet)


def test_the_reader_hands_on_its_packets_and_the_connection_template(camera_packets):
    capture = camera_packets
    assert capture.connects == 1
    t = capture.template
    assert (t.codec, t.width, t.height) == ("h264", 320, 240) and t.extradata
    assert sum(p.is_keyframe for p in capture.packets) >= 5
    walls = [p.wall for p in capture.packets]
    assert walls == sorted(walls) and all(p.data for p in capture.packets)


def test_segments_are_keyframe_aligned_play_and_hold_the_cameras_own_bytes(camera_packets, index):
    # Given a recorder cutting every second, fed four seconds of the camera's packets
    rec = recorder(index)
    rec.start()
    feed(rec, camera_packets)
    assert rec.stop(5.0)
    segments = index.list()
    first_key = next(p for p in camera_packets.packets if p.is_keyframe)
    keyframes = [p for p in camera_packets.packets if p.is_keyframe]
    # Then one segment per keyframe interval, each a finished MP4 under the camera's day folder
    assert len(segments) == len(keyframes) and rec.stats().segments == len(segments)
    assert not list(index.data_dir.rglob("*.part"))
    decoded = 0
    for n, segment in enumerate(segments):
        path = index.file(segment)
        assert path.is_file() and path.stat().st_size == segment.bytes
        assert segment.path.startswith("recordings/Gate_Cam_1/") and path.name.startswith(segment.session_id)
        info, packets, pictures = read_segment(path)
        assert info == ("h264", 320, 240) and (segment.codec, segment.width, segment.height) == info
        assert packets[0][1], "a segment starts with a keyframe"
        assert packets[0][2] == 0, "timestamps rebased to start at 0"
        assert pictures == len(packets) > 0
        decoded += pictures
        # the camera's own bytes, not re-encoded: the keyframe that opened it, NAL unit by NAL unit
        assert nal_units(packets[0][0]) == nal_units(keyframes[n].data)
        assert segment.start_time == keyframes[n].wall
        if n + 1 < len(segments):
            assert segment.end_time == pytest.approx(segments[n + 1].start_time, abs=0.5)
    assert segments[0].start_time == first_key.wall
    # every packet from the first keyframe on is in a segment
    assert decoded == len(camera_packets.packets) - camera_packets.packets.index(first_key)
    assert rec.stats().dropped_packets == rec.stats().dropped_segments == 0


def test_a_segment_stream_copies_packets_without_opening_an_encoder(camera_packets, tmp_path):
    # Given the camera's packets muxed into a segment file
    first_key = next(p for p in camera_packets.packets if p.is_keyframe)
    segment = _SegmentFile(tmp_path, "recordings/c/s.mp4", camera_packets.template, first_key)
    try:
        for packet in camera_packets.packets[camera_packets.packets.index(first_key) :][:20]:
            segment.write(packet)
        # Then its stream's codec context was never opened: an opened one is an x264 encoder per
        # segment, whose buffers (tens of MB, freed each segment) grew the resident set for ever
        assert segment.packets == 20 and not segment._stream.codec_context.is_open
        assert segment.finish() > 0
    except BaseException:
        segment.abandon()
        raise


def test_a_reconnect_starts_a_new_segment(camera_packets, index):
    # Given the connection's packets, then the same camera again after a reconnect (timestamps anew)
    rec = recorder(index, record_segment_s=60, record_segment_max_s=120)
    rec.start()
    packets = camera_packets.packets
    feed(rec, camera_packets, packets[:30])
    feed(rec, camera_packets, packets[30:])
    assert rec.stop(5.0)
    segments = index.list()
    # Then two segments, each starting at its connection's first keyframe
    assert len(segments) == 2
    second_key = next(p for p in packets[30:] if p.is_keyframe)
    assert segments[1].start_time == second_key.wall
    for segment in segments:
        _, read, pictures = read_segment(index.file(segment))
        assert read[0][1] and pictures == len(read)


def test_a_camera_without_keyframes_still_gets_bounded_segments(camera_packets, index):
    # Given a stream whose keyframes after the first are lost (a camera with a 1-minute GOP)
    packets = camera_packets.packets
    first = next(i for i, p in enumerate(packets) if p.is_keyframe)
    stream = [packets[first]] + [dataclasses.replace(p, is_keyframe=False) for p in packets[first + 1 :]]
    rec = recorder(index, record_segment_s=1.0, record_segment_max_s=1.5)
    rec.start()
    feed(rec, camera_packets, stream)
    assert rec.stop(5.0)
    # Then the segment is closed at RECORD_SEGMENT_MAX_S and what follows waits for a keyframe
    (segment,) = index.list()
    assert 1.4 <= segment.end_time - segment.start_time <= 1.7
    _, read, pictures = read_segment(index.file(segment))
    assert pictures == len(read) and read[0][1]
    assert rec.stats().skipped_packets == len(stream) - len(read)


def test_a_full_queue_drops_up_to_the_next_keyframe_counted_without_blocking(camera_packets, index):
    # Given a recorder whose thread is not writing yet (a stuck disk) and a tiny queue
    rec = recorder(index, record_queue_s=0.5)  # 16 packets at least
    started = time.monotonic()
    feed(rec, camera_packets, paced=False)
    # Then the reader side never waited, and the overflow is counted as a dropped piece
    assert time.monotonic() - started < 1.0
    assert rec.stats().dropped_packets > 0
    rec.start()
    assert rec.stop(5.0)
    stats = rec.stats()
    assert stats.dropped_segments == 1
    # what was written plays; nothing after the gap but keyframe-started segments
    for segment in index.list():
        _, read, pictures = read_segment(index.file(segment))
        assert read[0][1] and pictures == len(read)


def test_an_unwritable_folder_costs_segments_said_in_words_and_writing_recovers(camera_packets, index):
    # Given the recordings folder replaced by a file
    (index.data_dir / "recordings").write_bytes(b"not a folder")
    rec = recorder(index)
    rec.start()
    packets = camera_packets.packets
    feed(rec, camera_packets, packets[:35])
    wait_until(lambda: rec.stats().queued == 0)
    stats = rec.stats()
    assert stats.failing and stats.segments == 0 and stats.dropped_segments >= 1
    assert stats.last_error.startswith("cannot create recordings/") and "Not a directory" in stats.last_error
    # When the folder is fixed, the next segments are written again
    (index.data_dir / "recordings").unlink()
    rec.on_connect(camera_packets.template)
    for packet in packets[35:]:
        rec.on_packet(packet)
    assert rec.stop(5.0)
    stats = rec.stats()
    assert not stats.failing and stats.last_error is None and stats.segments >= 1
    assert len(index.list()) == stats.segments


def test_part_files_left_by_a_crash_are_deleted_at_start_and_a_live_ones_are_kept(index):
    folder = index.data_dir / "recordings" / "gate" / "2026-01-01"
    folder.mkdir(parents=True)
    crashed, live = folder / "a-1.mp4.part", folder / "b-2.mp4.part"
    crashed.write_bytes(b"\x00" * 100)
    live.write_bytes(b"\x00" * 100)
    old = time.time() - 3600
    os.utime(crashed, (old, old))
    recordings = Recordings(settings(record_sweep_s=3600), index.data_dir, index.db)
    try:
        assert recordings.start() == 1
    finally:
        recordings.stop()
    assert not crashed.exists() and live.exists()


def test_stop_returns_within_its_timeout_whatever_is_queued(camera_packets, index):
    rec = recorder(index)
    rec.start()
    feed(rec, camera_packets, paced=False)
    done = threading.Event()
    threading.Thread(target=lambda: (rec.stop(0.5), done.set()), daemon=True).start()
    assert done.wait(3.0)
