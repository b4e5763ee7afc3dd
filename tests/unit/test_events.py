"""The event lifecycle: new → update → end, bounded snapshots and heartbeats, time from the frames."""

from __future__ import annotations

import numpy as np
import pytest

from rtdetr_service.analytics.events import EventLifecycle
from rtdetr_service.core.types import Detection, Frame

T0 = 1_700_000_000.0


def frame(t: float, index: int = 0, size: tuple[int, int] = (64, 48)) -> Frame:
    width, height = size
    return Frame(np.zeros((height, width, 3), np.uint8), index, T0 + t, t)


def person(track: int | None, confidence: float = 0.6, x: float = 10.0) -> Detection:
    return Detection(0, "person", (x, 5.0, x + 10.0, 30.0), confidence, track)


def lifecycle(**kwargs) -> EventLifecycle:
    kwargs.setdefault("end_after_s", 5.0)
    kwargs.setdefault("snapshot_interval_s", 1.0)
    kwargs.setdefault("update_interval_s", 5.0)
    return EventLifecycle("session-1", "gate", **kwargs)


def test_a_new_track_starts_an_event_with_its_first_snapshot():
    events = lifecycle()
    f = frame(0.0, size=(64, 48))
    det = person(7, 0.61)

    changes = events.update(f, [det, person(None, 0.9)])

    assert [c.kind for c in changes] == ["new"]
    new = changes[0]
    assert new.before is None
    record = new.event
    assert (record.session_id, record.camera, record.track_id, record.label, record.class_id) == (
        "session-1",
        "gate",
        7,
        "person",
        0,
    )
    assert record.start_time == record.last_seen == record.best_time == T0
    assert record.end_time is None and record.best_confidence == 0.61 and record.best_bbox == det.bbox
    assert (record.frame_width, record.frame_height) == (64, 48)
    assert record.has_snapshot
    assert new.snapshot.event_id == record.id and new.snapshot.frame is f and new.snapshot.detection == det
    assert events.open_count == 1


def test_same_track_is_one_event_and_quiet_frames_emit_nothing():
    events = lifecycle()
    first = events.update(frame(0.0), [person(1)])[0].event

    for i in range(1, 20):
        assert events.update(frame(i * 0.1, i), [person(1, 0.6)]) == []

    assert events.open_count == 1
    beat = events.update(frame(5.0), [person(1, 0.6)])
    assert [c.kind for c in beat] == ["update"]
    assert beat[0].event.id == first.id and beat[0].event.last_seen == T0 + 5.0
    assert beat[0].snapshot is None


def test_confidence_gain_gives_at_most_one_snapshot_per_interval():
    events = lifecycle(min_confidence_gain=0.02)
    new = events.update(frame(0.0), [person(1, 0.50)])[0]

    # Better within the interval: recorded as best, snapshot kept waiting.
    assert events.update(frame(0.3), [person(1, 0.60, x=11)]) == []
    # Below the minimum gain over the best: not a better view at all.
    assert events.update(frame(0.5), [person(1, 0.61, x=12)]) == []
    # An even better one replaces the waiting view.
    assert events.update(frame(0.7), [person(1, 0.70, x=13)]) == []

    due = events.update(frame(1.0), [person(1, 0.40, x=14)])
    assert [c.kind for c in due] == ["update"]
    update = due[0]
    assert update.snapshot is not None and update.snapshot.detection.bbox[0] == 13
    assert update.snapshot.frame.timestamp == T0 + 0.7
    assert update.event.best_confidence == 0.70 and update.event.best_time == T0 + 0.7
    assert update.before.best_confidence == 0.70  # already recorded when seen; the snapshot was what waited
    assert update.before.id == new.event.id

    # The next better view right after a snapshot waits a full interval again.
    assert events.update(frame(1.2), [person(1, 0.80)]) == []
    assert events.update(frame(1.9), [person(1, 0.50)]) == []
    later = events.update(frame(2.0), [person(1, 0.50)])
    assert len(later) == 1 and later[0].snapshot.detection.confidence == 0.80


def test_entering_a_zone_or_firing_a_rule_updates_at_once_without_an_early_snapshot():
    events = lifecycle()
    events.update(frame(0.0), [person(3, 0.5)])

    entered = events.update(frame(0.2), [person(3, 0.9)], zones_of={3: ["door"]})
    assert [c.kind for c in entered] == ["update"]
    assert entered[0].event.zones == ("door",) and entered[0].before.zones == ()
    assert entered[0].snapshot is None  # the better view waits for the interval

    assert events.update(frame(0.3), [person(3, 0.5)], zones_of={3: ["door"]}) == []  # still in: nothing new

    fired = events.update(frame(0.4), [person(3, 0.5)], zones_of={3: ["yard", "door"]}, rules_fired={3: ["loiter"]})
    assert len(fired) == 1
    assert fired[0].event.zones == ("door", "yard") and fired[0].event.rules == ("loiter",)
    assert fired[0].before.zones == ("door",) and fired[0].before.rules == ()

    assert events.update(frame(0.5), [person(3, 0.5)], rules_fired={3: ["loiter"]}) == []
    due = events.update(frame(1.0), [person(3, 0.5)])
    assert due[0].snapshot.detection.confidence == 0.9


def test_an_event_ends_after_end_after_s_gone_and_not_before():
    events = lifecycle(end_after_s=2.0)
    events.update(frame(0.0), [person(1), person(2)])
    events.update(frame(1.0), [person(2)])  # track 1 last seen at 0.0

    assert events.update(frame(1.9), [person(2)]) == []
    ended = events.update(frame(2.0), [person(2)])

    assert [(c.kind, c.event.track_id) for c in ended] == [("end", 1)]
    end = ended[0]
    assert end.event.end_time == T0 + 0.0 == end.event.last_seen
    assert end.before.end_time is None and end.before.id == end.event.id
    assert not end.event.as_dict()["active"]
    assert events.open_count == 1

    # The same track id seen again later is a new life.
    again = events.update(frame(3.0), [person(1)])
    assert [c.kind for c in again] == ["new"] and again[0].event.id != end.event.id


def test_end_hands_out_a_better_view_still_waiting_for_its_interval():
    events = lifecycle(end_after_s=1.0)
    events.update(frame(0.0), [person(1, 0.5)])
    events.update(frame(0.2), [person(1, 0.9)])

    ended = events.update(frame(1.2), [])

    assert ended[0].kind == "end" and ended[0].snapshot.detection.confidence == 0.9


def test_tick_ends_events_when_frames_stop():
    events = lifecycle(end_after_s=2.0)
    events.update(frame(0.0), [person(1)])
    events.update(frame(0.5), [person(2)])

    assert events.tick(T0 + 1.9) == []
    assert [c.event.track_id for c in events.tick(T0 + 2.0)] == [1]
    assert [c.event.track_id for c in events.tick(T0 + 2.5)] == [2]
    assert events.open_count == 0 and events.tick(T0 + 100) == []


def test_close_all_ends_every_open_event_at_its_last_sighting():
    events = lifecycle()
    events.update(frame(0.0), [person(1), person(2)])
    events.update(frame(0.4), [person(2)])

    ended = events.close_all()

    assert sorted((c.kind, c.event.track_id, c.event.end_time) for c in ended) == [
        ("end", 1, T0),
        ("end", 2, T0 + 0.4),
    ]
    assert events.open_count == 0 and events.close_all() == []


def test_max_open_ends_the_oldest_seen_event_early():
    events = lifecycle(max_open=2)
    events.update(frame(0.0), [person(1)])
    events.update(frame(0.1), [person(2)])
    events.update(frame(0.2), [person(1)])  # track 2 is now the one seen longest ago

    changes = events.update(frame(0.3), [person(3)])

    assert [(c.kind, c.event.track_id) for c in changes] == [("end", 2), ("new", 3)]
    assert changes[0].event.end_time == T0 + 0.1
    assert events.open_count == 2 and events.evicted == 1


def test_as_dict_is_json_ready_and_rounded():
    events = lifecycle()
    record = events.update(frame(0.0), [Detection(2, "car", (1.234, 2.0, 30.06, 40.0), 0.123456, 9)])[0].event

    data = record.as_dict()

    assert data["best_confidence"] == 0.1235 and data["best_bbox"] == [1.2, 2.0, 30.1, 40.0]
    assert data["frame"] == {"width": 64, "height": 48}
    assert data["zones"] == [] and data["rules"] == [] and data["active"] is True
    assert set(data) >= {"id", "session_id", "camera", "track_id", "label", "class_id", "start_time", "end_time"}


def test_settings_out_of_bounds_are_refused():
    with pytest.raises(ValueError):
        EventLifecycle("s", None, end_after_s=0)
    with pytest.raises(ValueError):
        EventLifecycle("s", None, max_open=0)
    with pytest.raises(ValueError):
        EventLifecycle("s", None, track_hz=-1)
    with pytest.raises(ValueError):
        EventLifecycle("s", None, track_max_points=2)


def _points_of(changes) -> list:
    return [point for change in changes for point in change.points]


def test_the_track_is_kept_at_most_hz_a_second_and_handed_out_with_the_changes():
    # Given an object seen at 20 fps for 3 s, with a track at 4 Hz
    events = lifecycle(track_hz=4.0, update_interval_s=1.0)
    changes = []
    for i in range(60):
        changes += events.update(frame(i / 20, i), [person(3, x=float(i))], zones_of={3: ["door"] if i < 30 else []})
    changes += events.close_all()

    # Then the points are a quarter second apart, first and last sighting included, each with its box and zones
    points = _points_of(changes)
    assert [round(p.t - T0, 3) for p in points] == [
        0.0,
        0.25,
        0.5,
        0.75,
        1.0,
        1.25,
        1.5,
        1.75,
        2.0,
        2.25,
        2.5,
        2.75,
        2.95,
    ]
    assert [p.bbox[0] for p in points] == [0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 45.0, 50.0, 55.0, 59.0]
    assert points[0].zones == ("door",) and points[-1].zones == ()
    assert changes[0].kind == "new" and len(changes[0].points) == 1  # the rest come with later changes
    assert points[-1].seq == -1 and [p.seq for p in points[:-1]] == list(range(12))
    assert {c.event.track_hz for c in changes} == {4.0}


def test_past_the_bound_the_rate_halves_and_the_grid_says_which_points_stay():
    events = lifecycle(track_hz=10.0, track_max_points=10)
    changes = []
    for i in range(40):  # 10 fps for 4 s: 40 points at 10 Hz
        changes += events.update(frame(i / 10, i), [person(3)])
    changes += events.close_all()

    points = _points_of(changes)
    end = changes[-1].event
    assert end.track_hz == 10.0 / 8
    step = 8
    kept = [p for p in points if p.seq < 0 or p.seq % step == 0]
    assert len(kept) <= 10 and [round(p.t - T0, 3) for p in kept] == [0.0, 0.8, 1.6, 2.4, 3.2, 3.9]


def test_a_track_rate_of_zero_keeps_no_points():
    events = lifecycle(track_hz=0.0)
    changes = [c for i in range(20) for c in events.update(frame(i / 10, i), [person(3)])] + events.close_all()
    assert _points_of(changes) == [] and changes[-1].event.track_hz == 0.0
