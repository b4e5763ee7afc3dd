"""Zones, lines and rules: each rule fires once per object, counters count every object, config is checked."""

import math

import numpy as np
import pytest

from rtdetr_service.analytics.zones import MAX_POINTS, MAX_ZONES, Line, Rule, Zone, ZoneConfig, ZoneEngine
from rtdetr_service.core.types import Detection

SIZE = 1000  # frames are 1000x1000 px, so a pixel anchor x is normalised x / 1000


def at(track_id: int | None, x: float, y: float, *, name: str = "person", confidence: float = 0.9) -> Detection:
    """A detection standing at (x, y) normalised: its box's bottom-centre is there."""
    px, py = x * SIZE, y * SIZE
    return Detection(0, name, (px - 10, py - 40, px + 10, py), confidence, track_id)


def frame(engine: ZoneEngine, timestamp: float, *detections: Detection):
    return engine.update(list(detections), width=SIZE, height=SIZE, timestamp=timestamp)


SQUARE = Zone("door", ((0.2, 0.2), (0.6, 0.2), (0.6, 0.6), (0.2, 0.6)))
ACROSS = Line("road", (0.1, 0.5), (0.9, 0.5))  # drawn left to right: moving down across it is "in"


def engine(*rules: Rule, zones=(SQUARE,), lines=(ACROSS,)) -> ZoneEngine:
    return ZoneEngine(ZoneConfig(zones=tuple(zones), lines=tuple(lines), rules=rules))


def test_enter_fires_once_per_object_not_once_per_frame():
    # given an enter rule on the door zone
    e = engine(Rule("in-door", "enter", zone="door"))
    # when person 1 walks in and stays for 10 frames, leaves and comes back, then person 2 walks in
    hits = list(frame(e, 0.0, at(1, 0.1, 0.4)).hits)
    for i in range(10):
        hits += frame(e, 0.1 + i / 10, at(1, 0.3 + i / 100, 0.4)).hits
    hits += frame(e, 2.0, at(1, 0.8, 0.4)).hits + frame(e, 2.1, at(1, 0.4, 0.4)).hits
    hits += frame(e, 2.2, at(1, 0.4, 0.4), at(2, 0.5, 0.5)).hits
    # then there is one hit for each object, at the time it first stood inside
    assert [(h.rule, h.kind, h.zone, h.track_id, h.timestamp) for h in hits] == [
        ("in-door", "enter", "door", 1, 0.1),
        ("in-door", "enter", "door", 2, 2.2),
    ]
    counts = e.counts()
    assert counts["zones"]["door"] == {"current": {"person": 2}, "entered": {"person": 2}}
    assert counts["rules"] == {"in-door": 2}


def test_dwell_fires_after_dwell_s_and_only_once():
    # given a 5 s dwell rule and a person standing in the door zone from t = 0
    e = engine(Rule("loiter", "dwell", zone="door", dwell_s=5.0))
    # when frames come every 0.1 s for 10 s
    fired_at = [t / 10 for t in range(101) for _ in frame(e, t / 10, at(1, 0.4, 0.4)).hits]
    # then it fires once, at 5 s and not before
    assert fired_at == [5.0]


def test_leaving_resets_the_dwell_clock():
    # given a 5 s dwell rule; a person inside from 0 to 3 s, outside at 3.5 s, inside again from 4 s
    e = engine(Rule("loiter", "dwell", zone="door", dwell_s=5.0))
    for t in (0.0, 1.0, 2.0, 3.0):
        assert frame(e, t, at(1, 0.4, 0.4)).hits == ()
    frame(e, 3.5, at(1, 0.9, 0.9))
    # when they are inside again at 4 s and stay
    frame(e, 4.0, at(1, 0.4, 0.4))
    early = frame(e, 8.5, at(1, 0.4, 0.4)).hits  # 8.5 s since the first entry, 4.5 s since the second
    on_time = frame(e, 9.0, at(1, 0.4, 0.4)).hits
    # then the clock counted from 4 s
    assert early == () and [h.timestamp for h in on_time] == [9.0]


def test_a_frame_without_the_track_does_not_reset_dwell():
    # given a person inside from 0 s whose detection is missed on some frames
    e = engine(Rule("loiter", "dwell", zone="door", dwell_s=2.0))
    frame(e, 0.0, at(1, 0.4, 0.4))
    frame(e, 1.0)
    # when they are seen again at 2 s, still inside
    hits = frame(e, 2.0, at(1, 0.4, 0.4)).hits
    # then the missed frame was not a departure
    assert [h.track_id for h in hits] == [1]


def test_cross_counts_direction_and_only_through_the_segment():
    # given an "in" cross rule on a line drawn left to right from x 0.1 to 0.9 at y 0.5
    e = engine(Rule("arrivals", "cross", line="road", direction="in"), zones=())
    frame(e, 0.0, at(1, 0.5, 0.4, name="car"), at(2, 0.5, 0.6, name="car"), at(3, 0.95, 0.4, name="car"))
    # when car 1 drives down across it, car 2 up across it, and car 3 down beside its right end
    hits = frame(e, 0.1, at(1, 0.5, 0.6, name="car"), at(2, 0.5, 0.4, name="car"), at(3, 0.95, 0.6, name="car")).hits
    # then down is "in", up is "out", beside the end is nothing, and the rule fires only for "in"
    assert [(h.track_id, h.direction, h.line) for h in hits] == [(1, "in", "road")]
    assert e.counts()["lines"]["road"] == {"in": {"car": 1}, "out": {"car": 1}}


def test_counters_count_every_crossing_but_a_rule_fires_once_per_object():
    # given an any-direction cross rule
    e = engine(Rule("traffic", "cross", line="road"), zones=())
    # when a car goes down, up and down again across the line, landing exactly on it once
    hits = []
    for t, y in enumerate((0.4, 0.5, 0.6, 0.3, 0.7)):
        hits += frame(e, t, at(1, 0.5, y, name="car")).hits
    # then landing on the line counts as reaching the far side (once), and the rule fired for the first crossing
    assert [(h.direction, h.timestamp) for h in hits] == [("in", 1)]
    assert e.counts()["lines"]["road"] == {"in": {"car": 2}, "out": {"car": 1}}
    assert e.counts()["rules"] == {"traffic": 1}


def test_occupancy_fires_when_the_count_reaches_min_count_and_rearms_below_it():
    # given an occupancy rule for two or more people in the door zone
    e = engine(Rule("crowd", "occupancy", zone="door", min_count=2))
    # when one, then two, then three are inside; then two walk out; then one comes back
    one = frame(e, 0.0, at(1, 0.3, 0.3)).hits
    two = frame(e, 1.0, at(1, 0.3, 0.3), at(2, 0.4, 0.4, confidence=0.95)).hits
    three = frame(e, 2.0, at(1, 0.3, 0.3), at(2, 0.4, 0.4), at(3, 0.5, 0.5)).hits
    drop = frame(e, 3.0, at(1, 0.3, 0.3), at(2, 0.9, 0.9), at(3, 0.9, 0.9)).hits
    again = frame(e, 4.0, at(1, 0.3, 0.3), at(2, 0.4, 0.4), at(3, 0.9, 0.9)).hits
    # then it fired when two were inside, not again at three, and again after the count fell below two
    assert one == three == drop == ()
    (first,) = two
    assert (first.track_id, first.count, first.confidence, first.bbox) == (None, 2, 0.95, at(2, 0.4, 0.4).bbox)
    assert [(h.count, h.timestamp) for h in again] == [(2, 4.0)]


def test_a_missed_detection_does_not_make_occupancy_fire_again():
    # given an occupancy rule for one person, who stands in the zone; tracks are held 1 s when not detected
    e = ZoneEngine(ZoneConfig(zones=(SQUARE,), rules=(Rule("someone", "occupancy", zone="door"),)), hold_s=1.0)
    hits = list(frame(e, 0.0, at(1, 0.4, 0.4)).hits)
    # when the detector misses them for a frame, then sees them again
    hits += frame(e, 0.1).hits + frame(e, 0.2, at(1, 0.4, 0.4)).hits
    # then it fired once, and the zone still counted them on the missed frame
    assert [h.timestamp for h in hits] == [0.0]
    # and when they are gone for longer than hold_s, the zone empties and re-arms
    frame(e, 0.5)
    assert e.counts()["zones"]["door"]["current"] == {"person": 1}
    frame(e, 1.5)
    assert e.counts()["zones"]["door"]["current"] == {}
    assert [h.timestamp for h in frame(e, 2.0, at(1, 0.4, 0.4)).hits] == [2.0]


def test_class_and_confidence_filters_apply():
    # given an enter rule for confident people only
    e = engine(Rule("people", "enter", zone="door", classes=frozenset({"person"}), min_confidence=0.6))
    # when a car, an unsure person and a sure person stand inside
    hits = frame(e, 0.0, at(1, 0.3, 0.3, name="car"), at(2, 0.4, 0.4, confidence=0.5), at(3, 0.5, 0.5)).hits
    # then only the sure person fires, while the zone counts everyone
    assert [h.track_id for h in hits] == [3]
    assert e.counts()["zones"]["door"]["current"] == {"car": 1, "person": 2}


def test_detections_without_a_track_id_are_ignored():
    # given an enter rule and a detection the tracker has not confirmed yet
    e = engine(Rule("in-door", "enter", zone="door"))
    # when it stands inside
    update = frame(e, 0.0, at(None, 0.4, 0.4))
    # then nothing fires and nothing is counted
    assert update.hits == () and update.zones_of == {}
    assert e.counts()["zones"]["door"] == {"current": {}, "entered": {}}


def test_from_dict_converts_pixels_and_round_trips():
    # given a config in pixels of a 1920x1080 frame
    d = {
        "units": "pixels",
        "zones": [{"name": "door", "points": [[0, 0], [960, 0], [960, 540]]}],
        "lines": [{"name": "gate", "a": [0, 1080], "b": [1920, 540]}],
        "rules": [{"name": "cars-in", "kind": "cross", "line": "gate", "classes": ["car"], "direction": "in"}],
    }
    # when it is parsed
    config = ZoneConfig.from_dict(d, width=1920, height=1080)
    # then coordinates are normalised, classes collected, and the normalised form reads back the same
    assert config.zones[0].points == ((0.0, 0.0), (0.5, 0.0), (0.5, 0.5))
    assert (config.lines[0].a, config.lines[0].b) == ((0.0, 1.0), (1.0, 0.5))
    assert config.rule_classes() == {"car"}
    assert ZoneConfig.from_dict(config.as_dict()) == config


def _zone(name="door", points=((0, 0), (1, 0), (1, 1))):
    return {"name": name, "points": [list(p) for p in points]}


@pytest.mark.parametrize(
    ("d", "size", "message"),
    [
        ({"units": "pixels", "zones": [_zone()]}, {}, "width and height"),
        (
            {"units": "pixels", "zones": [_zone(points=((0, 0), (2000, 10), (5, 5)))]},
            {"width": 1920, "height": 1080},
            "zone 'door': point \\(2000, 10\\) is outside the frame",
        ),
        ({"zones": [_zone(points=((0, 0), (1.2, 0.5), (0, 1)))]}, {}, "zone 'door'.*outside"),
        ({"lines": [{"name": "gate", "a": [0, 0], "b": [0, 1.5]}]}, {}, "line 'gate'.*outside"),
        ({"lines": [{"name": "gate", "a": [0.5, 0.5], "b": [0.5, 0.5]}]}, {}, "line 'gate'.*different"),
        ({"zones": [_zone(points=((0, 0), (1, 1)))]}, {}, "zone 'door': needs at least 3"),
        ({"zones": [_zone(points=[(i / 300, 0.5) for i in range(MAX_POINTS + 1)])]}, {}, "zone 'door'.*at most 256"),
        ({"zones": [_zone(), _zone()]}, {}, "zone 'door'.*twice"),
        ({"zones": [_zone(f"z{i}") for i in range(MAX_ZONES + 1)]}, {}, "at most 16 zones"),
        ({"rules": [{"name": "r", "kind": "enter", "zone": "nowhere"}]}, {}, "rule 'r': there is no zone 'nowhere'"),
        ({"rules": [{"name": "r", "kind": "cross", "zone": "door"}]}, {}, "rule 'r': cross rules need a line"),
        ({"rules": [{"name": "r", "kind": "enter", "zone": "door", "dwell": 3}]}, {}, "rule #1: unknown key 'dwell'"),
        ({"rules": [{"name": "r", "kind": "enter", "zone": "door", "classes": "person"}]}, {}, "rule 'r': classes"),
        ({"units": "furlongs"}, {}, "units"),
        # numbers no float holds: a 320-digit integer once escaped as OverflowError (a 500 for a caller)
        ({"zones": [_zone(points=((0, 0), (10**320, 0), (0, 1)))]}, {}, "zone 'door': a coordinate is too large"),
        (
            {"lines": [{"name": "gate", "a": [0, -(10**320)], "b": [0, 1]}]},
            {},
            "line 'gate': a coordinate is too large",
        ),
        (
            {"zones": [_zone(points=((0, 0), (float("inf"), 0), (0, 1)))]},
            {},
            "zone 'door': point \\(inf, 0\\) is outside",
        ),
        (
            {"zones": [_zone(points=((0, 0), (float("nan"), 0), (0, 1)))]},
            {},
            "zone 'door': point \\(nan, 0\\) is outside",
        ),
    ],
)
def test_from_dict_refuses_bad_configs_naming_the_item(d, size, message):
    # given / when a bad config is parsed / then the error says which item is wrong
    with pytest.raises(ValueError, match=message):
        ZoneConfig.from_dict(d, **size)


def test_reconfigure_keeps_counters_of_names_that_still_exist_and_resets_changed_rules():
    # given enter, occupancy and 1.5 s dwell rules on the door zone, and a car that stood in it (firing the first
    # two) and then crossed the road, still inside
    rules = (
        Rule("in-door", "enter", zone="door"),
        Rule("busy", "occupancy", zone="door"),
        Rule("linger", "dwell", zone="door", dwell_s=1.5),
    )
    e = engine(*rules)
    assert len(frame(e, 0.0, at(1, 0.5, 0.4, name="car")).hits) == 2
    assert frame(e, 1.0, at(1, 0.5, 0.55, name="car")).hits == ()
    # when the line stays, a new line is added and the door zone is redrawn, still around the car
    moved = Zone("door", ((0.2, 0.5), (0.8, 0.5), (0.8, 0.9), (0.2, 0.9)))
    gate = Line("gate", (0.0, 0.1), (1.0, 0.1))
    e.reconfigure(ZoneConfig(zones=(moved,), lines=(ACROSS, gate), rules=rules))
    hits = frame(e, 2.0, at(1, 0.5, 0.56, name="car")).hits
    # then the road keeps its count and the gate starts at zero
    assert e.counts()["lines"] == {"road": {"in": {"car": 1}, "out": {}}, "gate": {"in": {}, "out": {}}}
    # and the rules on the redrawn zone start afresh: enter and occupancy fire again, the dwell clock restarted
    assert [(h.rule, h.track_id) for h in hits] == [("in-door", 1), ("busy", None)]
    # and reapplying the same config changes nothing: no rule fires again, the counts stay
    e.reconfigure(e.config)
    assert frame(e, 3.0, at(1, 0.5, 0.57, name="car")).hits == ()
    assert e.counts()["rules"] == {"in-door": 2, "busy": 2, "linger": 0}


def test_forget_and_long_absence_drop_a_tracks_state():
    # given person 1 and person 2 both fired the enter rule
    e = engine(Rule("in-door", "enter", zone="door"))
    assert len(frame(e, 0.0, at(1, 0.4, 0.4), at(2, 0.3, 0.3)).hits) == 2
    # when track 1 is forgotten (its event ended) and is seen again a second later
    e.forget([1])
    forgotten = frame(e, 1.0, at(1, 0.4, 0.4)).hits
    # and track 2, never forgotten, is not seen for more than 60 s
    absent = frame(e, 61.5, at(2, 0.3, 0.3)).hits
    # then each is a new object again: its state was dropped, so memory stays bounded
    assert [h.track_id for h in forgotten] == [1] and [h.track_id for h in absent] == [2]


def test_a_256_point_polygon_against_300_tracks_matches_known_points():
    # given a 256-point circle of radius 0.3 at the centre and a concave L-shaped zone in the corner
    circle = Zone(
        "circle",
        tuple(
            (0.5 + 0.3 * math.cos(a), 0.5 + 0.3 * math.sin(a))
            for a in np.linspace(0, 2 * math.pi, MAX_POINTS, endpoint=False)
        ),
    )
    ell = Zone("ell", ((0.0, 0.0), (0.2, 0.0), (0.2, 0.1), (0.1, 0.1), (0.1, 0.2), (0.0, 0.2)))
    e = ZoneEngine(ZoneConfig(zones=(circle, ell)))
    # and 300 tracks at radii well inside or well outside the circle, at all angles
    radii = (0.05, 0.15, 0.25, 0.29, 0.31, 0.35)
    points = [(0.5 + r * math.cos(a), 0.5 + r * math.sin(a)) for r in radii for a in np.linspace(0, 6.2, 50)]
    dets = [at(i + 1, x, y) for i, (x, y) in enumerate(points)]
    # plus three in the corner: in the L's foot, in its notch (outside), in its arm
    dets += [at(301, 0.15, 0.05), at(302, 0.15, 0.15), at(303, 0.05, 0.15)]
    # when they are evaluated in one frame
    zones_of = frame(e, 0.0, *dets).zones_of
    # then each is in exactly the zones it should be
    expected = {i + 1: ("circle",) if math.dist(p, (0.5, 0.5)) < 0.3 else () for i, p in enumerate(points)}
    expected |= {301: ("ell",), 302: (), 303: ("ell",)}
    assert zones_of == expected
    assert sum(1 for z in zones_of.values() if z == ("circle",)) == 200


def test_a_hit_is_json_ready():
    # given a hit / when it is written out / then floats are rounded like a detection's
    e = engine(Rule("in-door", "enter", zone="door"))
    (hit,) = frame(e, 12.5, Detection(0, "person", (100.123, 100.0, 300.987, 400.456), 0.912345, 7)).hits
    assert hit.as_data() == {
        "rule": "in-door",
        "kind": "enter",
        "zone": "door",
        "line": None,
        "track_id": 7,
        "class_name": "person",
        "confidence": 0.9123,
        "bbox": [100.1, 100.0, 301.0, 400.5],
        "timestamp": 12.5,
        "direction": None,
        "count": None,
        "ask": None,
    }


def test_a_rule_may_ask_a_bounded_question_that_its_hits_carry_and_its_config_shows_back():
    # given a rule with a question
    e = engine(Rule("in-door", "enter", zone="door", ask="  Is the person carrying a parcel?\n"))
    # then its hit carries it, trimmed, and the config shows it back
    (hit,) = frame(e, 1.0, Detection(0, "person", (100.0, 100.0, 300.0, 400.0), 0.9, 7)).hits
    assert hit.ask == "Is the person carrying a parcel?"
    assert e.config.as_dict()["rules"][0]["ask"] == "Is the person carrying a parcel?"
    assert ZoneConfig.from_dict(e.config.as_dict()).rules[0].ask == "Is the person carrying a parcel?"
    # and a blank question is none, a long one or one with a control character is refused in words
    assert Rule("r", "enter", zone="door", ask="   ").ask is None
    with pytest.raises(ValueError, match="at most 500 characters"):
        Rule("r", "enter", zone="door", ask="why? " * 101)
    with pytest.raises(ValueError, match="control character"):
        Rule("r", "enter", zone="door", ask="why\x1b[2J?")
    with pytest.raises(ValueError, match="a question in words"):
        Rule("r", "enter", zone="door", ask=["why?"])
