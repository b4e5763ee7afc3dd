"""Alert rules: which detections raise an alert, with a per-class cooldown and optional zones."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from rtdetr_service.core.geometry import Polygons
from rtdetr_service.core.results import Alert
from rtdetr_service.core.types import Detection


@dataclass(frozen=True, slots=True)
class AlertRule:
    """Alert on `classes` (empty = every class) at or above `min_confidence`, at most once per
    `cooldown_s` per class. With `zones` (polygons in 0..1 image coordinates), only objects whose
    bottom-centre point (where they stand) lies inside a zone count."""

    classes: frozenset[str] = frozenset()
    min_confidence: float = 0.5
    cooldown_s: float = 10.0
    zones: tuple[np.ndarray, ...] = field(default=(), compare=False)
    _areas: Polygons = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_areas", Polygons(self.zones))

    def matches(self, det: Detection, width: int, height: int) -> bool:
        if det.confidence < self.min_confidence:
            return False
        if self.classes and det.class_name not in self.classes:
            return False
        if not self.zones:
            return True
        x, y = det.anchor
        return bool(self._areas.contains([(x / max(width, 1), y / max(height, 1))]).any())


class AlertEngine:
    """Applies one rule to a session's detections; keeps the per-class cooldown clock.

    Time is passed in (`now`, monotonic seconds) so the cooldown logic is testable.
    """

    def __init__(self, rule: AlertRule) -> None:
        self.rule = rule
        self._last: dict[str, float] = {}

    def evaluate(
        self,
        detections: Sequence[Detection],
        *,
        now: float,
        width: int,
        height: int,
        frame_index: int,
        timestamp: float,
    ) -> list[Alert]:
        """Alerts for this frame: the most confident matching detection of each class off cooldown."""
        best: dict[str, Detection] = {}
        for det in detections:
            if self.rule.matches(det, width, height):
                current = best.get(det.class_name)
                if current is None or det.confidence > current.confidence:
                    best[det.class_name] = det
        alerts = []
        for name, det in best.items():
            last = self._last.get(name)
            if last is not None and now - last < self.rule.cooldown_s:
                continue
            self._last[name] = now
            alerts.append(Alert(name, det.confidence, det.bbox, frame_index, timestamp, track_id=det.track_id))
        return alerts
