"""Annotation draws in a stable per-class colour; the binary frame format round-trips."""

import json
import struct

import numpy as np

from rtdetr_service.core.types import Detection
from rtdetr_service.outputs.annotate import Annotator, class_colour
from rtdetr_service.outputs.messages import frame_binary


def test_colour_is_stable_and_distinct():
    assert class_colour(3) == class_colour(3)
    assert len({class_colour(i) for i in range(80)}) == 80


def test_annotate_draws_without_touching_the_input():
    image = np.zeros((120, 160, 3), np.uint8)
    out = Annotator().annotate(image, [Detection(0, "person", (20, 30, 80, 100), 0.9)])
    assert image.sum() == 0
    assert out.shape == image.shape
    edge = out[60, 20].astype(int)  # left edge of the box, anti-aliased
    assert np.abs(edge - np.array(class_colour(0))).max() < 40
    assert out[65, 50].sum() == 0  # inside the box stays untouched


def test_binary_layout():
    header = {"type": "frame_result", "frame_index": 3}
    data = frame_binary(header, b"\xff\xd8jpeg")
    (n,) = struct.unpack(">I", data[:4])
    assert json.loads(data[4 : 4 + n]) == header
    assert data[4 + n :] == b"\xff\xd8jpeg"
