"""A session's options survive the trip through the shared store's JSON document unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rtdetr_service.analytics.alerts import AlertRule
from rtdetr_service.analytics.tracking import TrackerOptions
from rtdetr_service.core.types import Detection
from rtdetr_service.core.vlm import DescribeOptions
from rtdetr_service.sessions.desired import options_from_record, options_to_record
from rtdetr_service.sessions.session import SessionOptions

FULL = SessionOptions(
    stream_url="rtsp://user:p%40ss@cam.example:8554/stream?token=abc",
    enable_drawing=False,
    confidence_threshold=0.35,
    classes=frozenset({"person", "car"}),
    alert_rule=AlertRule(
        classes=frozenset({"person"}),
        min_confidence=0.6,
        cooldown_s=4.0,
        zones=(np.array([[0.0, 0.0], [0.5, 0.0], [0.5, 0.5]]),),
    ),
    jpeg_quality=60,
    camera="gate café",
    zones={
        "units": "normalized",
        "zones": [{"name": "door", "points": [[0, 0], [1, 0], [1, 1]]}],
        "lines": [],
        "rules": [{"name": "at-door", "kind": "enter", "zone": "door", "ask": "Is the person carrying a parcel?"}],
    },
    tracking=TrackerOptions(min_hits=3, keep_s=2.5, iou_threshold=0.2),
    record="continuous",
    describe=DescribeOptions(labels=frozenset({"person"}), prompt="What is it wearing?", after_s=2.0),
)


@pytest.mark.parametrize("options", [FULL, SessionOptions("rtsp://cam/x", alert_rule=None)], ids=["full", "bare"])
def test_options_come_back_equal_through_json(options):
    back = options_from_record(json.loads(json.dumps(options_to_record(options))))
    assert back == options  # zones compare by value below: dataclass equality skips them
    assert back.zones == options.zones
    if options.alert_rule is not None:
        assert [z.tolist() for z in back.alert_rule.zones] == [z.tolist() for z in options.alert_rule.zones]
        inside, outside = (Detection(0, "person", box, 0.7) for box in ((30, 10, 40, 20), (10, 10, 20, 40)))
        assert back.alert_rule.matches(inside, 100, 100) and not back.alert_rule.matches(outside, 100, 100)


def test_the_url_is_kept_as_given_credentials_included():
    assert options_to_record(FULL)["stream_url"] == FULL.stream_url


@pytest.mark.parametrize(
    ("record", "words"),
    [
        ({**options_to_record(FULL), "version": 2}, "version 2 is not 1"),
        ({k: v for k, v in options_to_record(FULL).items() if k != "tracking"}, "missing or mistypes 'tracking'"),
        ({**options_to_record(FULL), "record": "always"}, "record mode 'always' is not one of off, events, continuous"),
        ([], "must be a JSON object"),
    ],
)
def test_a_record_this_code_cannot_read_is_refused_in_words(record, words):
    with pytest.raises(ValueError, match=words):
        options_from_record(record)


def test_a_record_written_before_recordings_resumes_without_recording():
    old = {k: v for k, v in options_to_record(FULL).items() if k != "record"}
    assert options_from_record(old).record == "off"


def test_a_record_written_before_descriptions_resumes_undescribed_and_every_describe_comes_back():
    old = {k: v for k, v in options_to_record(FULL).items() if k != "describe"}
    assert options_from_record(old).describe is None
    for describe in (DescribeOptions(), DescribeOptions(labels=frozenset({"car"}), after_s=0.0)):
        options = SessionOptions("rtsp://cam/x", describe=describe)
        assert options_from_record(json.loads(json.dumps(options_to_record(options)))).describe == describe
