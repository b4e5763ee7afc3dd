"""Clips cut from recorded segments: the camera's own packets, from the keyframe before the start to
the end, one fragmented MP4 that plays across segments and reconnects, streamed as it is muxed.

The segments are real MP4 files: a moving pattern encoded once with libx264 / libx265 (160x120,
15 fps, a keyframe every second), cut at keyframes by a copying remux (tests/segment_files.py)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import av
import pytest

from rtdetr_service.outputs.recordings.clips import FRAGMENT_S, NothingRecorded, SegmentFile, clip_chunks

from segment_files import T0, Encoded, clip_packets, decoded_frames, encode_pattern, write_segments

FPS, KEYINT = 15, 15
KEYFRAME_S = KEYINT / FPS
FRAME_S = 1 / FPS
CODECS = {"libx264": "h264", "libx265": "hevc"}


@pytest.fixture(scope="module", params=sorted(CODECS))
def encoded(request) -> Encoded:
    return encode_pattern(request.param, width=160, height=120, fps=FPS, seconds=12.0, keyint=KEYINT)


@pytest.fixture(scope="module")
def h264() -> Encoded:
    return encode_pattern("libx264", fps=FPS, seconds=12.0, keyint=KEYINT)


def source_index(encoded: Encoded, payload: bytes) -> int:
    return encoded.payloads.index(payload)


def test_a_clip_is_the_cameras_packets_from_the_keyframe_before_its_start(encoded, tmp_path):
    # given three 4-s segments of one connection
    segments = write_segments(encoded, tmp_path)
    start, end = T0 + 5.5, T0 + 10.2  # starts between keyframes, ends in the third segment

    # when the range is clipped
    clip = clip_chunks(segments, start, end)
    data = b"".join(clip)

    # then the clip has the source's codec and size and decodes to its last frame
    payloads, times, info = clip_packets(data)
    assert info == (CODECS[encoded.encoder], 160, 120)
    if info[0] == "hevc":  # tagged as Safari plays it (parameter sets in the sample description)
        assert codec_tag(data) == "hvc1"
    assert len(decoded_frames(data)) == len(payloads)
    # its packets are the source's, byte for byte, in order, from the keyframe at or before the start
    first = source_index(encoded, payloads[0])
    assert first in encoded.keyframes
    assert list(encoded.payloads[first : first + len(payloads)]) == payloads
    assert T0 + first * FRAME_S <= start < T0 + first * FRAME_S + KEYFRAME_S
    assert clip.start_time == pytest.approx(T0 + first * FRAME_S)
    # and it lasts the asked range, give or take one keyframe interval
    duration = max(times) + FRAME_S - min(times)
    assert abs(duration - (end - start)) <= KEYFRAME_S + FRAME_S


def test_a_clip_plays_across_segments_and_a_reconnect_gap(encoded, tmp_path):
    # given segments where the camera was away 3 s before the third (its packets start at 0 again)
    segments = write_segments(encoded, tmp_path, gaps=[(2, 3.0)])
    assert segments[2].start_time - segments[1].end_time > 3.0

    # when a range over all three is clipped
    clip = clip_chunks(segments, T0 + 2.5, T0 + 14.0)
    data = b"".join(clip)

    # then every packet of the range is there, decodes, and the gap stays a gap in time
    payloads, times, _ = clip_packets(data)
    first = source_index(encoded, payloads[0])
    assert list(encoded.payloads[first : first + len(payloads)]) == payloads
    frames = decoded_frames(data)
    assert len(frames) == len(payloads)
    steps = [round(b - a, 3) for a, b in zip(times, times[1:], strict=False)]
    assert max(steps) == pytest.approx(3.0 + FRAME_S, abs=0.01)
    # clip time + start_time is each frame's wall time, before and after the gap
    walls = [clip.start_time + float(f.time) for f in frames]
    assert walls[0] == pytest.approx(T0 + first * FRAME_S, abs=1e-3)
    after_gap = next(i for i, s in enumerate(steps) if s > 1) + 1
    assert walls[after_gap] == pytest.approx(segments[2].start_time, abs=1e-3)


def test_the_first_bytes_come_before_the_later_segments_are_read(h264, tmp_path):
    # given three segments and a clip of all of them, in small chunks
    segments = write_segments(h264, tmp_path)
    clip = clip_chunks(segments, T0, T0 + 12.0, chunk_bytes=1024)

    # when the first chunk is taken, and the last segment then disappears (as retention might)
    head = next(clip)
    segments[-1].path.unlink()
    data = head + b"".join(clip)

    # then the MP4 began before the last segment was opened: the clip plays, without its packets
    assert head[4:8] == b"ftyp"
    assert len(head) < len(data)
    payloads, _, _ = clip_packets(data)
    assert len(decoded_frames(data)) == len(payloads)
    assert payloads[-1] == h264.payloads[int(round((segments[1].end_time - T0) * FPS))]


def test_a_clip_given_up_halfway_closes_its_segments(h264, tmp_path):
    segments = write_segments(h264, tmp_path)
    clip = clip_chunks(segments, T0, T0 + 12.0, chunk_bytes=1024)
    next(clip)
    assert open_files(tmp_path)

    clip.close()

    assert not open_files(tmp_path)


def test_a_clip_never_read_closes_its_segment_when_closed(h264, tmp_path):
    segments = write_segments(h264, tmp_path)
    clip = clip_chunks(segments, T0 + 1, T0 + 2)
    clip.close()
    assert not open_files(tmp_path)


def codec_tag(data: bytes) -> str:
    with av.open(io.BytesIO(data)) as src:
        return src.streams.video[0].codec_context.codec_tag


def open_files(folder: Path) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(folder)):
            found.append(target)
    return found


@pytest.mark.parametrize(
    "start, end",
    [(T0 - 60, T0 - 1), (T0 + 8.5, T0 + 10.5), (T0 + 30, T0 + 40)],
    ids=["before-everything", "inside-the-gap", "after-everything"],
)
def test_nothing_recorded_is_said_at_once_and_in_words(h264, tmp_path, start, end):
    segments = write_segments(h264, tmp_path, gaps=[(2, 3.0)])  # nothing from T0 + 8 to T0 + 11
    with pytest.raises(NothingRecorded, match="nothing was recorded between"):
        clip_chunks(segments, start, end)  # raised by the call, before any byte could be sent
    with pytest.raises(NothingRecorded):
        clip_chunks([], T0, T0 + 10)


def test_a_missing_segment_is_a_gap_not_a_failure(h264, tmp_path):
    segments = write_segments(h264, tmp_path)
    segments[1].path.unlink()

    data = b"".join(clip_chunks(segments, T0, T0 + 12.0))

    payloads, times, _ = clip_packets(data)
    assert (
        len(decoded_frames(data))
        == len(payloads)
        == len(h264.payloads) - (round((segments[1].end_time - segments[1].start_time) * FPS) + 1)
    )
    assert max(b - a for a, b in zip(times, times[1:], strict=False)) == pytest.approx(4.0 + FRAME_S, abs=0.01)


def test_a_damaged_segment_is_a_gap_not_a_failure(h264, tmp_path):
    segments = write_segments(h264, tmp_path)
    segments[1].path.write_bytes(os.urandom(4096))

    data = b"".join(clip_chunks(segments, T0, T0 + 12.0))

    payloads, _, _ = clip_packets(data)
    assert len(decoded_frames(data)) == len(payloads) < len(h264.payloads)
    assert payloads[-1] == h264.payloads[-1]


def test_a_reversed_range_is_a_mistake_of_the_caller(h264, tmp_path):
    segments = write_segments(h264, tmp_path)
    with pytest.raises(ValueError, match="start before end"):
        clip_chunks(segments, T0 + 5, T0 + 4)


def test_a_change_of_size_ends_the_clip_there(h264, tmp_path):
    # given 160x120 segments, then (after a camera reconfiguration) 320x240 ones
    small = write_segments(h264, tmp_path / "small")[:2]
    large = write_segments(encode_pattern(width=320, height=240, seconds=8.0), tmp_path / "large", t0=T0 + 8.5)

    data = b"".join(clip_chunks([*small, *large], T0, T0 + 16.0))

    # then the clip holds the 160x120 part only, and plays
    payloads, _, info = clip_packets(data)
    assert info[1:] == (160, 120)
    assert payloads == list(h264.payloads[: len(payloads)])
    assert len(payloads) == round((small[1].end_time - T0) * FPS) + 1
    assert len(decoded_frames(data)) == len(payloads)


def test_b_frames_keep_each_frame_at_its_wall_time(tmp_path):
    # given a camera that sends B-frames (decode order differs from display order)
    encoded = encode_pattern("libx264", fps=FPS, seconds=8.0, keyint=KEYINT, bframes=2)
    segments = write_segments(encoded, tmp_path)

    clip = clip_chunks(segments, T0 + 1.5, T0 + 7.0)
    data = b"".join(clip)

    # then the packets are the source's, all decode, and the first frame shows at its wall time
    payloads, _, _ = clip_packets(data)
    first = source_index(encoded, payloads[0])
    assert list(encoded.payloads[first : first + len(payloads)]) == payloads
    frames = decoded_frames(data)
    assert len(frames) == len(payloads)
    assert clip.start_time + float(frames[0].time) == pytest.approx(T0 + first * FRAME_S, abs=1e-3)


def test_segments_out_of_order_or_outside_the_range_are_sorted_and_left_out(h264, tmp_path):
    segments = write_segments(h264, tmp_path)
    stray = SegmentFile(tmp_path / "nowhere.mp4", T0 + 100, T0 + 104)  # outside: never opened

    data = b"".join(clip_chunks([stray, segments[2], segments[0], segments[1]], T0, T0 + 12.0))

    payloads, _, _ = clip_packets(data)
    assert payloads == list(h264.payloads)


def test_segment_stamps_that_overlap_never_send_time_backwards(h264, tmp_path):
    # given a second segment stamped 0.3 s before the first one's last packet (the reader's clock jitter)
    segments = write_segments(h264, tmp_path, gaps=[(1, -0.3)])
    assert segments[1].start_time < segments[0].end_time

    data = b"".join(clip_chunks(segments, T0, T0 + 12.0))

    # then it follows one frame after the first, every packet there and decoded
    payloads, times, _ = clip_packets(data)
    assert payloads == list(h264.payloads)
    assert len(decoded_frames(data)) == len(payloads)
    assert [round(b - a, 4) for a, b in zip(times, times[1:], strict=False)] == [round(FRAME_S, 4)] * (len(times) - 1)


def test_a_camera_without_keyframes_still_comes_in_short_fragments(tmp_path):
    # given 9 s of video with a single keyframe (a camera with a very long keyframe interval)
    encoded = encode_pattern("libx264", fps=FPS, seconds=9.0, keyint=200)
    segments = write_segments(encoded, tmp_path, segment_s=20.0)
    assert len(encoded.keyframes) == 1

    # when it is clipped, a chunk handed out as soon as the muxer writes anything
    chunks = list(clip_chunks(segments, T0, T0 + 9.0, chunk_bytes=1))

    # then the muxer wrote a fragment every FRAGMENT_S at the latest: it never held the whole clip
    data = b"".join(chunks)
    assert data.count(b"moof") >= int(9.0 / FRAGMENT_S)
    assert max(len(c) for c in chunks) < len(data) / 3
    assert len(decoded_frames(data)) == len(encoded.payloads)
