"""The event store's writer: one thread that turns queued event changes into rows and snapshot files.

It is a `QueuedSink` (outputs/base.py): `submit()` never blocks, and the queue is fair between
sessions, so a session that floods it loses its own oldest changes. Each batch becomes one
transaction holding the newest record of each event in it, its newest snapshot written first, and
the track points every change of it carried (tracks.py: kept within the bound). A snapshot that
cannot be written costs that snapshot only: the row is written without it, and the store reads
`failing` in words until a snapshot is written again. A transaction that fails is tried once more
a second later; if that fails too, its rows are tried one by one, so a row the database refuses
costs only its own changes.

A database that cannot be reached (down, restarting, failing over, locked) loses nothing: the rows
are held, the newest record of each event with its points (thinned to the same bound), and tried
again with a growing delay (at most `_HOLD_RETRY_S[-1]`) and with every later batch, until it
answers. At most `queue_size` events are held; beyond that the oldest held are dropped, counted.
The retention sweep runs on this thread too, at start and every `sweep_interval_s`. The loop
itself is supervised (outputs/base.py): a bug restarts it.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import sqlalchemy as sa

from rtdetr_service.core.results import EventChange, EventRecord, SnapshotRequest
from rtdetr_service.outputs.base import ENDED, QueuedSink
from rtdetr_service.outputs.store.queries import Tombstones
from rtdetr_service.outputs.store.retention import Retention
from rtdetr_service.outputs.store.schema import KEPT_UNLESS_SET, Database, event_row, words
from rtdetr_service.outputs.store.snapshots import SnapshotFiles
from rtdetr_service.outputs.store.tracks import point_rows, within, write_points

log = logging.getLogger(__name__)

_RETRY_DELAY_S = 1.0
_HOLD_RETRY_S = (1.0, 2.0, 4.0, 5.0)  # between tries of the held rows while the database is unreachable
_DROP_WINDOW_S = 60.0  # drops within this long make the store "degraded"


@dataclass(frozen=True)
class WriterOptions:
    queue_size: int
    batch_max: int
    sweep_interval_s: float
    clock: Callable[[], float]
    track_max_points: int = 3000


@dataclass(frozen=True)
class WriterReport:
    """The writer's counters and state at one moment, read by the store's status."""

    started: bool
    running: bool
    stopping: bool
    failing: bool
    dropping: bool
    queued: int
    written: int
    dropped: int
    errors: int
    last_error: str | None
    problems: tuple[str, ...]  # what keeps it failing, in words
    snapshots_written: int
    restarts: int
    held: int = 0  # events held until the database answers again


@dataclass
class _HeldRow:
    """A row the database could not take yet, the newest of its event, and the changes and points it carries."""

    row: dict
    record: EventRecord
    changes: int
    points: list[dict]


def unreachable(exc: BaseException) -> bool:
    """Whether a failure says the database cannot be reached now (rows held), not that it refused the rows."""
    return isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError)) or bool(
        getattr(exc, "connection_invalidated", False)
    )


def _newest(before: EventRecord | None, record: EventRecord) -> EventRecord:
    """The newer of two records of one event in a batch, with what only a later stage sets (global_id,
    description, answers) kept from the older where the newer does not carry it, as the upsert keeps it."""
    if before is None:
        return record
    kept = {n: getattr(before, n) for n in KEPT_UNLESS_SET if not getattr(record, n) and getattr(before, n)}
    return replace(record, **kept) if kept else record


class EventWriter(QueuedSink):
    """The store's queue and writer thread; see the module docstring for what a batch becomes."""

    name = "event_store"
    wait_s = 0.25

    def __init__(
        self, db: Database, files: SnapshotFiles, tombstones: Tombstones, retention: Retention, options: WriterOptions
    ) -> None:
        super().__init__(queue_size=options.queue_size, batch_max=options.batch_max)
        self._db = db
        self._files = files
        self._tombstones = tombstones
        self._retention = retention
        self._sweep_interval = options.sweep_interval_s
        self._clock = options.clock
        self._track_max = options.track_max_points
        self._next_sweep = -math.inf  # the first is due at start
        self.errors = 0
        self.snapshots_written = 0
        self._snapshot_error: str | None = None  # set while snapshots cannot be written
        # fence(conn, session ids) -> the ids whose rows must not be written (another replica took
        # them), inside the rows' own transaction; set by the sessions' cluster (sessions/cluster.py).
        self.fence: Callable[[sa.Connection, set[str]], set[str]] | None = None
        self.fenced = 0
        self._held: OrderedDict[str, _HeldRow] = OrderedDict()  # writer thread only; oldest first
        self._hold_max = options.queue_size
        self._held_tries = 0
        self._held_retry_at = 0.0
        self.held_count = 0  # len(self._held), for report() from other threads

    def start(self) -> None:
        """Start the writer thread, once; a stopped writer does not start again."""
        if self._stop.is_set():
            raise RuntimeError("this event store was stopped; make a new one")
        if self._thread.ident is None:
            super().start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    # -- publisher side ----------------------------------------------------------------------

    def submit(self, changes: Sequence[EventChange]) -> int:
        """Queue changes without ever blocking; returns how many were dropped.

        When the queue is full, each change pushes out the oldest queued change of the session
        with the most waiting (often the caller's own): the store keeps each event's newest
        state, so an older change is the one to lose, and a flooding session loses its own.
        """
        dropped = 0
        try:
            if self._stop.is_set():
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

    def idle(self) -> None:
        """The held rows when due (see the module docstring), and the retention sweep, at start and
        then every interval while not stopping."""
        if self._held and (self._stop.is_set() or time.monotonic() >= self._held_retry_at):
            held_before = {event_id: h.changes for event_id, h in self._held.items()}
            written = self._changes_in(self._store_rows([], {}, {}, {}), {}, held_before)
            with self._lock:
                self.sent += written
            if self._held and self._stop.is_set():
                lost = sum(h.changes for h in self._held.values())
                self._drop_held(len(self._held))
                log.warning("event store: stopped with %d event change(s) the database never took", lost)
        at_start = self._next_sweep == -math.inf
        if time.monotonic() < self._next_sweep or (self._stop.is_set() and not at_start):
            return
        try:
            self._retention.sweep()
        except Exception as exc:  # noqa: BLE001 - a failed sweep is retried at the next interval
            self.record_failure(exc, "retention sweep failed")
        self._next_sweep = time.monotonic() + self._sweep_interval

    def write(self, batch: list[EventChange]) -> None:
        """The newest record of each event in the batch, its snapshot first; see the module docstring."""
        latest: dict[str, EventRecord] = {}
        for change in batch:
            if change.event.id not in self._tombstones:
                latest[change.event.id] = _newest(latest.get(change.event.id), change.event)
        snapshots: dict[str, SnapshotRequest] = {}
        for change in batch:
            if change.snapshot is not None and change.event.id in latest:
                snapshots[change.event.id] = change.snapshot  # only the newest view of each event is written
        files, added_bytes = self._write_snapshots(latest, snapshots)
        now = self._clock()
        rows = [event_row(record, files.get(event_id), now) for event_id, record in latest.items()]
        changes_of: dict[str, int] = {}
        points: dict[str, list[dict]] = {}
        for change in batch:
            changes_of[change.event.id] = changes_of.get(change.event.id, 0) + 1
            if change.points and change.event.id in latest:
                points.setdefault(change.event.id, []).extend(point_rows(change.event.id, change.points))
        held_before = {event_id: h.changes for event_id, h in self._held.items()}
        written = self._store_rows(rows, latest, changes_of, points)
        written_changes = self._changes_in(written, changes_of, held_before)
        with self._lock:
            self.sent += written_changes
            self.snapshots_written += sum(1 for event_id in files if event_id in written)
        self._files.add_bytes(added_bytes)

    def after_write(self, batch: list) -> None:
        pass  # write() counts what it wrote, and says when it writes again

    def given_up(self, count: int) -> None:
        self._count_dropped(count)
        log.warning("event store: stopped with %d change(s) unwritten", count)

    def _write_snapshots(
        self, records: dict[str, EventRecord], snapshots: dict[str, SnapshotRequest]
    ) -> tuple[dict[str, tuple[str, int]], int]:
        """Each snapshot to its file, each on its own; ({event_id: (path, bytes)}, bytes added)."""
        files: dict[str, tuple[str, int]] = {}
        added = 0
        failed = False
        for event_id, request in snapshots.items():
            try:
                rel, size, change = self._files.write(records[event_id], request)
            except Exception as exc:  # noqa: BLE001 - disk full, a folder gone or a bad frame loses one snapshot
                self._files.remove_partial(records[event_id])
                self._snapshot_failed(exc)
                failed = True
                continue
            files[event_id] = (rel, size)
            added += change
        if files and not failed:
            self._snapshots_recovered()
        return files, added

    def _snapshot_failed(self, exc: BaseException) -> None:
        text = f"cannot write snapshot: {words(exc)}"
        with self._lock:
            first_of_burst = self._snapshot_error is None
            self._snapshot_error = text
            self.errors += 1
            self.last_error = text
        if first_of_burst:
            log.warning("event store: %s; events are still written, without their snapshots", text)

    def _snapshots_recovered(self) -> None:
        with self._lock:
            recovered, self._snapshot_error = self._snapshot_error is not None, None
        if recovered:
            log.info("event store: writing snapshots again")

    def _changes_in(self, written: set[str], changes_of: dict[str, int], held_before: dict[str, int] | None = None):
        """How many changes the written events carried: this batch's, and those held before it."""
        held_before = held_before if held_before is not None else {}
        return sum(changes_of.get(event_id, 0) + held_before.get(event_id, 0) for event_id in written)

    def _store_rows(
        self, rows: list[dict], records: dict[str, EventRecord], changes_of: dict[str, int], points: dict[str, list]
    ) -> set[str]:
        """Upsert the rows, and those held, with their zones and points (by event id); the ids of the events
        written. See the module docstring. While rows are held (the database was unreachable) a batch is tried once."""
        holding = bool(self._held)
        rows, records, changes, points = self._with_held(rows, records, changes_of, points)
        if not rows:
            return set()
        failure = None
        for attempt in (1,) if holding else (1, 2):
            failure = self._transaction(rows, records, points)
            if failure is None:
                self._held_written()
                return {row["id"] for row in rows}
            if attempt == 1 and not holding:
                self._stop.wait(_RETRY_DELAY_S)
        if unreachable(failure):
            self._hold(rows, records, changes, points)
            return set()
        written: set[str] = set()
        for row in rows if len(rows) > 1 else ():
            if self._transaction([row], records, points) is None:
                written.add(row["id"])
        self._held.clear()
        self.held_count = 0
        if written:
            self._rows_recovered()
        lost = sum(n for event_id, n in changes.items() if event_id not in written)
        with self._lock:
            self.dropped += lost  # counted, and said by the failure in words (not as "cannot keep up")
        return written

    def _with_held(
        self, rows: list[dict], records: dict[str, EventRecord], changes_of: dict[str, int], points: dict[str, list]
    ) -> tuple[list[dict], dict[str, EventRecord], dict[str, int], dict[str, list]]:
        """The held rows and these, one per event, the newest record winning (a snapshot held and not
        replaced is kept); the changes each event's row carries, and its points, held ones first."""
        if not self._held:
            return rows, records, dict(changes_of), points
        merged = {event_id: h.row for event_id, h in self._held.items()}
        all_records = {event_id: h.record for event_id, h in self._held.items()}
        changes = {event_id: h.changes for event_id, h in self._held.items()}
        all_points = {event_id: h.points + points.get(event_id, []) for event_id, h in self._held.items()}
        all_points.update((event_id, new) for event_id, new in points.items() if event_id not in self._held)
        for row in rows:
            event_id = row["id"]
            before = merged.pop(event_id, None)
            if before is not None and row.get("snapshot_path") is None and before.get("snapshot_path") is not None:
                row = dict(row, snapshot_path=before["snapshot_path"], snapshot_bytes=before["snapshot_bytes"])
            if before is not None:
                kept = {k: before[k] for k in KEPT_UNLESS_SET if row.get(k) is None and before.get(k) is not None}
                row = {**row, **kept}
            merged[event_id] = row
            changes[event_id] = changes.get(event_id, 0) + changes_of.get(event_id, 0)
        all_records.update(records)
        return list(merged.values()), all_records, changes, all_points

    def _hold(
        self, rows: list[dict], records: dict[str, EventRecord], changes: dict[str, int], points: dict[str, list]
    ) -> None:
        """Keep rows the unreachable database could not take, for the next try (bounded, points too)."""
        first = not self._held
        self._held = OrderedDict(
            (
                row["id"],
                _HeldRow(
                    row,
                    records[row["id"]],
                    changes.get(row["id"], 0),
                    self._held_points(points.get(row["id"], [])),
                ),
            )
            for row in rows
        )
        self._drop_held(len(self._held) - self._hold_max)
        self.held_count = len(self._held)
        delay = _HOLD_RETRY_S[min(self._held_tries, len(_HOLD_RETRY_S) - 1)]
        self._held_tries += 1
        self._held_retry_at = time.monotonic() + delay
        if first:
            log.warning("event store: the database cannot be reached; holding %d event(s) until it can", len(rows))

    def _held_points(self, points: list[dict]) -> list[dict]:
        """An event's points while held: by time, once each, within the bound."""
        points = sorted({p["t"]: p for p in points}.values(), key=lambda p: p["t"])
        return within(points, self._track_max)

    def _drop_held(self, n: int) -> None:
        """Give up the `n` oldest held events (counted as dropped)."""
        lost = 0
        for _ in range(max(0, n)):
            _, held = self._held.popitem(last=False)
            lost += held.changes
        self.held_count = len(self._held)
        if lost:
            self._count_dropped(lost)

    def _held_written(self) -> None:
        if self._held:
            log.info("event store: the database answers again; %d held event(s) written", len(self._held))
        self._held.clear()
        self.held_count = 0
        self._held_tries = 0

    def _transaction(
        self, rows: list[dict], records: dict[str, EventRecord], points: dict[str, list]
    ) -> BaseException | None:
        """One transaction of these rows, their zones and points; the failure (counted, in words), or None.
        With a fence, the rows of sessions another replica has taken since are left out, counted."""
        try:
            if rows:
                fence = self.fence
                with self._db.write_transaction() if fence else self._db.engine.begin() as conn:
                    if fence is not None:
                        refused = fence(conn, {row["session_id"] for row in rows})
                        if refused:
                            self._fenced([row for row in rows if row["session_id"] in refused])
                            rows = [row for row in rows if row["session_id"] not in refused]
                    zone_rows = [{"event_id": r["id"], "zone": z} for r in rows for z in records[r["id"]].zones]
                    if rows:
                        conn.execute(self._db.upsert, rows)
                    if zone_rows:
                        conn.execute(self._db.zone_insert, zone_rows)
                    track_rows = [p for row in rows for p in points.get(row["id"], ())]
                    write_points(conn, self._db, track_rows, self._track_max)
        except Exception as exc:  # noqa: BLE001 - database down, locked or full, or a row it refuses: count, go on
            self.record_failure(exc, "cannot write")
            return exc
        self._rows_recovered()
        return None

    def _fenced(self, rows: list[dict]) -> None:
        """Rows of sessions another replica runs now: this replica lost them, its writes are history."""
        with self._lock:
            self.dropped += len(rows)
            self.fenced += len(rows)
            first = self.fenced == len(rows)
        if first:
            sessions = sorted({row["session_id"] for row in rows})
            log.warning("event store: not writing events of session(s) another replica runs now: %s", sessions)

    def _rows_recovered(self) -> None:
        with self._lock:
            recovered, self._failing = self._failing, False
        if recovered:
            log.info("event store: writing again")

    def record_failure(self, exc: BaseException, what: str) -> None:
        """Count a failure and keep its words; the first of a burst is logged."""
        text = f"{what}: {words(exc)}"
        with self._lock:
            first_of_burst = not self._failing
            self._failing = True
            self.errors += 1
            self.last_error = text
        if first_of_burst:
            log.warning("event store: %s", text)

    # -- state ---------------------------------------------------------------------------------

    def report(self) -> WriterReport:
        """The counters and the state, read together."""
        ended = self.thread_ended()
        with self._lock:
            failing = self._failing or self._snapshot_error is not None or ended
            dropped = self.dropped
            problems = [ENDED] if ended else []
            if self._failing:
                problems.append(self.last_error or "cannot write")
            if self._snapshot_error is not None and self._snapshot_error not in problems:
                problems.append(self._snapshot_error)
            last_error = ENDED if ended else self.last_error
            dropping = time.monotonic() - self._last_drop <= _DROP_WINDOW_S
            written, errors, snapshots_written = self.sent, self.errors, self.snapshots_written
        return WriterReport(
            started=self._thread.ident is not None,
            running=self.running,
            stopping=self._stop.is_set(),
            failing=failing,
            dropping=dropping,
            queued=self._queue.qsize(),
            written=written,
            dropped=dropped,
            errors=errors,
            last_error=last_error,
            problems=tuple(problems),
            snapshots_written=snapshots_written,
            restarts=self.restarts,
            held=self.held_count,
        )
