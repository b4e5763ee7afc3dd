"""The recordings index: one row per finished segment in the store's `recordings` table."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from rtdetr_service.outputs.store.schema import Database, recordings_table


@dataclass(frozen=True, slots=True)
class Segment:
    """A finished segment as the index keeps it; `path` is relative to DATA_DIR."""

    session_id: str
    camera: str | None
    path: str
    start_time: float
    end_time: float
    bytes: int
    codec: str
    width: int
    height: int
    mode: str
    id: str = ""

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "session_id": self.session_id,
            "camera": self.camera,
            "path": self.path,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "bytes": self.bytes,
            "codec": self.codec,
            "width": self.width,
            "height": self.height,
            "mode": self.mode,
        }


def _segment(row) -> Segment:
    return Segment(
        session_id=row.session_id,
        camera=row.camera,
        path=row.path,
        start_time=row.start_time,
        end_time=row.end_time,
        bytes=row.bytes,
        codec=row.codec,
        width=row.width,
        height=row.height,
        mode=row.mode,
        id=row.id,
    )


class RecordingIndex:
    """Adds, lists and forgets segments in the store's database; files live under `data_dir`."""

    def __init__(self, db: Database, data_dir: Path) -> None:
        self.db = db
        self.data_dir = Path(data_dir)

    def add(self, segment: Segment, now: float) -> Segment:
        """Record a finished segment; returns it with its new id."""
        row = segment.as_dict() | {"id": uuid.uuid4().hex, "created_at": now}
        with self.db.engine.begin() as conn:
            conn.execute(sa.insert(recordings_table).values(**row))
        return dataclasses.replace(segment, id=row["id"])

    def list(
        self,
        *,
        camera: str | None = None,
        session_id: str | None = None,
        after: float | None = None,
        before: float | None = None,
        limit: int = 1000,
    ) -> list[Segment]:
        """Segments oldest first that overlap [after, before), of a camera or a session when given."""
        t = recordings_table
        query = sa.select(t).order_by(t.c.start_time.asc(), t.c.id.asc()).limit(limit)
        if camera is not None:
            query = query.where(t.c.camera == camera)
        if session_id is not None:
            query = query.where(t.c.session_id == session_id)
        if after is not None:
            query = query.where(t.c.end_time > after)
        if before is not None:
            query = query.where(t.c.start_time < before)
        with self.db.engine.connect() as conn:
            return [_segment(row) for row in conn.execute(query)]

    def forget(self, ids: list[str]) -> None:
        """Delete these rows (their files are the caller's)."""
        if ids:
            with self.db.engine.begin() as conn:
                conn.execute(sa.delete(recordings_table).where(recordings_table.c.id.in_(ids)))

    def total_bytes(self) -> int:
        """What the indexed segments weigh."""
        with self.db.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.coalesce(sa.func.sum(recordings_table.c.bytes), 0))).scalar_one())

    def file(self, segment: Segment) -> Path:
        """The absolute path of a segment's file."""
        return self.data_dir / segment.path
