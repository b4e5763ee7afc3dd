"""A Detector that sees what a script says, by the wall clock: one person walking left to right.

The random-weight model cannot produce meaningful objects; this one stands in for the model only
(it is handed to the real app through `create_app(detector_factory=...)`), so that everything
after it — tracking, zones, rules, events, snapshots, outputs — runs as it does in production.
"""

from __future__ import annotations

import time

from rtdetr_service.coco import COCO_CLASSES
from rtdetr_service.types import Detection, ModelInfo

PERSON = COCO_CLASSES.index("person")


class WalkingPerson:
    """Each `period_s`: a 0.9-confidence person box crosses the picture in `walk_s`, then nobody
    is there for the rest of the period (long enough for its event to end)."""

    def __init__(self, walk_s: float = 3.0, period_s: float = 5.0, clock=time.time) -> None:
        self.walk_s = walk_s
        self.period_s = period_s
        self._clock = clock
        self.calls = 0
        self.info = ModelInfo(
            name="scripted-walking-person", backend="scripted", device="cpu", trained=True, class_names=COCO_CLASSES
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
            if done is None or threshold > 0.9:
                out.append([])
                continue
            box_w, box_h = width * 0.15, height * 0.5
            x1 = done * (width - box_w)
            y1 = height * 0.3
            out.append([Detection(PERSON, "person", (x1, y1, x1 + box_w, y1 + box_h), 0.9)])
        return out
