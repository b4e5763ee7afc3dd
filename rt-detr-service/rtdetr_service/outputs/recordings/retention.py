"""What is kept of the recordings: the sweep, run every RECORD_SWEEP_S on the recordings' own thread.

In order:
1. `events` mode: a segment that overlaps no event of its session, each widened by RECORD_PRE_S
   before and RECORD_POST_S after, is deleted once it ended more than RECORD_PRE_S ago (no event
   starting now can reach back to it) and no event of its session is open (one open may still
   need it as it goes on). `continuous` segments are never deleted here.
2. Age: segments that overlap an event (widened) go after RECORD_EVENTS_RETAIN_DAYS, the others
   after RECORD_RETAIN_DAYS, whatever their mode.
3. Size: while all of them weigh more than RECORD_MAX_GB, the oldest go first.

A file goes before its row: a row whose file is gone is harmless, a file no row names would never
be swept. Part files left by a crash (no live writer has touched them for a while) go too.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import sqlalchemy as sa

from rtdetr_service.outputs.recordings.index import RecordingIndex
from rtdetr_service.outputs.recordings.recorder import RECORDINGS_DIR, remove_parts
from rtdetr_service.outputs.store.schema import events_table, recordings_table

log = logging.getLogger(__name__)

_CHUNK = 500  # rows looked at per query


@dataclass(frozen=True)
class RecordingPolicy:
    """How long and how much is kept (seconds and bytes)."""

    pre_s: float
    post_s: float
    retain_s: float
    events_retain_s: float
    max_bytes: int
    stale_part_s: float  # a part file untouched this long is a crashed writer's


@dataclass(frozen=True)
class SweepResult:
    unneeded: int  # events-mode segments no event needs
    expired: int  # past their age limit
    over_size: int  # oldest, to get under RECORD_MAX_GB
    freed_bytes: int
    parts: int  # part files left by a crash

    @property
    def deleted(self) -> int:
        return self.unneeded + self.expired + self.over_size


class RecordingRetention:
    """The sweep over the index and its files, and what it has deleted so far."""

    def __init__(self, index: RecordingIndex, policy: RecordingPolicy, clock: Callable[[], float]) -> None:
        self._index = index
        self._engine = index.db.engine
        self._policy = policy
        self._clock = clock
        self._lock = threading.Lock()
        self.deleted_unneeded = 0
        self.deleted_expired = 0
        self.deleted_over_size = 0
        self.freed_bytes = 0
        self.removed_parts = 0

    def sweep(self, now: float | None = None) -> SweepResult:
        """Run the three steps of the module docstring at `now` (the clock's by default)."""
        now = self._clock() if now is None else now
        p = self._policy
        unneeded, freed_a = self._delete_where(self._unneeded(now))
        expired, freed_b = self._delete_where(
            sa.or_(
                recordings_table.c.end_time < now - p.events_retain_s,
                sa.and_(recordings_table.c.end_time < now - p.retain_s, ~self._overlaps_an_event()),
            )
        )
        over_size, freed_c = self._trim(p.max_bytes)
        root = self._index.data_dir / RECORDINGS_DIR
        parts = remove_parts(root, older_than=now - p.stale_part_s)
        _remove_empty_dirs(root, older_than=now - p.stale_part_s)
        result = SweepResult(unneeded, expired, over_size, freed_a + freed_b + freed_c, parts)
        with self._lock:
            self.deleted_unneeded += unneeded
            self.deleted_expired += expired
            self.deleted_over_size += over_size
            self.freed_bytes += result.freed_bytes
            self.removed_parts += parts
        if result.deleted or parts:
            log.info(
                "recordings retention: deleted %d segment(s) no event needs, %d past their age, %d to stay under "
                "%d bytes (%d bytes freed), %d part file(s) left by a crash",
                unneeded,
                expired,
                over_size,
                p.max_bytes,
                result.freed_bytes,
                parts,
            )
        return result

    def _overlaps_an_event(self) -> sa.ColumnElement[bool]:
        """Whether a recordings row overlaps an event of its session, widened by pre and post."""
        r, e, p = recordings_table, events_table, self._policy
        return sa.exists().where(
            e.c.session_id == r.c.session_id,
            e.c.start_time - p.pre_s <= r.c.end_time,
            sa.or_(e.c.end_time.is_(None), sa.func.coalesce(e.c.end_time, e.c.last_seen) + p.post_s >= r.c.start_time),
        )

    def _unneeded(self, now: float) -> sa.ColumnElement[bool]:
        r, e = recordings_table, events_table
        open_event = sa.exists().where(e.c.session_id == r.c.session_id, e.c.end_time.is_(None))
        return sa.and_(
            r.c.mode == "events",
            r.c.end_time < now - self._policy.pre_s,
            ~open_event,
            ~self._overlaps_an_event(),
        )

    def _delete_where(self, condition: sa.ColumnElement[bool]) -> tuple[int, int]:
        """Delete every segment that meets `condition`; (how many, bytes freed)."""
        r = recordings_table
        deleted = freed = 0
        while True:
            with self._engine.connect() as conn:
                rows = conn.execute(
                    sa.select(r.c.id, r.c.path, r.c.bytes).where(condition).order_by(r.c.start_time).limit(_CHUNK)
                ).all()
            gone = self._remove_files(rows)
            self._index.forget([row.id for row in gone])
            deleted += len(gone)
            freed += sum(row.bytes for row in gone)
            if len(rows) < _CHUNK or not gone:
                return deleted, freed

    def _trim(self, cap: int) -> tuple[int, int]:
        """Delete the oldest segments while all weigh more than `cap`; (how many, bytes freed)."""
        r = recordings_table
        total = self._index.total_bytes()
        deleted = freed = 0
        while total > cap:
            with self._engine.connect() as conn:
                oldest = conn.execute(
                    sa.select(r.c.id, r.c.path, r.c.bytes).order_by(r.c.start_time, r.c.id).limit(_CHUNK)
                ).all()
            chosen = []
            for row in oldest:
                if total <= cap:
                    break
                chosen.append(row)
                total -= row.bytes
            gone = self._remove_files(chosen)
            self._index.forget([row.id for row in gone])
            deleted += len(gone)
            freed += sum(row.bytes for row in gone)
            if not gone:
                break
        return deleted, freed

    def _remove_files(self, rows: list) -> list:
        """Unlink each row's file; the rows whose file is gone now (a file that cannot go keeps its row)."""
        gone = []
        for row in rows:
            try:
                (self._index.data_dir / row.path).unlink(missing_ok=True)
            except OSError as exc:
                log.warning("recordings retention: cannot delete %s: %s", row.path, exc)
                continue
            gone.append(row)
        return gone


def _remove_empty_dirs(root: Path, older_than: float) -> None:
    """Remove the empty day and camera folders under `root` (deepest first) not changed since
    `older_than`: a recorder may have made one a moment ago for the segment it opens."""
    if not root.is_dir():
        return
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        try:
            if folder.stat().st_mtime < older_than:
                folder.rmdir()
        except OSError:
            pass  # not empty, or a writer just made it
