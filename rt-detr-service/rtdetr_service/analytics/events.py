"""The event lifecycle: one tracked object's life in a session, from first sighting to gone.

Pure logic: no I/O, no clock of its own. Time comes in with each frame (`Frame.timestamp`) or as
`now`, so the same code replays recorded streams and runs under test. A store or a webhook sink
receives the `EventChange`s and does the I/O on its own thread.

Each life also keeps its track: the object's box, confidence and zones at most `track_hz` times a
second, and at its last sighting, handed out with the event's next change. Past `track_max_points`
its rate halves, and the store keeps only the points on the coarser grid (`TrackPoint.seq`): a
long life keeps one evenly spaced track of at most that many points, not a dense start and no end.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

from rtdetr_service.core.results import EventChange, EventRecord, SnapshotRequest, TrackPoint
from rtdetr_service.core.types import Detection, Frame

# Frame timestamps jitter: a frame due at exactly the interval must not wait for the next one.
_POINT_SLACK_S = 0.001


@dataclass(slots=True)
class _Open:
    record: EventRecord  # as of its last change; `last_seen` below is newer
    last_seen: float  # kept here, not in the record: most frames change nothing else
    last_emit: float  # frame time of the last change handed out
    last_snapshot: float  # frame time of the last snapshot requested
    pending: SnapshotRequest | None = None  # a better view that waits for the snapshot interval
    points: list[TrackPoint] = field(default_factory=list)  # kept since the last change handed out
    next_point: float = math.inf  # frame time from which the next track point is kept
    last_point: float = -math.inf  # frame time of the newest track point
    kept: int = 0  # track points the store holds once it has these, after its thinning
    seq: int = -1  # grid place of the newest track point (TrackPoint.seq)
    step: int = 1  # grid places between two points: 2**(times the track was thinned)
    last_det: Detection | None = None  # the newest sighting, a point at the end if not kept yet
    last_zones: Sequence[str] = ()


class EventLifecycle:
    """Turns a session's tracked detections into event changes (new → update… → end).

    Bounded work: at most one snapshot per event per `snapshot_interval_s` (plus one at the end
    when a better view is still waiting), at most one heartbeat per event per `update_interval_s`,
    and at most `max_open` open events.
    """

    def __init__(
        self,
        session_id: str,
        camera: str | None,
        *,
        end_after_s: float = 5.0,
        snapshot_interval_s: float = 1.0,
        update_interval_s: float = 5.0,
        min_confidence_gain: float = 0.02,
        max_open: int = 256,
        track_hz: float = 5.0,
        track_max_points: int = 3000,
    ) -> None:
        if end_after_s <= 0 or snapshot_interval_s < 0 or update_interval_s <= 0 or max_open < 1:
            raise ValueError(
                "end_after_s and update_interval_s must be > 0, snapshot_interval_s >= 0 and max_open >= 1"
            )
        if track_hz < 0 or track_max_points < 3:
            raise ValueError("track_hz must be >= 0 (0: no track) and track_max_points >= 3")
        self.session_id = session_id
        self.camera = camera
        self._end_after = end_after_s
        self._snapshot_interval = snapshot_interval_s
        self._update_interval = update_interval_s
        self._min_gain = min_confidence_gain
        self._max_open = max_open
        self._track_hz = track_hz
        self._track_max = track_max_points
        self._open: dict[int, _Open] = {}  # by track id
        self.evicted = 0  # open events ended early because max_open was reached

    @property
    def open_count(self) -> int:
        return len(self._open)

    def update(
        self,
        frame: Frame,
        detections: Sequence[Detection],
        *,
        zones_of: Mapping[int, Sequence[str]] | None = None,
        rules_fired: Mapping[int, Sequence[str]] | None = None,
    ) -> list[EventChange]:
        """Advance every life by one frame; `zones_of` / `rules_fired` are keyed by track id.
        Detections without a track id are not objects yet and are passed over."""
        now = frame.timestamp
        zones_of = zones_of or {}
        rules_fired = rules_fired or {}
        changes: list[EventChange] = []
        seen: set[int] = set()
        for det in detections:
            track = det.track_id
            if track is None:
                continue
            seen.add(track)
            zones, rules = zones_of.get(track, ()), rules_fired.get(track, ())
            state = self._open.get(track)
            if state is None:
                if len(self._open) >= self._max_open:
                    changes.append(self._evict_oldest())
                changes.append(self._start(frame, det, zones, rules))
            else:
                change = self._advance(state, frame, det, zones, rules)
                if change is not None:
                    changes.append(change)
        changes.extend(self._end_gone(now, keep=seen))
        return changes

    def tick(self, now: float) -> list[EventChange]:
        """End the events gone for `end_after_s` when no frames arrive (a stalled camera);
        `now` is wall-clock seconds, the same clock as frame timestamps."""
        return self._end_gone(now, keep=set())

    def close_all(self) -> list[EventChange]:
        """The session stopped: end every open event at the time it was last seen."""
        return [self._end(track) for track in list(self._open)]

    def _start(self, frame: Frame, det: Detection, zones: Sequence[str], rules: Sequence[str]) -> EventChange:
        now = frame.timestamp
        record = EventRecord(
            id=uuid.uuid4().hex,
            session_id=self.session_id,
            camera=self.camera,
            track_id=det.track_id,
            label=det.class_name,
            class_id=det.class_id,
            start_time=now,
            end_time=None,
            last_seen=now,
            best_confidence=det.confidence,
            best_bbox=tuple(det.bbox),
            best_time=now,
            frame_width=frame.width,
            frame_height=frame.height,
            zones=_merged((), zones),
            rules=_merged((), rules),
            has_snapshot=True,
            track_hz=self._track_hz,
        )
        state = _Open(record, last_seen=now, last_emit=now, last_snapshot=now)
        self._open[det.track_id] = state
        if self._track_hz > 0:
            self._keep_point(state, now, det, zones)
        return EventChange("new", record, None, SnapshotRequest(record.id, frame, det), self._take_points(state))

    def _advance(
        self, state: _Open, frame: Frame, det: Detection, zones: Sequence[str], rules: Sequence[str]
    ) -> EventChange | None:
        # Per tracked object per frame: the common case (nothing new) must stay allocation-free.
        now = frame.timestamp
        state.last_seen = max(state.last_seen, now)
        state.last_det, state.last_zones = det, zones
        if now >= state.next_point:
            self._keep_point(state, now, det, zones)
        record = state.record
        better = det.confidence >= record.best_confidence + self._min_gain
        if better:
            # Keep only the newest best: a waiting view that was beaten is never written.
            state.pending = SnapshotRequest(record.id, frame, det)
        new_zones, new_rules = _merged(record.zones, zones), _merged(record.rules, rules)
        noteworthy = new_zones is not record.zones or new_rules is not record.rules
        snapshot_due = state.pending is not None and now - state.last_snapshot >= self._snapshot_interval
        heartbeat = now - state.last_emit >= self._update_interval
        if not (better or noteworthy or snapshot_due or heartbeat):
            return None
        before = replace(record, last_seen=state.last_seen) if record.last_seen != state.last_seen else record
        if better:
            record = replace(record, best_confidence=det.confidence, best_bbox=tuple(det.bbox), best_time=now)
        if noteworthy:
            record = replace(record, zones=new_zones, rules=new_rules)
        state.record = record = replace(record, last_seen=state.last_seen)
        if not (noteworthy or snapshot_due or heartbeat):
            return None  # a better view waits for its snapshot interval; the record has it
        snapshot = None
        if snapshot_due:
            snapshot, state.pending, state.last_snapshot = state.pending, None, now
        state.last_emit = now
        return EventChange("update", record, before, snapshot, self._take_points(state))

    def _end_gone(self, now: float, keep: set[int]) -> list[EventChange]:
        gone = [
            track
            for track, state in self._open.items()
            if track not in keep and now - state.last_seen >= self._end_after
        ]
        return [self._end(track) for track in gone]

    def _evict_oldest(self) -> EventChange:
        track = min(self._open, key=lambda t: self._open[t].last_seen)
        self.evicted += 1
        return self._end(track)

    def _end(self, track: int) -> EventChange:
        state = self._open.pop(track)
        last = state.last_det
        if last is not None and self._track_hz > 0 and state.last_seen > state.last_point:
            # The last sighting, unless it was kept: a player draws the box until the object left.
            self._keep_point(state, state.last_seen, last, state.last_zones, last_sighting=True)
        before = replace(state.record, last_seen=state.last_seen)
        record = replace(before, end_time=state.last_seen)
        # A better view still waiting for its interval is handed out now, or it would be lost.
        return EventChange("end", record, before, state.pending, self._take_points(state))

    def _keep_point(
        self, state: _Open, now: float, det: Detection, zones: Sequence[str], last_sighting: bool = False
    ) -> None:
        """Keep a track point; past `track_max_points` the event's rate halves (the store thins its points)."""
        if not last_sighting:
            state.seq = 0 if state.seq < 0 else state.seq + state.step
        seq = -1 if last_sighting else state.seq
        state.points.append(TrackPoint(now, tuple(det.bbox), det.confidence, tuple(zones), seq))
        state.kept += 1
        state.last_point = now
        hz = state.record.track_hz
        if state.kept > self._track_max:
            # The store, holding these points, keeps the multiples of the new step (and the last sighting).
            state.step *= 2
            state.kept = state.seq // state.step + 1 + last_sighting
            state.seq -= state.seq % state.step  # the next point takes the next multiple
            hz /= 2
            state.record = replace(state.record, track_hz=hz)
        state.next_point = now + 1.0 / hz - _POINT_SLACK_S

    @staticmethod
    def _take_points(state: _Open) -> tuple[TrackPoint, ...]:
        points = tuple(state.points)
        state.points.clear()
        return points


def _merged(known: tuple[str, ...], new: Sequence[str]) -> tuple[str, ...]:
    """`known` followed by the names in `new` not yet in it, in order; unchanged if none is new."""
    added = [name for name in dict.fromkeys(new) if name not in known]
    return known + tuple(added) if added else known
