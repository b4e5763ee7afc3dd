"""What the event store lets go of: the sweep, run on the writer thread at start and every interval.

In order: a stopped replica's open events that no one has written for `stale_after_s` are closed
(shared databases only); events older than the retention period go, with their zones, tracks, vectors
and snapshots; then the oldest snapshots go while their total is over the size limit.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable

import sqlalchemy as sa

from rtdetr_service.outputs.store.schema import Database, event_zones_table, events_table
from rtdetr_service.outputs.store.snapshots import SnapshotFiles
from rtdetr_service.outputs.store.tracks import delete_points
from rtdetr_service.outputs.store.vectors import delete_vectors

log = logging.getLogger(__name__)

_SWEEP_CHUNK = 500  # expired events deleted per transaction
_TRIM_CHUNK = 100  # oldest snapshots looked at per round while over the size limit


@dataclass(frozen=True)
class RetentionPolicy:
    """How long events are kept, how much their snapshots may weigh, when an open event is abandoned."""

    retention_s: float
    max_snapshot_bytes: int
    stale_after_s: float


def close_open(engine: sa.Engine, written_before: float | None) -> int:
    """End the open events (end time = last seen), only those not written since `written_before`
    when it is given; returns how many."""
    t = events_table
    stale = t.c.end_time.is_(None)
    if written_before is not None:
        stale = sa.and_(stale, t.c.updated_at < written_before)
    with engine.begin() as conn:
        result = conn.execute(sa.update(t).where(stale).values(end_time=t.c.last_seen))
        return max(result.rowcount or 0, 0)


def total_snapshot_bytes(engine: sa.Engine) -> int:
    """What the snapshots on record weigh, by the database."""
    t = events_table
    with engine.connect() as conn:
        total = conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(t.c.snapshot_bytes), 0)).where(t.c.snapshot_path.is_not(None))
        ).scalar_one()
    return int(total)


class Retention:
    """The sweep over one store's database and files, and what it has deleted so far."""

    def __init__(self, db: Database, files: SnapshotFiles, policy: RetentionPolicy, clock: Callable[[], float]) -> None:
        self._engine = db.engine
        self._shared = db.backend != "sqlite"  # replicas may share the database
        self._files = files
        self._policy = policy
        self._clock = clock
        self._lock = threading.Lock()
        self.closed_stale = 0  # open events no run wrote for stale_after_s, closed by the sweep
        self.deleted_events = 0
        self.deleted_snapshots = 0

    def close_left_open(self) -> int:
        """At start, end the events an earlier run left open (end time = last seen).

        SQLite is one process's file: every open event is this service's own, left by a crash.
        PostgreSQL is shared by replicas: an open event may be another replica's, live, so only
        those no one has written for `stale_after_s` are closed (live ones are written at least
        at every heartbeat); the sweep closes the rest of a stopped replica's as they go stale.
        """
        return close_open(self._engine, self._clock() - self._policy.stale_after_s if self._shared else None)

    def sweep(self) -> tuple[int, int]:
        """Close a stopped replica's abandoned open events (shared databases only), delete events
        older than the retention period, then the oldest snapshots while their total is over the
        size limit; returns (events deleted, snapshots deleted)."""
        # SQLite's open events are all this run's (the rest were closed at start); on a shared
        # database, a replica that stopped leaves its open events for the others to close.
        if self._shared:
            self._close_stale()
        deleted_events = self._delete_expired(self._clock() - self._policy.retention_s)
        deleted_snapshots, total = self._trim_snapshots()
        self._files.remove_empty_days()
        self._files.set_total_bytes(total)
        with self._lock:
            self.deleted_events += deleted_events
            self.deleted_snapshots += deleted_snapshots
        if deleted_events or deleted_snapshots:
            log.info(
                "event store retention: deleted %d event(s) older than %.1f days and %d snapshot(s) "
                "to keep snapshots under %d bytes",
                deleted_events,
                self._policy.retention_s / 86400.0,
                deleted_snapshots,
                self._policy.max_snapshot_bytes,
            )
        return deleted_events, deleted_snapshots

    def _close_stale(self) -> None:
        stale_after = self._policy.stale_after_s
        closed = close_open(self._engine, self._clock() - stale_after)
        if closed:
            with self._lock:
                self.closed_stale += closed
            log.warning("event store: closed %d open event(s) no one has written for %.0f s", closed, stale_after)

    def _delete_expired(self, cutoff: float) -> int:
        """Delete events (zones, tracks, vectors, snapshots) that started and were last seen before `cutoff`."""
        t = events_table
        deleted = 0
        while True:
            with self._engine.connect() as conn:
                # start_time < cutoff is implied by the age test and lets the start_time index do the work.
                old = conn.execute(
                    sa.select(t.c.id, t.c.snapshot_path)
                    .where(t.c.start_time < cutoff, sa.func.coalesce(t.c.end_time, t.c.last_seen) < cutoff)
                    .limit(_SWEEP_CHUNK)
                ).all()
            if not old:
                return deleted
            ids = [row.id for row in old]
            with self._engine.begin() as conn:
                conn.execute(sa.delete(event_zones_table).where(event_zones_table.c.event_id.in_(ids)))
                delete_points(conn, ids)
                conn.execute(sa.delete(t).where(t.c.id.in_(ids)))
                delete_vectors(conn, ids)
            for row in old:
                self._files.remove(row.snapshot_path)
            deleted += len(old)

    def _trim_snapshots(self) -> tuple[int, int]:
        """Remove the oldest snapshots while their total is over the limit; (removed, bytes left)."""
        cap = self._policy.max_snapshot_bytes
        total = total_snapshot_bytes(self._engine)
        deleted = 0
        while total > cap:
            oldest = self._oldest_snapshots()
            if not oldest:
                break
            chosen = []
            for row in oldest:
                if total <= cap:
                    break
                chosen.append(row)
                total -= row.snapshot_bytes
            self._forget_snapshots(chosen)
            deleted += len(chosen)
        return deleted, total

    def _oldest_snapshots(self) -> list:
        t = events_table
        with self._engine.connect() as conn:
            return conn.execute(
                sa.select(t.c.id, t.c.snapshot_path, t.c.snapshot_bytes)
                .where(t.c.snapshot_path.is_not(None))
                .order_by(t.c.start_time.asc(), t.c.id.asc())
                .limit(_TRIM_CHUNK)
            ).all()

    def _forget_snapshots(self, rows: list) -> None:
        """The events keep their rows; their snapshots go, from the record and from disk."""
        t = events_table
        with self._engine.begin() as conn:
            conn.execute(
                sa.update(t).where(t.c.id.in_([row.id for row in rows])).values(snapshot_path=None, snapshot_bytes=0)
            )
        for row in rows:
            self._files.remove(row.snapshot_path)
