"""The per-session tracker: ids that follow objects across frames, gaps and crossings, by frame timestamps."""

import pytest

from rtdetr_service.analytics.tracking import Tracker, TrackerOptions
from rtdetr_service.core.types import Detection

FPS = 30.0


def box(x: float, y: float, *, size: float = 100.0, confidence: float = 0.9, name: str = "car") -> Detection:
    return Detection(
        class_id=0 if name == "person" else 2, class_name=name, bbox=(x, y, x + size, y + size), confidence=confidence
    )


def tracker(activation_threshold: float = 0.5, **options) -> Tracker:
    return Tracker(TrackerOptions(**options), activation_threshold=activation_threshold)


def test_a_moving_box_keeps_its_id():
    # given a car moving 10 px a frame at 30 fps
    t = tracker()
    # when it is tracked for a second
    ids = [t.update([box(10.0 * i, 100.0)], i / FPS)[0].track_id for i in range(30)]
    # then it is unconfirmed on its first frame and #1 on every frame after
    assert ids == [None] + [1] * 29


def test_two_objects_crossing_paths_keep_their_ids():
    # given a person walking right and a car driving left, 15 px a frame, 50 px apart vertically, so their
    # 100 px boxes overlap by a third (IoU up to 0.33) when they pass each other around frame 20
    t = tracker()
    seen: dict[str, set[int | None]] = {"person": set(), "car": set()}
    for i in range(41):
        # when each frame lists the car first: the output must follow the input order, not the library's
        out = t.update([box(600.0 - 15 * i, 150.0, name="car"), box(15.0 * i, 100.0, name="person")], i / FPS)
        # then every detection comes back, in order, with its own class
        assert [d.class_name for d in out] == ["car", "person"]
        if i > 0:
            for d in out:
                seen[d.class_name].add(d.track_id)
    # and each object had one id through the crossing, not each other's
    assert len(seen["person"]) == 1 and len(seen["car"]) == 1
    assert seen["person"] != seen["car"] and None not in seen["person"] | seen["car"]


def test_a_track_lost_briefly_comes_back_with_its_id():
    # given a car tracked for 10 frames with keep_s = 1 s
    t = tracker(keep_s=1.0)
    for i in range(10):
        first = t.update([box(10.0 * i, 100.0)], i / FPS)[0].track_id
    # when it is missed for 6 frames (0.2 s) and then seen again where it has driven to
    for i in range(10, 16):
        assert t.update([], i / FPS) == []
    again = t.update([box(10.0 * 16, 100.0)], 16 / FPS)[0].track_id
    # then it is the same object
    assert first == again == 1


def test_a_track_lost_longer_than_keep_s_gets_a_new_id():
    # given a parked car tracked for 10 frames with keep_s = 0.5 s
    t = tracker(keep_s=0.5)
    for i in range(10):
        t.update([box(100.0, 100.0)], i / FPS)
    # when nothing is seen for a second (empty frames still move time on) and it then shows up in the same place
    for i in range(10, 40):
        t.update([], i / FPS)
    ids = [t.update([box(100.0, 100.0)], i / FPS)[0].track_id for i in (40, 41)]
    # then it starts again as a new object: unconfirmed, then #2
    assert ids == [None, 2]


def test_dropped_frames_keep_the_id_because_time_is_taken_from_timestamps():
    # given a car moving 300 px/s, seen at 0 and 0.033 s, then again only at 0.4 and 0.433 s (frames dropped):
    # between 0.033 and 0.4 s its 100 px box moves 110 px, so an unmoved prediction would not overlap it at all
    times = (0.0, 0.033, 0.4, 0.433)
    t = tracker()
    # when each frame is tracked at its timestamp
    ids = [t.update([box(300.0 * ts, 100.0)], ts)[0].track_id for ts in times]
    # then the id survives the gap
    assert ids == [None, 1, 1, 1]
    # and (showing the gap matters) had the same frames been one nominal frame apart, the track would break
    fixed = tracker()
    ids = [fixed.update([box(300.0 * ts, 100.0)], i / FPS)[0].track_id for i, ts in enumerate(times)]
    assert ids[-1] != 1


@pytest.mark.parametrize("min_hits", [2, 3, 5])
def test_an_id_is_issued_only_after_min_hits_frames(min_hits):
    # given a tracker that wants min_hits matched frames
    t = tracker(min_hits=min_hits)
    # when a box is seen on consecutive frames
    ids = [t.update([box(5.0 * i, 100.0)], i / FPS)[0].track_id for i in range(min_hits + 2)]
    # then it has no id until its min_hits-th frame, and #1 from then on
    assert ids == [None] * (min_hits - 1) + [1] * 3


@pytest.mark.parametrize(("threshold", "confidence"), [(0.5, 0.51), (0.3, 0.3), (0.7, 0.7)])
def test_a_detection_just_over_the_session_threshold_is_tracked(threshold, confidence):
    # given a session threshold below the library's default activation threshold of 0.7 (or exactly at it,
    # where float32 rounding would put 0.7 under 0.7)
    t = tracker(activation_threshold=threshold)
    # when a detection at that confidence is seen on two frames
    ids = [t.update([box(100.0, 100.0, confidence=confidence)], i / FPS)[0].track_id for i in range(2)]
    # then it becomes a track
    assert ids == [None, 1]


def test_ids_stay_unique_after_reset_and_survive_a_clock_stepping_back():
    # given a car tracked as #1
    t = tracker()
    for i in range(3):
        t.update([box(100.0, 100.0)], 1000.0 + i / FPS)
    # when the wall clock steps back an hour (NTP), the car keeps moving
    stepped = [t.update([box(100.0 + 5 * i, 100.0)], 1000.0 - 3600 + i / FPS)[0].track_id for i in range(3)]
    # then it is still #1 (the step counts as one frame, not as a reason to stop tracking)
    assert stepped == [1, 1, 1]
    # and after a reset the next object is #2, not a second #1
    t.reset()
    ids = [t.update([box(500.0, 500.0)], 2000.0 + i / FPS)[0].track_id for i in range(2)]
    assert ids == [None, 2]


def test_the_id_goes_to_the_box_it_belongs_to():
    # given a car tracked as #1
    t = tracker()
    for i in range(3):
        t.update([box(100.0, 100.0)], i / FPS)
    # when a person appears far away, listed before the car
    out = t.update([box(700.0, 700.0, name="person"), box(100.0, 100.0)], 3 / FPS)
    # then the car keeps #1 and the newcomer has none yet
    assert [(d.class_name, d.track_id) for d in out] == [("person", None), ("car", 1)]


def test_an_empty_frame_returns_nothing_and_unmatched_boxes_are_kept():
    # given a tracker
    t = tracker()
    # when frames carry no detections, then some far apart
    assert t.update([], 0.0) == []
    out = t.update([box(0.0, 0.0), box(500.0, 500.0, name="person")], 0.1)
    # then every detection comes back unchanged but for its (still empty) track id
    assert [(d.class_name, d.bbox, d.confidence, d.track_id) for d in out] == [
        ("car", (0.0, 0.0, 100.0, 100.0), 0.9, None),
        ("person", (500.0, 500.0, 600.0, 600.0), 0.9, None),
    ]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"min_hits": 1}, "min_hits"),
        ({"min_hits": 31}, "min_hits"),
        ({"min_hits": 2.5}, "min_hits"),
        ({"keep_s": -0.1}, "keep_s"),
        ({"keep_s": 61.0}, "keep_s"),
        ({"iou_threshold": 0.0}, "iou_threshold"),
        ({"iou_threshold": 1.0}, "iou_threshold"),
    ],
)
def test_bad_options_are_refused_by_name(options, field):
    # given / when options out of bounds / then construction fails naming the field
    with pytest.raises(ValueError, match=field):
        TrackerOptions(**options)
