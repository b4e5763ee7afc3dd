"""Given an H.264 stream with a few damaged packets (bit errors, as a flaky camera link delivers),
when the real reader decodes it, then it skips what cannot be decoded and keeps the connection:
no reconnect, every other frame delivered, the damage counted."""

from __future__ import annotations

import threading

import av
import numpy as np
from file_camera import FileCamera

FRAMES = 150


def _damaged_clip(path) -> None:
    with av.open(str(path), "w", format="h264") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.options = {"g": "30", "tune": "zerolatency"}
        for i in range(FRAMES):
            image = np.random.default_rng(i).integers(0, 255, (240, 320, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    data = bytearray(path.read_bytes())
    starts = [i for i in range(len(data) - 3) if data[i : i + 3] == b"\x00\x00\x01"]
    for start in starts[len(starts) // 2 : len(starts) // 2 + 6]:
        for k in range(4, 12):  # scramble the slice headers of a few NAL units mid-stream
            data[start + k] ^= 0x5A
    path.write_bytes(bytes(data))


def test_damaged_packets_are_skipped_without_reconnecting(tmp_path):
    clip = tmp_path / "damaged.h264"
    _damaged_clip(clip)
    frames: list[int] = []
    states: list[tuple[str, str | None]] = []
    one_pass = threading.Event()

    def on_frame(frame):
        frames.append(frame.index)
        if len(frames) >= FRAMES - 10:
            one_pass.set()

    reader = FileCamera(
        str(clip),
        on_frame=on_frame,
        on_state=lambda state, error: states.append((state, error)),
        open_timeout=5,
        read_timeout=5,
        reconnect_min=5,
        reconnect_max=5,
        paced=False,  # looped as fast as it decodes: the end of the file starts it again, not a lost stream
    )
    reader.open()
    reader.start()
    try:
        assert one_pass.wait(60), f"only {len(frames)} frames decoded; states {states}"
    finally:
        reader.stop(2.0)
    assert reader.decode_errors >= 1
    assert not [s for s in states if s[0] == "reconnecting"], states
