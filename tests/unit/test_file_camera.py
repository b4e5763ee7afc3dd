"""Given a short clip read by the benchmark's FileCamera (the service's reader told to read files),
then it is paced at its frame rate, looped with its timeline running on, and each frame counts as
arrived when it was due, even when the reader runs behind its clock."""

from __future__ import annotations

import threading
import time

import av
import numpy as np
import pytest
from file_camera import FileCamera

FPS = 20
CLIP_FRAMES = 4


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(CLIP_FRAMES):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="bgr24")))
        out.mux(stream.encode())
    return str(path)


def _read(clip: str, count: int, on_each=lambda: None) -> tuple[list, list]:
    """The first `count` frames FileCamera hands on, and the states it reported meanwhile."""
    frames, states, done = [], [], threading.Event()

    def on_frame(frame):
        frames.append(frame)
        on_each()
        if len(frames) >= count:
            done.set()

    camera = FileCamera(
        clip,
        on_frame=on_frame,
        on_state=lambda state, error: states.append(state),
        open_timeout=5,
        read_timeout=5,
        reconnect_min=5,
        reconnect_max=5,
    )
    camera.open()
    camera.start()
    try:
        assert done.wait(10), f"{len(frames)} frames; states {states}"
    finally:
        assert camera.stop(1.0)
    return frames[:count], states


def test_a_looped_clip_keeps_its_timeline_across_loops(clip):
    # when three passes of the clip are read
    frames, states = _read(clip, 3 * CLIP_FRAMES)
    # then the frames come one interval apart, the loop points included, numbered on, never "reconnecting"
    gaps = np.diff([f.monotonic for f in frames])
    assert gaps == pytest.approx([1 / FPS] * len(gaps), abs=1e-6)
    assert [f.index for f in frames] == list(range(1, 3 * CLIP_FRAMES + 1))
    assert "reconnecting" not in states


def test_a_reader_behind_its_clock_stamps_frames_when_they_were_due(clip):
    # given a consumer that takes twice the frame interval over every frame
    started = time.monotonic()
    frames, _ = _read(clip, 2 * CLIP_FRAMES, on_each=lambda: time.sleep(2 / FPS))
    # then the frames still read as due on the clip's timeline, while they arrive ever later
    due = [f.monotonic for f in frames]
    assert np.diff(due) == pytest.approx([1 / FPS] * (len(due) - 1), abs=1e-6)
    assert time.monotonic() - started >= len(frames) * 2 / FPS
    # and the wall clock stamps agree with the monotonic ones
    offsets = [f.timestamp - f.monotonic for f in frames]
    assert max(offsets) - min(offsets) < 0.01
