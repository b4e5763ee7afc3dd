"""Per-session multi-object tracking: gives each detected object an id that survives across frames.

The tracking itself is ByteTrack from Roboflow's `trackers` library: Apache-2.0 (ultralytics'
and boxmot's trackers are AGPL), maintained, and its Kalman predict runs by the real time between
frame timestamps, so the frames our live-first pipeline drops do not break tracks. This module
only maps our settings and `Detection`s onto it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import supervision as sv
from trackers import ByteTrackTracker

from rtdetr_service.core.types import Detection

_LIBRARY_FPS = 30.0  # `lost_track_buffer` counts frames of a 30-fps video, whatever the real rate


@dataclass(frozen=True, slots=True)
class TrackerOptions:
    """Per-session tracker settings (validated at construction: ValueError with the field name)."""

    # Consecutive matched frames before an id is issued. At least 2: the library issues an id
    # at a track's first match after the frame that created it, so 1 would act as 2.
    min_hits: int = 2
    keep_s: float = 1.0  # how long a lost track is kept, by frame timestamps
    iou_threshold: float = 0.1  # least IoU to match a detection to a track

    def __post_init__(self) -> None:
        if isinstance(self.min_hits, bool) or not isinstance(self.min_hits, int) or not 2 <= self.min_hits <= 30:
            raise ValueError(f"min_hits must be a whole number from 2 to 30, got {self.min_hits!r}")
        if not _number_in(self.keep_s, 0.0, 60.0):
            raise ValueError(f"keep_s must be from 0 to 60 seconds, got {self.keep_s!r}")
        if not _number_in(self.iou_threshold, 0.01, 0.99):
            raise ValueError(f"iou_threshold must be from 0.01 to 0.99, got {self.iou_threshold!r}")


def _number_in(value: object, low: float, high: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high


class Tracker:
    """Assigns track ids to one session's detections, frame after frame."""

    def __init__(self, options: TrackerOptions, *, activation_threshold: float, frame_rate: float = 30.0) -> None:
        if not 0.0 <= activation_threshold <= 1.0:
            raise ValueError(f"activation_threshold must be from 0 to 1, got {activation_threshold!r}")
        self.options = options
        self._frame_rate = frame_rate
        # Every detection we get already passed the session's threshold, so both library thresholds
        # sit at it: with the defaults (0.7 / 0.6) a 0.5 detection could never start a track, and one
        # between the two thresholds would only ever be matched in the low-score stage.
        self._tracker = ByteTrackTracker(
            lost_track_buffer=round(options.keep_s * _LIBRARY_FPS),
            frame_rate=frame_rate,
            track_activation_threshold=activation_threshold,
            minimum_consecutive_frames=options.min_hits,
            minimum_iou_threshold=options.iou_threshold,
            high_conf_det_threshold=activation_threshold,
        )
        self._id_base = 0  # ids issued before the last reset(): ids stay unique for the session
        self._last_id = 0
        self._last_given: float | None = None
        self._clock = 0.0

    def update(self, detections: Sequence[Detection], timestamp: float) -> list[Detection]:
        """The same detections with track_id set (None while unconfirmed); ids are >= 1, unique per session."""
        # An empty update still goes to the library: it advances time, so lost tracks expire.
        n = len(detections)
        boxes = sv.Detections(
            xyxy=np.array([d.bbox for d in detections], dtype=np.float64).reshape(n, 4),
            # float64: a 0.7 stored as float32 is 0.69999999 and would miss a 0.7 threshold.
            confidence=np.array([d.confidence for d in detections], dtype=np.float64),
            class_id=np.array([d.class_id for d in detections], dtype=int),
            data={"index": np.arange(n)},  # the library reorders its output; this maps it back
        )
        tracked = self._tracker.update(boxes, timestamp=self._advance(timestamp))
        ids: list[int | None] = [None] * n
        for index, tracker_id in zip(tracked.data.get("index", ()), tracked.tracker_id, strict=True):
            if tracker_id >= 0:
                track_id = self._id_base + int(tracker_id) + 1  # people read "#1", not "#0"
                ids[int(index)] = track_id
                self._last_id = max(self._last_id, track_id)
        # Built directly, not with dataclasses.replace: this runs for every box of every frame.
        return [
            Detection(d.class_id, d.class_name, d.bbox, d.confidence, track_id) if track_id is not None else d
            for d, track_id in zip(detections, ids, strict=True)
        ]

    def reset(self) -> None:
        """Forget every track (the scene may have changed); ids go on counting from the last one."""
        self._tracker.reset()
        self._id_base = self._last_id
        self._last_given = None

    def _advance(self, timestamp: float) -> float:
        """The time to give the library: frame timestamps, but never standing still or going back.

        The library skips the whole update on a backwards timestamp, so a wall clock stepped back
        (NTP) would freeze tracking until it caught up; such a step counts as one nominal frame."""
        last, self._last_given = self._last_given, timestamp
        if last is None:
            self._clock = timestamp  # the library starts its clock afresh too
        elif timestamp > last:
            self._clock += timestamp - last
        else:
            self._clock += 1.0 / self._frame_rate
        return self._clock
