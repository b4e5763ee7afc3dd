"""The event store: event rows in a database, best snapshots as JPEG files, written on its own thread.

Publishers hand changes over with `submit()`, which never blocks: a bounded queue, and what does
not fit is dropped and counted, because a slow disk or database must never hold back a session.
Reads come from API threads through the engine's pool. `EventStore` puts the parts together:

    schema.py     the tables; the engine (SQLite in WAL mode under DATA_DIR, or PostgreSQL by URL)
    migrate.py    the schema brought to this version's at open (Alembic; migrations/ holds the revisions)
    writer.py     the writer thread: batches of changes, snapshots, retries, the sweep when due
    tracks.py     each event's track points: written with its row, thinned to the bound, read back
    snapshots.py  the JPEG files on disk and their total size
    retention.py  the sweep: age limit, snapshot size limit, open events of stopped replicas
    queries.py    lists with cursors, one event, its snapshot's path, delete
    vectors.py    each event's appearance vector, and the search over them (sqlite-vec | pgvector)
    identities.py Re-ID's decisions, written as they are made, one at a time per label across replicas
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Sequence

import sqlalchemy as sa

from rtdetr_service.core.results import EventChange
from rtdetr_service.outputs.store import migrate, queries, tracks
from rtdetr_service.outputs.store.identities import Decisions
from rtdetr_service.outputs.store.queries import ClipWindow, EventQuery, Tombstones
from rtdetr_service.outputs.store.retention import Retention, RetentionPolicy, total_snapshot_bytes
from rtdetr_service.outputs.store.schema import Database, words
from rtdetr_service.outputs.store.snapshots import SnapshotFiles
from rtdetr_service.outputs.store.vectors import VectorIndex, open_index
from rtdetr_service.outputs.store.writer import EventWriter, WriterOptions, WriterReport

log = logging.getLogger(__name__)


class EventStore:
    """Stores event changes and their snapshots; see the module docstring for the shape."""

    def __init__(
        self,
        url: str | None,
        data_dir: Path,
        *,
        queue_size: int = 1024,
        batch_max: int = 256,
        retention_days: float = 30.0,
        max_snapshot_bytes: int = 2 * 1024**3,
        sweep_interval_s: float = 600.0,
        stale_after_s: float = 600.0,
        jpeg_quality: int = 85,
        busy_timeout_s: float = 5.0,
        track_max_points: int = 3000,
        clips: ClipWindow | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if (
            queue_size < 1
            or batch_max < 1
            or retention_days <= 0
            or max_snapshot_bytes < 0
            or sweep_interval_s <= 0
            or stale_after_s <= 0
            or track_max_points < 3
        ):
            raise ValueError(
                "queue_size and batch_max must be >= 1, retention_days, sweep_interval_s and stale_after_s > 0, "
                "max_snapshot_bytes >= 0, track_max_points >= 3"
            )
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be 1..100, got {jpeg_quality}")
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._db = Database(url, self.data_dir, busy_timeout_s)
        self.backend = self._db.backend
        self.safe_url = self._db.safe_url
        self._files = SnapshotFiles(self.data_dir, jpeg_quality)
        self._tombstones = Tombstones()
        policy = RetentionPolicy(retention_days * 86400.0, max_snapshot_bytes, stale_after_s)
        self._retention = Retention(self._db, self._files, policy, clock)
        options = WriterOptions(queue_size, batch_max, sweep_interval_s, clock, track_max_points)
        self._writer = EventWriter(self._db, self._files, self._tombstones, self._retention, options)
        self._queue_size = queue_size
        self._clips = clips or ClipWindow()  # has_clip: what an event's clip would hold
        self.closed_at_start = self._open()
        self.vectors: VectorIndex = open_index(self._db)  # the events' appearance vectors and their search
        self.decisions = Decisions(self._db)  # Re-ID's global_ids, kept as they are decided

    def _open(self) -> int:
        """Schema upgraded, events left open closed, snapshot bytes counted; returns how many were closed."""
        try:
            migrate.upgrade(self._db)
            closed = self._retention.close_left_open()
            self._files.set_total_bytes(total_snapshot_bytes(self._db.engine))
        except sa.exc.SQLAlchemyError as exc:
            self._db.dispose()
            raise RuntimeError(f"cannot open the event store at {self.safe_url}: {words(exc)}") from exc
        except RuntimeError as exc:  # a schema this version cannot use, said in words
            self._db.dispose()
            raise RuntimeError(f"cannot open the event store: {exc}") from exc
        log.info("event store: %s at %s", self.backend, self.safe_url)
        if closed:
            log.warning("event store: closed %d event(s) left open by an earlier run (end time = last seen)", closed)
        return closed

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread (once)."""
        self._writer.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Write what is queued (for at most `timeout` seconds), then stop. True once the writer
        has ended; legal from every state, and again after a stop."""
        if not self._writer.drain(timeout):
            log.warning("event store: the writer did not stop within %.1f s", timeout)
            return False
        self._db.dispose()
        return True

    def set_fence(self, fence) -> None:
        """`fence(conn, session_ids) -> refused ids`: run inside each write's transaction, so rows of a
        session another replica has claimed since are never written (sessions/cluster.py sets it)."""
        self._writer.fence = fence

    @property
    def database(self) -> Database:
        """The store's database, for other tables that live in it (sessions)."""
        return self._db

    @property
    def running(self) -> bool:
        return self._writer.running

    def submit(self, changes: Sequence[EventChange]) -> int:
        """Queue changes for the writer without ever blocking; returns how many were dropped."""
        return self._writer.submit(changes)

    def sweep(self) -> tuple[int, int]:
        """Run the retention sweep now; returns (events deleted, snapshots deleted)."""
        return self._retention.sweep()

    # -- reads (API threads) ------------------------------------------------------------------

    def query(
        self,
        *,
        session_id: str | None = None,
        camera: str | None = None,
        label: str | None = None,
        zone: str | None = None,
        after: float | None = None,
        before: float | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[dict], str | None]:
        """Events newest first, filtered; `after <= start_time < before`. Returns (events, next cursor
        or None on the last page)."""
        query = EventQuery(session_id, camera, label, zone, after, before, limit, cursor)
        return queries.list_events(self._db, query, self._clips)

    def get(self, event_id: str) -> dict | None:
        """One event as a dict, or None."""
        return queries.get_event(self._db, event_id, self._clips)

    def documents(self, event_ids: Sequence[str]) -> dict[str, dict]:
        """These events as dicts by id, in one query; those not stored are left out."""
        return queries.get_events(self._db, event_ids, self._clips)

    def identity(self, global_id: str, *, limit: int = 50, cursor: str | None = None) -> tuple[list[dict], str | None]:
        """The events of one identity, oldest first; returns (events, next cursor or None on the last page)."""
        return queries.identity_events(self._db, global_id, limit, cursor, self._clips)

    def records(self, event_ids: Sequence[str]) -> dict:
        """The stored records (`EventRecord`) of these events by id; those not stored are left out."""
        return queries.get_records(self._db, event_ids)

    def track(self, event_id: str) -> dict | None:
        """The event's track ({event_id, hz, truncated, points}), or None if there is no such event."""
        return tracks.read_track(self._db.engine, event_id)

    def snapshot_path(self, event_id: str) -> Path | None:
        """The snapshot file of an event; None if there is no such event or no file."""
        return queries.snapshot_path(self._db.engine, self._files, event_id)

    def delete(self, event_id: str) -> bool:
        """Delete an event, its zones, its track, its vector and its snapshot file; False if there was no such event."""
        return queries.delete_event(self._db.engine, self._files, self._tombstones, event_id)

    def status(self) -> dict:
        """Where the store stands, in numbers and in words."""
        writer = self._writer.report()
        retention = self._retention
        return {
            "backend": self.backend,
            "url": self.safe_url,
            "state": "failing" if writer.failing else "degraded" if writer.dropping else "ok",
            "detail": _detail(writer),
            "running": writer.running,
            "queued": writer.queued,
            "queue_size": self._queue_size,
            "held": writer.held,
            "written": writer.written,
            "dropped": writer.dropped,
            "errors": writer.errors,
            "last_error": writer.last_error,
            "restarts": writer.restarts,
            "snapshots_written": writer.snapshots_written,
            "snapshot_bytes": self._files.total_bytes,
            "retention_deleted_events": retention.deleted_events,
            "retention_deleted_snapshots": retention.deleted_snapshots,
            "closed_at_start": self.closed_at_start,
            "closed_stale": retention.closed_stale,
        }


def _detail(writer: WriterReport) -> str:
    """The writer's state in words: its problems, else where it is in its life."""
    problems = []
    if writer.failing:
        problems.extend(writer.problems or (writer.last_error or "cannot write",))
    if writer.held:
        problems.append(f"{writer.held} event(s) held until the database answers again")
    if writer.dropping:
        problems.append(f"dropping events: the writer cannot keep up ({writer.dropped} dropped)")
    if problems:
        return "; ".join(problems)
    if (writer.started and not writer.running) or writer.stopping:
        return "stopped"
    if not writer.started:
        return "not started"
    return "writing events"
