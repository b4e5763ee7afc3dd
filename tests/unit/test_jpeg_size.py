"""A search picture's size is read from its JPEG frame header before anything decodes it (so a small
file claiming gigapixels is refused unread): the reader against JPEGs OpenCV writes (baseline,
progressive, with metadata segments before the frame header) and against what is not a JPEG."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from rtdetr_service.web.routes.search import jpeg_size


@pytest.mark.parametrize("progressive", [0, 1])
@pytest.mark.parametrize(("width", "height"), [(1, 1), (17, 9), (640, 480), (300, 4000)])
def test_the_size_in_the_header_is_the_decoded_size(width, height, progressive):
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, progressive])
    assert ok
    assert jpeg_size(data.tobytes()) == (width, height)


def test_segments_before_the_frame_header_are_skipped():
    ok, data = cv2.imencode(".jpg", np.zeros((30, 40, 3), np.uint8))
    data = data.tobytes()
    comment = b"\xff\xfe" + (2 + 300).to_bytes(2, "big") + b"x" * 300  # a COM segment, and an APP1 after it
    app1 = b"\xff\xe1" + (2 + 10).to_bytes(2, "big") + b"Exif\x00\x00" + b"\x00" * 4
    assert jpeg_size(data[:2] + comment + app1 + data[2:]) == (40, 30)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xd8",
        b"GIF89a" + b"\x00" * 20,
        cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes(),
        b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 8,  # a header and then nothing
        b"\xff\xd8\xff\xda\x00\x08" + b"\x00" * 8,  # a scan before any frame header
        b"\xff\xd8\xff\xc0\x00\x11\x08\x00\x00\x00\x00" + b"\x00" * 12,  # a frame of 0x0
        b"\xff\xd8\xff\xe0\x00\x01",  # a segment length that cannot be
    ],
)
def test_what_is_not_a_jpeg_with_a_size_gives_none(data):
    assert jpeg_size(data) is None
