"""A Detector that sees what a script says, by the wall clock: people walking left to right.

The random-weight model cannot produce meaningful objects; this one stands in for the model only
(it is handed to the real app through `create_app(detector_factory=...)`), so that everything
after it — tracking, zones, rules, events, snapshots, outputs — runs as it does in production.
"""

from __future__ import annotations

import time

from rtdetr_service.core.coco import COCO_CLASSES
from rtdetr_service.core.types import Detection, ModelInfo

PERSON = COCO_CLASSES.index("person")
# What the walkers cross: the right half as a zone, a line down the middle drawn bottom to top
# (walking left to right crosses it "in"), and a rule on each.
WALK_ZONES = {
    "zones": [{"name": "right", "points": [[0.5, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 1.0]]}],
    "lines": [{"name": "middle", "a": [0.5, 1.0], "b": [0.5, 0.0]}],
    "rules": [
        {"name": "someone-right", "kind": "enter", "zone": "right", "classes": ["person"]},
        {"name": "passing", "kind": "cross", "line": "middle", "direction": "in"},
    ],
}


class WalkingPeople:
    """Each `period_s`: `rows` people (one per row of the picture) cross it in `walk_s`, then
    nobody is there for the rest of the period (long enough for their events to end). Their
    confidence rises from 0.6 to 0.95 on the way, as a detector's does when someone comes closer."""

    def __init__(self, rows: int = 1, walk_s: float = 3.0, period_s: float = 5.0, clock=time.time) -> None:
        self.rows = rows
        self.walk_s = walk_s
        self.period_s = period_s
        self._clock = clock
        self.calls = 0
        self.info = ModelInfo(
            name="scripted-walking-people", backend="scripted", device="cpu", trained=True, class_names=COCO_CLASSES
        )

    def position(self, now: float) -> float | None:
        """Fraction of the walk done at `now` (0..1), or None while nobody is there."""
        phase = now % self.period_s
        return phase / self.walk_s if phase < self.walk_s else None

    def detect(self, images, thresholds):
        self.calls += 1
        done = self.position(self._clock())
        out = []
        for image, threshold in zip(images, thresholds, strict=True):
            height, width = image.shape[:2]
            people = []
            if done is not None:
                box_w, row_h = width * 0.15, height / self.rows
                x1 = done * (width - box_w)
                confidence = 0.6 + 0.35 * done
                for row in range(self.rows):
                    y1 = row * row_h + row_h * 0.1
                    box = (x1, y1, x1 + box_w, y1 + row_h * 0.8)
                    if confidence >= threshold:
                        people.append(Detection(PERSON, "person", box, confidence))
            out.append(people)
        return out


class ScheduledWalks:
    """People walking left to right at the wall-clock times a test sets (`add`), each in a band of
    rows of its own, so that two walks show different parts of the picture; nobody otherwise. Two
    sessions on one camera see the same walk at the same moment, as two viewers of one place would."""

    def __init__(self, walk_s: float = 3.0, clock=time.time) -> None:
        self.walk_s = walk_s
        self._clock = clock
        self._walks: list[tuple[float, float, float]] = []  # (start, top, bottom), fractions of the height
        self.info = ModelInfo(
            name="scripted-scheduled-walks", backend="scripted", device="cpu", trained=True, class_names=COCO_CLASSES
        )

    def add(self, start: float, top: float, bottom: float) -> None:
        """A walk from `start` (wall clock) for walk_s, between these fractions of the picture's height."""
        self._walks.append((start, top, bottom))

    def detect(self, images, thresholds):
        now = self._clock()
        out = []
        for image, threshold in zip(images, thresholds, strict=True):
            height, width = image.shape[:2]
            people = []
            for start, top, bottom in list(self._walks):
                done = (now - start) / self.walk_s
                if not 0 <= done < 1:
                    continue
                box_w = width * 0.15
                x1 = done * (width - box_w)
                confidence = 0.6 + 0.35 * done
                box = (x1, top * height, x1 + box_w, bottom * height)
                if confidence >= threshold:
                    people.append(Detection(PERSON, "person", box, confidence))
            out.append(people)
        return out
