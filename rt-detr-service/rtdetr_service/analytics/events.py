"""The event lifecycle: one tracked object's life in a session, from first sighting to gone.

Pure logic: no I/O, no clock of its own. Time comes in with each frame (`Frame.timestamp`) or as
`now`, so the same code replays recorded streams and runs under test. A store or a webhook sink
receives the `EventChange`s and does the I/O on its own thread.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

from rtdetr_service.core.results import EventChange, EventRecord, SnapshotRequest
from rtdetr_service.core.types import Detection, Frame


@dataclass(slots=True)
class _Open:
    record: EventRecord  # as of its last change; `last_seen` below is newer
    last_seen: float  # kept here, not in the record: most frames change nothing else
    last_emit: float  # frame time of the last change handed out
    last_snapshot: float  # frame time of the last snapshot requested
    pending: SnapshotRequest | None = None  # a better view that waits for the snapshot interval


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
    ) -> None:
        if end_after_s <= 0 or snapshot_interval_s < 0 or update_interval_s <= 0 or max_open < 1:
            raise ValueError(
                "end_after_s and update_interval_s must be > 0, snapshot_interval_s >= 0 and max_open >= 1"
            )
        self.session_id = session_id
        self.camera = camera
        self._end_after = end_after_s
        self._snapshot_interval = snapshot_interval_s
        self._update_interval = update_interval_s
        self._min_gain = min_confidence_gain
        self._max_open = max_open
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
        )
        self._open[det.track_id] = _Open(record, last_seen=now, last_emit=now, last_snapshot=now)
        return EventChange("new", record, None, SnapshotRequest(record.id, frame, det))

    def _advance(
        self, state: _Open, frame: Frame, det: Detection, zones: Sequence[str], rules: Sequence[str]
    ) -> EventChange | None:
        # Per tracked object per frame: the common case (nothing new) must stay allocation-free.
        now = frame.timestamp
        state.last_seen = max(state.last_seen, now)
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
        return EventChange("update", record, before, snapshot)

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
        before = replace(state.record, last_seen=state.last_seen)
        record = replace(before, end_time=state.last_seen)
        # A better view still waiting for its interval is handed out now, or it would be lost.
        return EventChange("end", record, before, state.pending)


def _merged(known: tuple[str, ...], new: Sequence[str]) -> tuple[str, ...]:
    """`known` followed by the names in `new` not yet in it, in order; unchanged if none is new."""
    added = [name for name in dict.fromkeys(new) if name not in known]
    return known + tuple(added) if added else known
