"""The event store's reads and deletes, on API threads through the engine's pool.

Lists come newest first in pages; a page's cursor is the (start time, id) of its last event,
opaque to clients, so the next page starts exactly after it however many events arrive meanwhile.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import sqlalchemy as sa

from rtdetr_service.core.results import EventRecord, RuleAnswer
from rtdetr_service.outputs.messages import clip_fields
from rtdetr_service.outputs.store.schema import Database, event_zones_table, events_table, recordings_table
from rtdetr_service.outputs.store.snapshots import SnapshotFiles
from rtdetr_service.outputs.store.tracks import delete_points
from rtdetr_service.outputs.store.vectors import delete_vectors

_TOMBSTONES = 4096  # deleted ids remembered so a late update does not bring an event back
_ID_CHARS = events_table.c.id.type.length


class InvalidCursor(ValueError):
    """A paging cursor that this store did not hand out."""


def encode_cursor(start_time: float, event_id: str) -> str:
    """The opaque cursor for "after this event" in newest-first order."""
    raw = json.dumps([start_time, event_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """(start_time, event_id) from a cursor; InvalidCursor if it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise InvalidCursor("cursor is not valid: pass next_cursor from a previous page unchanged") from exc
    if not isinstance(value, list) or len(value) != 2 or not _finite(value[0]) or not _stored_id(value[1]):
        raise InvalidCursor("cursor is not valid: pass next_cursor from a previous page unchanged")
    return float(value[0]), value[1]


def _finite(value: object) -> bool:
    """A JSON number that is a finite float: an integer of hundreds of digits is not one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _stored_id(value: object) -> bool:
    """Text that fits the id column; no control character (PostgreSQL refuses NUL in any text)."""
    return isinstance(value, str) and 0 < len(value) <= _ID_CHARS and value.isprintable()


@dataclass(frozen=True)
class EventQuery:
    """Which events, newest first: each filter given must match; `after <= start_time < before`."""

    session_id: str | None = None
    camera: str | None = None
    label: str | None = None
    zone: str | None = None
    after: float | None = None
    before: float | None = None
    limit: int = 50
    cursor: str | None = None


@dataclass(frozen=True)
class ClipWindow:
    """The video an event's clip holds: from `pre_s` before its start to `post_s` after its end (or now)."""

    pre_s: float = 5.0
    post_s: float = 5.0

    def has_clip(self, db: Database) -> sa.Label:
        """Whether a kept segment of the event's session overlaps its window, as a column of the events
        query: a correlated EXISTS on the recordings' (session_id, start_time) index, no round trip a row."""
        r, e = recordings_table, events_table
        last = sa.func.coalesce(e.c.end_time, db.now())
        overlaps = sa.exists().where(
            r.c.session_id == e.c.session_id,
            r.c.start_time < last + self.post_s,
            r.c.end_time > e.c.start_time - self.pre_s,
        )
        return overlaps.label("has_clip")


def list_events(db: Database, query: EventQuery, clips: ClipWindow) -> tuple[list[dict], str | None]:
    """One page of events; returns (events, next cursor or None on the last page)."""
    if not 1 <= query.limit <= 500:
        raise ValueError(f"limit must be 1..500, got {query.limit}")
    t = events_table
    stmt = sa.select(t, clips.has_clip(db)).where(*_conditions(query)).order_by(t.c.start_time.desc(), t.c.id.desc())
    with db.engine.connect() as conn:
        rows = conn.execute(stmt.limit(query.limit + 1)).all()
    page = [event_dict(row) for row in rows[: query.limit]]
    if len(rows) <= query.limit:
        return page, None
    last = rows[query.limit - 1]
    return page, encode_cursor(last.start_time, last.id)


def _conditions(query: EventQuery) -> list:
    t = events_table
    where = []
    if query.session_id is not None:
        where.append(t.c.session_id == query.session_id)
    if query.camera is not None:
        where.append(t.c.camera == query.camera)
    if query.label is not None:
        where.append(t.c.label == query.label)
    if query.zone is not None:
        z = event_zones_table
        where.append(sa.exists().where(z.c.event_id == t.c.id, z.c.zone == query.zone))
    if query.after is not None:
        where.append(t.c.start_time >= query.after)
    if query.before is not None:
        where.append(t.c.start_time < query.before)
    if query.cursor is not None:
        start, event_id = decode_cursor(query.cursor)
        where.append(sa.or_(t.c.start_time < start, sa.and_(t.c.start_time == start, t.c.id < event_id)))
    return where


def get_event(db: Database, event_id: str, clips: ClipWindow) -> dict | None:
    """One event as a dict, or None."""
    query = sa.select(events_table, clips.has_clip(db)).where(events_table.c.id == event_id)
    with db.engine.connect() as conn:
        row = conn.execute(query).first()
    return None if row is None else event_dict(row)


def get_events(db: Database, event_ids: Sequence[str], clips: ClipWindow) -> dict[str, dict]:
    """These events as the API shows them, by id (those not stored are left out): a search's hits."""
    t = events_table
    found: dict[str, dict] = {}
    ids = list(dict.fromkeys(event_ids))
    with db.engine.connect() as conn:
        for start in range(0, len(ids), 500):
            stmt = sa.select(t, clips.has_clip(db)).where(t.c.id.in_(ids[start : start + 500]))
            found.update((row.id, event_dict(row)) for row in conn.execute(stmt))
    return found


def identity_events(
    db: Database, global_id: str, limit: int, cursor: str | None, clips: ClipWindow
) -> tuple[list[dict], str | None]:
    """One page of the events of one identity (global_id), oldest first: the object's journey across
    cameras. The cursor is the (start time, id) of the page's last event, as the lists' own."""
    if not 1 <= limit <= 500:
        raise ValueError(f"limit must be 1..500, got {limit}")
    t = events_table
    where = [t.c.global_id == global_id]
    if cursor is not None:
        start, event_id = decode_cursor(cursor)
        where.append(sa.or_(t.c.start_time > start, sa.and_(t.c.start_time == start, t.c.id > event_id)))
    stmt = sa.select(t, clips.has_clip(db)).where(*where).order_by(t.c.start_time, t.c.id).limit(limit + 1)
    with db.engine.connect() as conn:
        rows = conn.execute(stmt).all()
    page = [event_dict(row) for row in rows[:limit]]
    if len(rows) <= limit:
        return page, None
    last = rows[limit - 1]
    return page, encode_cursor(last.start_time, last.id)


def snapshot_path(engine: sa.Engine, files: SnapshotFiles, event_id: str) -> Path | None:
    """The snapshot file of an event; None if there is no such event or no file."""
    with engine.connect() as conn:
        rel = conn.execute(
            sa.select(events_table.c.snapshot_path).where(events_table.c.id == event_id)
        ).scalar_one_or_none()
    if rel is None:
        return None
    path = files.path(rel)
    return path if path.is_file() else None


class Tombstones:
    """The ids of the newest deleted events: a late change of one must not bring it back."""

    def __init__(self, size: int = _TOMBSTONES) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._ids: set[str] = set()
        self._order: deque[str] = deque()

    def add(self, event_id: str) -> None:
        with self._lock:
            if event_id in self._ids:
                return
            self._ids.add(event_id)
            self._order.append(event_id)
            if len(self._order) > self._size:
                self._ids.discard(self._order.popleft())

    def __contains__(self, event_id: str) -> bool:
        with self._lock:
            return event_id in self._ids


def delete_event(engine: sa.Engine, files: SnapshotFiles, tombstones: Tombstones, event_id: str) -> bool:
    """Delete an event, its zones, its track, its vectors and its snapshot file; False if there was no such event."""
    tombstones.add(event_id)
    t = events_table
    with engine.begin() as conn:
        row = conn.execute(sa.select(t.c.snapshot_path, t.c.snapshot_bytes).where(t.c.id == event_id)).first()
        if row is None:
            return False
        conn.execute(sa.delete(event_zones_table).where(event_zones_table.c.event_id == event_id))
        delete_points(conn, [event_id])
        conn.execute(sa.delete(t).where(t.c.id == event_id))
        delete_vectors(conn, [event_id])
    files.remove(row.snapshot_path)
    if row.snapshot_path is not None:
        files.forget_bytes(row.snapshot_bytes)
    return True


def get_records(db: Database, event_ids: Sequence[str]) -> dict[str, EventRecord]:
    """The stored records of these events, by id (those not stored are left out): what Re-ID weighs
    of an earlier look of an object, its camera, times and global_id."""
    t = events_table
    found: dict[str, EventRecord] = {}
    ids = list(dict.fromkeys(event_ids))
    with db.engine.connect() as conn:
        for start in range(0, len(ids), 500):  # SQLite's bound on variables is far above; one page each
            for row in conn.execute(sa.select(t).where(t.c.id.in_(ids[start : start + 500]))):
                found[row.id] = event_record(row)
    return found


def event_record(row) -> EventRecord:
    """An events row as a record."""
    return EventRecord(
        id=row.id,
        session_id=row.session_id,
        camera=row.camera,
        track_id=row.track_id,
        label=row.label,
        class_id=row.class_id,
        start_time=row.start_time,
        end_time=row.end_time,
        last_seen=row.last_seen,
        best_confidence=row.best_confidence,
        best_bbox=tuple(json.loads(row.best_bbox)),
        best_time=row.best_time,
        frame_width=row.frame_width,
        frame_height=row.frame_height,
        zones=tuple(json.loads(row.zones)),
        rules=tuple(json.loads(row.rules)),
        has_snapshot=row.snapshot_path is not None,
        track_hz=row.track_hz,
        global_id=row.global_id,
        description=row.description,
        description_model=row.description_model,
        answers=_answers(row.answers),
    )


def _answers(text: str | None) -> tuple[RuleAnswer, ...]:
    """The stored answers (a JSON list of RuleAnswer.as_data()); a row that does not hold that list
    (written by hand, or by a later version with other fields) reads as the answers it can."""
    if not text:
        return ()
    try:
        items = json.loads(text)
    except ValueError:
        return ()
    answers = []
    for item in items if isinstance(items, list) else ():
        try:
            answers.append(RuleAnswer(**{k: item[k] for k in RuleAnswer.__dataclass_fields__ if k in item}))
        except TypeError:
            continue
    return tuple(answers)


def event_dict(row) -> dict:
    """An events row as the API shows it (its description and answers included: null and [] without)."""
    record = event_record(row)
    out = record.as_dict()
    out["snapshot_url"] = f"/api/v1/events/{row.id}/snapshot.jpg" if record.has_snapshot else None
    return out | clip_fields(row.id, bool(row.has_clip))
