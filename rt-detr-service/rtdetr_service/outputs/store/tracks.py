"""An event's track in the store: its points written in the event row's transaction, kept within the
bound, and read back for the API.

The lifecycle decimates (analytics/events.py); the store holds the bound. When an event's points
reach `max_points` the lifecycle halves its rate, and the store thins the points it holds to that
rate (`spaced`), so a long life keeps one evenly spaced track rather than a dense start and a
sparse rest; should they still be too many (changes lost on the way), every other one goes
(`core.results.thinned`). The first and last points are always kept. Points are keyed by (event,
time): a change written twice adds none twice.
"""

from __future__ import annotations

import json
from typing import Sequence, TypeVar

import sqlalchemy as sa

from rtdetr_service.core.results import TrackPoint, thinned
from rtdetr_service.outputs.store.schema import Database, event_points_table, events_table

_Item = TypeVar("_Item")
_DELETE_CHUNK = 500  # times per DELETE … IN (…): well under SQLite's bound on parameters
# Thinning to half the rate keeps a point once 3/4 of the new interval has passed: every other point
# of a track kept at the old rate, whatever the frame-time jitter, and every point already at the new.
_SPACING = 0.75


def point_rows(event_id: str, points: Sequence[TrackPoint]) -> list[dict]:
    """The event_points rows of an event's points."""
    return [
        {
            "event_id": event_id,
            "t": p.t,
            "x1": float(p.bbox[0]),
            "y1": float(p.bbox[1]),
            "x2": float(p.bbox[2]),
            "y2": float(p.bbox[3]),
            "confidence": float(p.confidence),
            "zones": json.dumps(list(p.zones)),
        }
        for p in points
    ]


def spaced(times: Sequence[float], hz: float) -> list[int]:
    """The indices of the points (times oldest first) a track at `hz` keeps: the first, each one far
    enough from the last kept, and the last."""
    if not times:
        return []
    gap = _SPACING / hz if hz > 0 else 0.0
    kept, last = [0], times[0]
    for i in range(1, len(times) - 1):
        if times[i] - last >= gap:
            kept.append(i)
            last = times[i]
    if len(times) > 1:
        kept.append(len(times) - 1)
    return kept


def within(items: list[_Item], times: Sequence[float], max_points: int, hz: float) -> list[_Item]:
    """One event's points (oldest first, with their times) within `max_points`: thinned to `hz`, then
    every other one while still too many. What is held in memory obeys the same bound as what is stored."""
    if len(items) <= max_points:
        return items
    items = [items[i] for i in spaced(times, hz)]
    while len(items) > max_points:
        items = thinned(items)
    return items


def write_points(conn: sa.Connection, db: Database, rows: list[dict], max_points: int, hz: dict[str, float]) -> None:
    """Insert the rows (a point already stored is left as it is), then thin each event past the bound
    to its rate now (`hz` by event id)."""
    if not rows:
        return
    conn.execute(db.point_insert, rows)
    p = event_points_table
    ids = sorted({row["event_id"] for row in rows})
    over = conn.execute(
        sa.select(p.c.event_id).where(p.c.event_id.in_(ids)).group_by(p.c.event_id).having(sa.func.count() > max_points)
    ).scalars()
    for event_id in list(over):
        _thin(conn, event_id, max_points, hz.get(event_id, 0.0))


def _thin(conn: sa.Connection, event_id: str, max_points: int, hz: float) -> None:
    p = event_points_table
    times = conn.execute(sa.select(p.c.t).where(p.c.event_id == event_id).order_by(p.c.t)).scalars().all()
    kept = set(within(list(times), times, max_points, hz))
    gone = [t for t in times if t not in kept]
    for start in range(0, len(gone), _DELETE_CHUNK):
        chunk = gone[start : start + _DELETE_CHUNK]
        conn.execute(sa.delete(p).where(p.c.event_id == event_id, p.c.t.in_(chunk)))
    conn.execute(sa.update(events_table).where(events_table.c.id == event_id).values(track_truncated=True))


def read_track(engine: sa.Engine, event_id: str) -> dict | None:
    """The event's track as the API shows it, oldest point first; None if there is no such event."""
    t, p = events_table, event_points_table
    with engine.connect() as conn:
        event = conn.execute(sa.select(t.c.track_hz, t.c.track_truncated).where(t.c.id == event_id)).first()
        if event is None:
            return None
        rows = conn.execute(sa.select(p).where(p.c.event_id == event_id).order_by(p.c.t)).mappings().all()
    points = [
        TrackPoint(
            r["t"], (r["x1"], r["y1"], r["x2"], r["y2"]), r["confidence"], tuple(json.loads(r["zones"]))
        ).as_dict()
        for r in rows
    ]
    return {"event_id": event_id, "hz": event.track_hz, "truncated": bool(event.track_truncated), "points": points}


def delete_points(conn: sa.Connection, event_ids: list[str]) -> None:
    """Delete the tracks of these events (with the events, in their transaction)."""
    conn.execute(sa.delete(event_points_table).where(event_points_table.c.event_id.in_(event_ids)))
