"""An event's track in the store: its points written in the event row's transaction, kept within the
bound, and read back for the API.

The lifecycle decimates (analytics/events.py) and numbers each point on its track's grid
(`TrackPoint.seq`); the store holds the bound. Past `max_points` an event keeps only the points on
the coarsest grid that fits (multiples of 2, 4, …; the last sighting always), the same points the
lifecycle counts when it halves the rate, so a long life keeps one evenly spaced track from start
to end rather than a dense start and a sparse rest, and the rate the answer names is the points'
rate. Points are keyed by (event, time): a change written twice adds none twice.
"""

from __future__ import annotations

import json
from typing import Sequence

import sqlalchemy as sa

from rtdetr_service.core.results import TrackPoint
from rtdetr_service.outputs.store.schema import Database, event_points_table, events_table


def point_rows(event_id: str, points: Sequence[TrackPoint]) -> list[dict]:
    """The event_points rows of an event's points."""
    return [
        {
            "event_id": event_id,
            "t": p.t,
            "seq": p.seq,
            "x1": float(p.bbox[0]),
            "y1": float(p.bbox[1]),
            "x2": float(p.bbox[2]),
            "y2": float(p.bbox[3]),
            "confidence": float(p.confidence),
            "zones": json.dumps(list(p.zones)),
        }
        for p in points
    ]


def _on(seq: int, step: int) -> bool:
    return seq < 0 or seq % step == 0  # -1: the last sighting, always kept


def grid_step(seqs: Sequence[int], max_points: int) -> int:
    """The finest grid step (1, 2, 4, …) on which at most `max_points` of these points lie."""
    step = 1
    while sum(_on(seq, step) for seq in seqs) > max_points and step < 2**62:
        step *= 2
    return step


def within(rows: list[dict], max_points: int) -> list[dict]:
    """One event's rows within the bound: what is held in memory obeys the same bound as what is stored."""
    step = grid_step([row["seq"] for row in rows], max_points)
    return [row for row in rows if _on(row["seq"], step)]


def write_points(conn: sa.Connection, db: Database, rows: list[dict], max_points: int) -> None:
    """Insert the rows (a point already stored is left as it is), then thin each event past the bound."""
    if not rows:
        return
    conn.execute(db.point_insert, rows)
    p = event_points_table
    ids = sorted({row["event_id"] for row in rows})
    over = conn.execute(
        sa.select(p.c.event_id).where(p.c.event_id.in_(ids)).group_by(p.c.event_id).having(sa.func.count() > max_points)
    ).scalars()
    for event_id in list(over):
        _thin(conn, event_id, max_points)


def _thin(conn: sa.Connection, event_id: str, max_points: int) -> None:
    p = event_points_table
    seqs = conn.execute(sa.select(p.c.seq).where(p.c.event_id == event_id)).scalars().all()
    step = grid_step(seqs, max_points)
    conn.execute(sa.delete(p).where(p.c.event_id == event_id, p.c.seq >= 0, p.c.seq % step != 0))
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
