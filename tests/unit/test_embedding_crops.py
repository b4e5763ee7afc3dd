"""What the embedding stage keeps of a live event: padded, clamped, shrunk RGB copies of the box, the
best view first, at most K others spread over the life."""

from __future__ import annotations

import numpy as np
import pytest

from rtdetr_service.outputs.embeddings.crops import Crop, EventCrops, cut


def frame(width: int = 400, height: int = 300) -> np.ndarray:
    """BGR: blue everywhere, a red square (BGR 0,0,255) at x 100..200, y 50..150."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:, :] = (255, 0, 0)
    image[50:150, 100:200] = (0, 0, 255)
    return image


def test_the_box_is_padded_by_a_tenth_on_each_side_and_turned_to_rgb():
    crop = cut(frame(), (100.0, 50.0, 200.0, 150.0), max_px=224)
    assert crop.shape == (120, 120, 3)
    assert tuple(crop[60, 60]) == (255, 0, 0)  # red in RGB order: the object
    assert tuple(crop[0, 0]) == (0, 0, 255)  # blue padding: its surroundings


def test_padding_is_clamped_at_the_frames_edges():
    crop = cut(frame(), (0.0, 0.0, 50.0, 100.0), max_px=224)
    assert crop.shape == (110, 55, 3)  # only the right and bottom pads fit
    crop = cut(frame(), (390.0, 280.0, 400.0, 300.0), max_px=224)
    assert crop.shape == (22, 11, 3)


def test_a_box_outside_the_frame_gives_nothing():
    assert cut(frame(), (500.0, 10.0, 600.0, 20.0), max_px=224) is None
    assert cut(frame(), (10.0, 10.0, 10.0, 10.0), max_px=224) is None


def test_a_large_box_is_shrunk_to_the_longest_side_keeping_its_shape():
    crop = cut(frame(1920, 1080), (0.0, 0.0, 1920.0, 960.0), max_px=224)
    assert crop.shape == (123, 224, 3)  # 1920 x 1056 once padded (and clamped at the sides)


def test_the_crop_is_a_copy_not_a_view_of_the_frame():
    image = frame()
    crop = cut(image, (100.0, 50.0, 200.0, 150.0), max_px=224)
    assert crop.base is None or not np.shares_memory(crop, image)
    image[:] = 0
    assert crop.any()


def view(t: float, value: int = 0) -> Crop:
    return Crop(np.full((4, 4, 3), value, np.uint8), t, 0.5)


def test_the_best_view_comes_first_and_a_beaten_best_stays_as_another_look():
    crops = EventCrops(k=2)
    crops.offer_best(view(0.0, 1))
    crops.offer_best(view(3.0, 2))
    assert [int(c[0, 0, 0]) for c in crops.crops()] == [2, 1]


def test_a_beaten_best_can_be_let_go_and_nbytes_counts_what_is_held():
    crops = EventCrops(k=2)
    crops.offer_best(view(0.0, 1))
    one = crops.nbytes
    assert one == crops.best.image.nbytes > 0
    crops.offer_best(view(3.0, 2), keep_beaten=False)
    assert [int(c[0, 0, 0]) for c in crops.crops()] == [2] and crops.nbytes == one


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_at_most_k_others_are_kept_however_long_the_life(k):
    crops = EventCrops(k=k)
    crops.offer_best(view(0.0))
    t = 0.0
    while t < 600:
        if crops.due(t):
            crops.offer(view(t))
        t += 0.1
    assert len(crops.others) <= k
    assert len(crops) == len(crops.others) + 1


def test_the_others_stay_spread_over_a_long_life():
    crops = EventCrops(k=4)
    for step in range(3000):  # ten minutes at 5 frames a second
        t = step * 0.2
        if crops.due(t):
            crops.offer(view(t))
    times = [c.t for c in crops.others]
    assert times[0] < 60 and times[-1] > 200  # not all from its first seconds
    assert len(times) >= 3


def test_k_zero_keeps_only_the_best_view():
    crops = EventCrops(k=0)
    crops.offer_best(view(0.0, 1))
    crops.offer_best(view(1.0, 2))
    assert not crops.due(5.0)
    crops.offer(view(5.0, 3))
    assert [int(c[0, 0, 0]) for c in crops.crops()] == [2]
