"""The event store: event rows in a database, best snapshots as JPEG files, written on its own thread.

SQLAlchemy Core, so one code path serves the embedded default (SQLite in WAL mode under DATA_DIR)
and PostgreSQL (`postgresql+psycopg://…`). Publishers hand changes over with `submit()`, which
never blocks: a bounded queue, and what does not fit is dropped and counted, because a slow disk
or database must never hold back a session. The writer thread batches changes into one
transaction, draws and encodes snapshots, and runs the retention sweep. Reads come from API
threads through the engine's pool.

Snapshots live at `<data_dir>/snapshots/<yyyy-mm-dd>/<event_id>.jpg`, the date (UTC) of the
event's start, so one event keeps one file however often its best view improves.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import os
import queue
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable, Sequence

import cv2
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from rtdetr_service.core.fairqueue import FairQueue
from rtdetr_service.core.logs import redact
from rtdetr_service.core.results import EventChange, EventRecord, SnapshotRequest
from rtdetr_service.outputs.annotate import Annotator

log = logging.getLogger(__name__)

metadata = sa.MetaData()

events_table = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("session_id", sa.String(), nullable=False),
    sa.Column("camera", sa.String(), nullable=True),
    sa.Column("track_id", sa.Integer, nullable=False),
    sa.Column("label", sa.String(), nullable=False),
    sa.Column("class_id", sa.Integer, nullable=False),
    sa.Column("start_time", sa.Double, nullable=False),
    sa.Column("end_time", sa.Double, nullable=True),
    sa.Column("last_seen", sa.Double, nullable=False),
    sa.Column("best_confidence", sa.Double, nullable=False),
    sa.Column("best_bbox", sa.Text, nullable=False),  # JSON [x1, y1, x2, y2]
    sa.Column("best_time", sa.Double, nullable=False),
    sa.Column("frame_width", sa.Integer, nullable=False),
    sa.Column("frame_height", sa.Integer, nullable=False),
    sa.Column("zones", sa.Text, nullable=False),  # JSON list, in order of entry
    sa.Column("rules", sa.Text, nullable=False),  # JSON list
    sa.Column("snapshot_path", sa.String(), nullable=True),  # relative to data_dir
    sa.Column("snapshot_bytes", sa.Integer, nullable=False, server_default="0"),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.Index("ix_events_start_time", "start_time"),
    sa.Index("ix_events_camera_start_time", "camera", "start_time"),
    sa.Index("ix_events_label_start_time", "label", "start_time"),
    sa.Index("ix_events_session_id", "session_id"),
)

# One row per zone an event entered: a zone filter is an indexed lookup, not a scan of JSON text.
event_zones_table = sa.Table(
    "event_zones",
    metadata,
    sa.Column("event_id", sa.String(64), primary_key=True),
    sa.Column("zone", sa.String(), primary_key=True),
    sa.Index("ix_event_zones_zone", "zone", "event_id"),
)

_RETRY_DELAY_S = 1.0
_DROP_WINDOW_S = 60.0  # drops within this long make the store "degraded"
_TOMBSTONES = 4096  # deleted ids remembered so a late update does not bring an event back
_SWEEP_CHUNK = 500
_MAX_ERROR_CHARS = 300


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
    if (
        not isinstance(value, list)
        or len(value) != 2
        or isinstance(value[0], bool)
        or not isinstance(value[0], (int, float))
        or not math.isfinite(value[0])
        or not isinstance(value[1], str)
    ):
        raise InvalidCursor("cursor is not valid: pass next_cursor from a previous page unchanged")
    return float(value[0]), value[1]


def _words(exc: BaseException) -> str:
    """An error as one short line a user can act on, with no secret in it."""
    orig = getattr(exc, "orig", None)  # SQLAlchemy wraps the driver's error; its text is the useful part
    text = str(orig if orig is not None else exc).strip().splitlines()
    line = " ".join(part.strip() for part in text if part.strip()) or type(exc).__name__
    return redact(line)[:_MAX_ERROR_CHARS]


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
        clock: Callable[[], float] = time.time,
    ) -> None:
        if (
            queue_size < 1
            or batch_max < 1
            or retention_days <= 0
            or max_snapshot_bytes < 0
            or sweep_interval_s <= 0
            or stale_after_s <= 0
        ):
            raise ValueError(
                "queue_size and batch_max must be >= 1, retention_days, sweep_interval_s and stale_after_s > 0, "
                "max_snapshot_bytes >= 0"
            )
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be 1..100, got {jpeg_quality}")
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._url = sa.engine.make_url(url or f"sqlite:///{self.data_dir.resolve() / 'events.db'}")
            self.safe_url = self._url.render_as_string(hide_password=True)
            self._engine = self._make_engine(busy_timeout_s)
        except sa.exc.ArgumentError:  # its words may quote the URL, password included: not passed on
            raise ValueError(
                "the event store URL is not one it can use: give sqlite:///<path> or "
                "postgresql+psycopg://user:password@host:port/database"
            ) from None
        self.backend = self._engine.dialect.name
        if self.backend == "sqlite":
            self._insert = sqlite.insert
        elif self.backend == "postgresql":
            self._insert = postgresql.insert
        else:
            raise ValueError(f"event store supports sqlite and postgresql URLs, got {self.safe_url}")

        # One queue for every session, fair between them: a session flooding it loses its own oldest.
        self._queue: FairQueue[EventChange] = FairQueue(queue_size)
        self._queue_size = queue_size
        self._batch_max = batch_max
        self._retention_s = retention_days * 86400.0
        self._max_snapshot_bytes = max_snapshot_bytes
        self._sweep_interval = sweep_interval_s
        self._stale_after = stale_after_s
        self._jpeg_quality = jpeg_quality
        self._clock = clock
        self._annotator = Annotator()
        self._upsert = self._build_upsert()
        self._zone_insert = self._insert(event_zones_table).on_conflict_do_nothing(
            index_elements=[event_zones_table.c.event_id, event_zones_table.c.zone]
        )

        self._lock = threading.Lock()  # counters, failure state, tombstones
        self._stopping = threading.Event()
        self._deadline = math.inf
        self._thread: threading.Thread | None = None
        self._tombstones: set[str] = set()
        self._tombstone_order: deque[str] = deque()
        self.written = 0
        self.dropped = 0
        self.errors = 0
        self.last_error: str | None = None
        self.snapshots_written = 0
        self.retention_deleted_events = 0
        self.retention_deleted_snapshots = 0
        self.closed_stale = 0  # open events no run wrote for stale_after_s, closed by the sweep
        self._failing = False
        self._last_drop = -math.inf  # monotonic time of the newest drop
        self._snapshot_bytes = 0

        try:
            metadata.create_all(self._engine)
            self.closed_at_start = self._close_left_open()
            self._snapshot_bytes = self._total_snapshot_bytes()
        except sa.exc.SQLAlchemyError as exc:
            self._engine.dispose()
            raise RuntimeError(f"cannot open the event store at {self.safe_url}: {_words(exc)}") from exc
        log.info("event store: %s at %s", self.backend, self.safe_url)
        if self.closed_at_start:
            log.warning(
                "event store: closed %d event(s) left open by an earlier run (end time = last seen)",
                self.closed_at_start,
            )

    # -- construction -------------------------------------------------------------------------

    def _make_engine(self, busy_timeout_s: float) -> sa.Engine:
        if self._url.get_backend_name() == "sqlite":
            engine = sa.create_engine(self._url)
            busy_ms = int(busy_timeout_s * 1000)

            @sa.event.listens_for(engine, "connect")
            def _pragmas(dbapi_connection, _record) -> None:
                cursor = dbapi_connection.cursor()
                # WAL lets API reads run while the writer writes; NORMAL is durable across an app
                # crash (only a power cut may lose the last commits), at a fraction of FULL's fsyncs.
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
                cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
                cursor.close()

            return engine
        connect_args = {}
        if self._url.get_backend_name() == "postgresql" and "connect_timeout" not in self._url.query:
            connect_args["connect_timeout"] = 10  # a database that is down fails a write, it does not hang it
        return sa.create_engine(self._url, pool_pre_ping=True, connect_args=connect_args)

    def _build_upsert(self):
        ins = self._insert(events_table)
        keep = {"id", "snapshot_path", "snapshot_bytes"}
        set_ = {c.name: ins.excluded[c.name] for c in events_table.c if c.name not in keep}
        # A change without a new snapshot keeps the one already on record.
        set_["snapshot_path"] = sa.func.coalesce(ins.excluded.snapshot_path, events_table.c.snapshot_path)
        set_["snapshot_bytes"] = sa.case(
            (ins.excluded.snapshot_path.is_not(None), ins.excluded.snapshot_bytes),
            else_=events_table.c.snapshot_bytes,
        )
        return ins.on_conflict_do_update(index_elements=[events_table.c.id], set_=set_)

    def _close_left_open(self) -> int:
        """At start, end the events an earlier run left open (end time = last seen).

        SQLite is one process's file: every open event is this service's own, left by a crash.
        PostgreSQL is shared by replicas: an open event may be another replica's, live, so only
        those no one has written for `stale_after_s` are closed (live ones are written at least
        at every heartbeat); the sweep closes the rest of a stopped replica's as they go stale.
        """
        return self._close_open(None if self.backend == "sqlite" else self._clock() - self._stale_after)

    def _close_open(self, written_before: float | None) -> int:
        t = events_table
        stale = t.c.end_time.is_(None)
        if written_before is not None:
            stale = sa.and_(stale, t.c.updated_at < written_before)
        with self._engine.begin() as conn:
            result = conn.execute(sa.update(t).where(stale).values(end_time=t.c.last_seen))
            return max(result.rowcount or 0, 0)

    def _total_snapshot_bytes(self) -> int:
        t = events_table
        with self._engine.connect() as conn:
            total = conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(t.c.snapshot_bytes), 0)).where(t.c.snapshot_path.is_not(None))
            ).scalar_one()
        return int(total)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread (once)."""
        if self._stopping.is_set():
            raise RuntimeError("this event store was stopped; make a new one")
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="event-store-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Write what is queued (for at most `timeout` seconds), then stop. True once the writer
        has ended; legal from every state, and again after a stop."""
        if not self._stopping.is_set():
            self._deadline = time.monotonic() + timeout
            self._stopping.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("event store: the writer did not stop within %.1f s", timeout)
                return False
        self._engine.dispose()
        return True

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, changes: Sequence[EventChange]) -> int:
        """Queue changes for the writer without ever blocking; returns how many were dropped.

        When the queue is full, each change pushes out the oldest queued change of the session
        with the most waiting (often the caller's own): the store keeps each event's newest
        state, so an older change is the one to lose, and a flooding session loses its own.
        """
        dropped = 0
        try:
            if self._stopping.is_set():
                dropped = len(changes)
            else:
                for change in changes:
                    if self._queue.put_nowait(change, change.event.session_id) is not None:
                        dropped += 1
            if dropped:
                self._count_dropped(dropped)
        except Exception:  # noqa: BLE001 - a sink must never break the publisher that feeds it
            log.exception("event store: submit failed")
        return dropped

    def _count_dropped(self, n: int) -> None:
        now = time.monotonic()
        with self._lock:
            first_of_burst = now - self._last_drop > _DROP_WINDOW_S
            self.dropped += n
            self._last_drop = now
            total = self.dropped
        if first_of_burst:
            log.warning("event store: dropping events, the writer cannot keep up (%d dropped so far)", total)

    # -- the writer thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._sweep_safely()
            next_sweep = time.monotonic() + self._sweep_interval
            while True:
                stopping = self._stopping.is_set()
                if stopping and time.monotonic() >= self._deadline:
                    self._drop_queued()
                    return
                batch = self._take(wait=not stopping)
                if batch:
                    self._write(batch)
                elif stopping:
                    return
                if not stopping and time.monotonic() >= next_sweep:
                    self._sweep_safely()
                    next_sweep = time.monotonic() + self._sweep_interval
        except BaseException as exc:  # noqa: BLE001 - say why the writer ended instead of dying silently
            self._record_failure(exc, "the writer thread ended")
            raise

    def _take(self, wait: bool) -> list[EventChange]:
        try:
            first = self._queue.get(timeout=0.25) if wait else self._queue.get_nowait()
        except queue.Empty:
            return []
        batch = [first]
        while len(batch) < self._batch_max:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _drop_queued(self) -> None:
        left = 0
        while True:
            try:
                self._queue.get_nowait()
                left += 1
            except queue.Empty:
                break
        if left:
            self._count_dropped(left)
            log.warning("event store: stopped with %d change(s) unwritten", left)

    def _write(self, batch: list[EventChange]) -> None:
        with self._lock:
            latest = {c.event.id: c.event for c in batch if c.event.id not in self._tombstones}
        snapshots: dict[str, SnapshotRequest] = {}
        for change in batch:
            if change.snapshot is not None and change.event.id in latest:
                snapshots[change.event.id] = change.snapshot  # only the newest view of each event is written
        files, added_bytes, snapshot_ok = self._write_snapshots(latest, snapshots)
        now = self._clock()
        rows = [self._row(record, files.get(event_id), now) for event_id, record in latest.items()]
        zone_rows = [{"event_id": r.id, "zone": z} for r in latest.values() for z in r.zones]

        for attempt in (1, 2):
            try:
                if rows:
                    with self._engine.begin() as conn:
                        conn.execute(self._upsert, rows)
                        if zone_rows:
                            conn.execute(self._zone_insert, zone_rows)
                break
            except Exception as exc:  # noqa: BLE001 - database down, locked or full: count, retry once, go on
                self._record_failure(exc, "cannot write")
                if attempt == 2:
                    self._count_dropped(len(batch))
                    return
                self._stopping.wait(_RETRY_DELAY_S)
        with self._lock:
            self.written += len(batch)
            self.snapshots_written += len(files)
            self._snapshot_bytes += added_bytes
            recovered = self._failing and snapshot_ok
            if recovered:
                self._failing = False
        if recovered:
            log.info("event store: writing again")

    def _write_snapshots(
        self, records: dict[str, EventRecord], snapshots: dict[str, SnapshotRequest]
    ) -> tuple[dict[str, tuple[str, int]], int, bool]:
        """Draw, encode and atomically write each snapshot; ({event_id: (path, bytes)}, bytes added, all ok)."""
        files: dict[str, tuple[str, int]] = {}
        added = 0
        ok = True
        for event_id, request in snapshots.items():
            rel = self._snapshot_rel(records[event_id])
            path = self.data_dir / rel
            tmp = path.with_name(f".{path.name}.tmp")
            try:
                image = self._annotator.annotate(request.frame.image, [request.detection])
                encoded, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self._jpeg_quality])
                if not encoded:
                    raise RuntimeError("JPEG encoding failed")
                data = buffer.tobytes()
                path.parent.mkdir(parents=True, exist_ok=True)
                old = path.stat().st_size if path.exists() else 0
                with open(tmp, "wb") as out:
                    out.write(data)
                os.replace(tmp, path)  # a reader sees the old snapshot or the new one, never half of one
            except Exception as exc:  # noqa: BLE001 - disk full or a bad frame loses one snapshot, not the batch
                tmp.unlink(missing_ok=True)
                self._record_failure(exc, "cannot write snapshot")
                ok = False
                continue
            files[event_id] = (rel, len(data))
            added += len(data) - old
        return files, added, ok

    @staticmethod
    def _snapshot_rel(record: EventRecord) -> str:
        day = time.strftime("%Y-%m-%d", time.gmtime(record.start_time))
        return f"snapshots/{day}/{record.id}.jpg"

    @staticmethod
    def _row(record: EventRecord, snapshot: tuple[str, int] | None, now: float) -> dict:
        return {
            "id": record.id,
            "session_id": record.session_id,
            "camera": record.camera,
            "track_id": record.track_id,
            "label": record.label,
            "class_id": record.class_id,
            "start_time": record.start_time,
            "end_time": record.end_time,
            "last_seen": record.last_seen,
            "best_confidence": record.best_confidence,
            "best_bbox": json.dumps(list(record.best_bbox)),
            "best_time": record.best_time,
            "frame_width": record.frame_width,
            "frame_height": record.frame_height,
            "zones": json.dumps(list(record.zones)),
            "rules": json.dumps(list(record.rules)),
            "snapshot_path": snapshot[0] if snapshot else None,
            "snapshot_bytes": snapshot[1] if snapshot else 0,
            "updated_at": now,
        }

    def _record_failure(self, exc: BaseException, what: str) -> None:
        words = f"{what}: {_words(exc)}"
        with self._lock:
            first_of_burst = not self._failing
            self._failing = True
            self.errors += 1
            self.last_error = words
        if first_of_burst:
            log.warning("event store: %s", words)

    # -- retention ----------------------------------------------------------------------------

    def _sweep_safely(self) -> None:
        try:
            self.sweep()
        except Exception as exc:  # noqa: BLE001 - a failed sweep is retried at the next interval
            self._record_failure(exc, "retention sweep failed")

    def sweep(self) -> tuple[int, int]:
        """Close a stopped replica's abandoned open events (shared databases only), delete events
        older than the retention period, then the oldest snapshots while their total is over the
        size limit; returns (events deleted, snapshots deleted). Runs on the writer thread."""
        t = events_table
        # SQLite's open events are all this run's (the rest were closed at start); on a shared
        # database, a replica that stopped leaves its open events for the others to close.
        closed = 0 if self.backend == "sqlite" else self._close_open(self._clock() - self._stale_after)
        if closed:
            with self._lock:
                self.closed_stale += closed
            log.warning("event store: closed %d open event(s) no one has written for %.0f s", closed, self._stale_after)
        cutoff = self._clock() - self._retention_s
        deleted_events = 0
        while True:
            with self._engine.connect() as conn:
                # start_time < cutoff is implied by the age test and lets the start_time index do the work.
                old = conn.execute(
                    sa.select(t.c.id, t.c.snapshot_path)
                    .where(t.c.start_time < cutoff, sa.func.coalesce(t.c.end_time, t.c.last_seen) < cutoff)
                    .limit(_SWEEP_CHUNK)
                ).all()
            if not old:
                break
            ids = [row.id for row in old]
            with self._engine.begin() as conn:
                conn.execute(sa.delete(event_zones_table).where(event_zones_table.c.event_id.in_(ids)))
                conn.execute(sa.delete(t).where(t.c.id.in_(ids)))
            for row in old:
                self._remove_file(row.snapshot_path)
            deleted_events += len(old)

        total = self._total_snapshot_bytes()
        deleted_snapshots = 0
        while total > self._max_snapshot_bytes:
            with self._engine.connect() as conn:
                oldest = conn.execute(
                    sa.select(t.c.id, t.c.snapshot_path, t.c.snapshot_bytes)
                    .where(t.c.snapshot_path.is_not(None))
                    .order_by(t.c.start_time.asc(), t.c.id.asc())
                    .limit(100)
                ).all()
            if not oldest:
                break
            chosen = []
            for row in oldest:
                if total <= self._max_snapshot_bytes:
                    break
                chosen.append(row)
                total -= row.snapshot_bytes
            with self._engine.begin() as conn:
                conn.execute(
                    sa.update(t)
                    .where(t.c.id.in_([row.id for row in chosen]))
                    .values(snapshot_path=None, snapshot_bytes=0)
                )
            for row in chosen:
                self._remove_file(row.snapshot_path)
            deleted_snapshots += len(chosen)

        self._remove_empty_days()
        with self._lock:
            self._snapshot_bytes = total
            self.retention_deleted_events += deleted_events
            self.retention_deleted_snapshots += deleted_snapshots
        if deleted_events or deleted_snapshots:
            log.info(
                "event store retention: deleted %d event(s) older than %.1f days and %d snapshot(s) "
                "to keep snapshots under %d bytes",
                deleted_events,
                self._retention_s / 86400.0,
                deleted_snapshots,
                self._max_snapshot_bytes,
            )
        return deleted_events, deleted_snapshots

    def _remove_file(self, rel: str | None) -> None:
        if rel is None:
            return
        try:
            (self.data_dir / rel).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("event store: cannot remove %s: %s", rel, exc)

    def _remove_empty_days(self) -> None:
        root = self.data_dir / "snapshots"
        if not root.is_dir():
            return
        for day in root.iterdir():
            try:
                if day.is_dir() and not any(day.iterdir()):
                    day.rmdir()
            except OSError:
                pass  # a snapshot arrived meanwhile, or it is not ours to remove

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
        if not 1 <= limit <= 500:
            raise ValueError(f"limit must be 1..500, got {limit}")
        t = events_table
        where = []
        if session_id is not None:
            where.append(t.c.session_id == session_id)
        if camera is not None:
            where.append(t.c.camera == camera)
        if label is not None:
            where.append(t.c.label == label)
        if zone is not None:
            z = event_zones_table
            where.append(sa.exists().where(z.c.event_id == t.c.id, z.c.zone == zone))
        if after is not None:
            where.append(t.c.start_time >= after)
        if before is not None:
            where.append(t.c.start_time < before)
        if cursor is not None:
            start, event_id = decode_cursor(cursor)
            where.append(sa.or_(t.c.start_time < start, sa.and_(t.c.start_time == start, t.c.id < event_id)))
        stmt = sa.select(t).where(*where).order_by(t.c.start_time.desc(), t.c.id.desc()).limit(limit + 1)
        with self._engine.connect() as conn:
            rows = conn.execute(stmt).all()
        page = [self._event_dict(row) for row in rows[:limit]]
        next_cursor = encode_cursor(rows[limit - 1].start_time, rows[limit - 1].id) if len(rows) > limit else None
        return page, next_cursor

    def get(self, event_id: str) -> dict | None:
        """One event as a dict, or None."""
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(events_table).where(events_table.c.id == event_id)).first()
        return None if row is None else self._event_dict(row)

    def snapshot_path(self, event_id: str) -> Path | None:
        """The snapshot file of an event; None if there is no such event or no file."""
        with self._engine.connect() as conn:
            rel = conn.execute(
                sa.select(events_table.c.snapshot_path).where(events_table.c.id == event_id)
            ).scalar_one_or_none()
        if rel is None:
            return None
        path = self.data_dir / rel
        return path if path.is_file() else None

    def delete(self, event_id: str) -> bool:
        """Delete an event, its zones and its snapshot file; False if there was no such event."""
        with self._lock:
            if event_id not in self._tombstones:
                self._tombstones.add(event_id)
                self._tombstone_order.append(event_id)
                if len(self._tombstone_order) > _TOMBSTONES:
                    self._tombstones.discard(self._tombstone_order.popleft())
        t = events_table
        with self._engine.begin() as conn:
            row = conn.execute(sa.select(t.c.snapshot_path, t.c.snapshot_bytes).where(t.c.id == event_id)).first()
            if row is None:
                return False
            conn.execute(sa.delete(event_zones_table).where(event_zones_table.c.event_id == event_id))
            conn.execute(sa.delete(t).where(t.c.id == event_id))
        self._remove_file(row.snapshot_path)
        if row.snapshot_path is not None:
            with self._lock:
                self._snapshot_bytes = max(0, self._snapshot_bytes - row.snapshot_bytes)
        return True

    def _event_dict(self, row) -> dict:
        record = EventRecord(
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
        )
        out = record.as_dict()
        out["snapshot_url"] = f"/api/v1/events/{row.id}/snapshot.jpg" if record.has_snapshot else None
        return out

    def status(self) -> dict:
        """Where the store stands, in numbers and in words."""
        with self._lock:
            failing, dropped, last_error = self._failing, self.dropped, self.last_error
            dropping = time.monotonic() - self._last_drop <= _DROP_WINDOW_S
            counters = {
                "written": self.written,
                "dropped": dropped,
                "errors": self.errors,
                "last_error": last_error,
                "snapshots_written": self.snapshots_written,
                "snapshot_bytes": self._snapshot_bytes,
                "retention_deleted_events": self.retention_deleted_events,
                "retention_deleted_snapshots": self.retention_deleted_snapshots,
            }
        problems = []
        if failing:
            problems.append(last_error or "cannot write")
        if dropping:
            problems.append(f"dropping events: the writer cannot keep up ({dropped} dropped)")
        started_and_ended = self._thread is not None and not self._thread.is_alive()
        if problems:
            detail = "; ".join(problems)
        elif started_and_ended or self._stopping.is_set():
            detail = "stopped"
        elif self._thread is None:
            detail = "not started"
        else:
            detail = "writing events"
        return {
            "backend": self.backend,
            "url": self.safe_url,
            "state": "failing" if failing else "degraded" if dropping else "ok",
            "detail": detail,
            "running": self.running,
            "queued": self._queue.qsize(),
            "queue_size": self._queue_size,
            **counters,
            "closed_at_start": self.closed_at_start,
            "closed_stale": self.closed_stale,
        }
