"""Alert rules: classes, confidence, per-class cooldown (time passed in), zones."""

import numpy as np
import pytest

from rtdetr_service.analytics.alerts import AlertEngine, AlertRule
from rtdetr_service.core.types import Detection


def det(name: str, conf: float, bbox=(10, 10, 20, 40), class_id: int = 0) -> Detection:
    return Detection(class_id, name, bbox, conf)


def run(engine: AlertEngine, dets, now: float) -> list[str]:
    alerts = engine.evaluate(dets, now=now, width=100, height=100, frame_index=1, timestamp=0.0)
    return [a.class_name for a in alerts]


TABLE_ENGINE = AlertEngine(AlertRule(frozenset({"person", "car"}), 0.5, 5.0))


@pytest.mark.parametrize(
    "now, detections, expected",
    [
        (0.0, [det("person", 0.9)], ["person"]),  # first sighting alerts
        (1.0, [det("person", 0.9)], []),  # inside the 5 s cooldown
        (2.0, [det("car", 0.7)], ["car"]),  # cooldown is per class
        (2.5, [det("person", 0.4)], []),  # below min_confidence
        (5.0, [det("person", 0.8)], ["person"]),  # cooldown over
        (5.5, [det("dog", 0.99)], []),  # class not in the rule
        (7.1, [det("car", 0.6), det("car", 0.95)], ["car"]),  # one alert per class per frame
    ],
)
def test_cooldown_table(now, detections, expected):
    # given one engine shared by the rows in order; when each frame arrives; then alerts follow the rule
    assert run(TABLE_ENGINE, detections, now) == expected


def test_most_confident_detection_is_reported():
    engine = AlertEngine(AlertRule(frozenset(), 0.1, 1.0))
    alerts = engine.evaluate(
        [det("car", 0.3, (0, 0, 1, 1)), det("car", 0.8, (5, 5, 9, 9))],
        now=0.0,
        width=10,
        height=10,
        frame_index=7,
        timestamp=123.0,
    )
    assert len(alerts) == 1
    # the spec's fields, unchanged; the fields zone and line rules add are null for this kind
    data = alerts[0].as_data()
    assert {k: data[k] for k in ("class_name", "confidence", "bbox", "frame_index")} == {
        "class_name": "car",
        "confidence": 0.8,
        "bbox": [5, 5, 9, 9],
        "frame_index": 7,
    }
    assert data["kind"] == "detection" and data["rule"] is None and data["track_id"] is None


def test_empty_class_set_means_every_class():
    engine = AlertEngine(AlertRule(frozenset(), 0.0, 0.0))
    assert sorted(run(engine, [det("dog", 0.1), det("cat", 0.2)], 0.0)) == ["cat", "dog"]


def test_zone_uses_bottom_centre():
    left_half = np.array([[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]])
    engine = AlertEngine(AlertRule(frozenset(), 0.0, 0.0, zones=(left_half,)))
    assert run(engine, [det("person", 0.9, (10, 10, 30, 90))], 0.0) == ["person"]  # centre x 20 of 100
    assert run(engine, [det("person", 0.9, (60, 10, 80, 90))], 1.0) == []  # centre x 70
