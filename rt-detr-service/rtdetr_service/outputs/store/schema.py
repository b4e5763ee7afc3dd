"""The store's tables, and the database they live in: its engine, its clock and its dialect's upserts.

SQLAlchemy Core, so one code path serves the embedded default (SQLite in WAL mode under DATA_DIR)
and PostgreSQL through psycopg 3 (`postgresql://…`, `postgres://…` or `postgresql+psycopg://…`).
The tables are made and changed by the migrations (migrate.py), never by `create_all`: these
definitions are what the queries read, and a test checks they match what the migrations make.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Iterator

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from rtdetr_service.core.logs import redact
from rtdetr_service.core.results import EventRecord
from rtdetr_service.outputs.store import vec_extension

log = logging.getLogger(__name__)

_SQLITE_MMAP_BYTES = 1 << 34  # asked for; SQLite gives at most its build's cap

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
    sa.Column("track_hz", sa.Double, nullable=False, server_default="0"),  # the rate its newest points were kept at
    sa.Column("track_truncated", sa.Boolean, nullable=False, server_default=sa.false()),  # points were thinned
    sa.Column("global_id", sa.String(64), nullable=True),  # the cross-camera identity, set by Re-ID only
    sa.Column("description", sa.Text, nullable=True),  # a vision-language model's words: untrusted, bounded
    sa.Column("description_model", sa.String(200), nullable=True),
    sa.Column("answers", sa.Text, nullable=True),  # JSON list of RuleAnswer.as_data(): its rules' questions answered
    sa.Index("ix_events_start_time", "start_time"),
    sa.Index("ix_events_camera_start_time", "camera", "start_time"),
    sa.Index("ix_events_label_start_time", "label", "start_time"),
    sa.Index("ix_events_session_id", "session_id"),
    sa.Index("ix_events_global_id", "global_id"),
)

# One row per zone an event entered: a zone filter is an indexed lookup, not a scan of JSON text.
event_zones_table = sa.Table(
    "event_zones",
    metadata,
    sa.Column("event_id", sa.String(64), primary_key=True),
    sa.Column("zone", sa.String(), primary_key=True),
    sa.Index("ix_event_zones_zone", "zone", "event_id"),
)

# An event's track: one row per point kept (decimated and bounded, see tracks.py), keyed by time, so a
# change sent again adds no point twice.
event_points_table = sa.Table(
    "event_points",
    metadata,
    sa.Column("event_id", sa.String(64), primary_key=True),
    sa.Column("t", sa.Double, primary_key=True),  # frame timestamp, Unix seconds
    sa.Column("seq", sa.BigInteger, nullable=False),  # on the track's grid (TrackPoint.seq); -1: last sighting
    sa.Column("x1", sa.Double, nullable=False),  # the box in source pixels
    sa.Column("y1", sa.Double, nullable=False),
    sa.Column("x2", sa.Double, nullable=False),
    sa.Column("y2", sa.Double, nullable=False),
    sa.Column("confidence", sa.Double, nullable=False),
    sa.Column("zones", sa.Text, nullable=False),  # JSON list: the zones the object was in
)

# One appearance vector per event (vectors.py): float32, L2-normalised, with the model that made it. The
# column is untyped so models of any length live side by side: raw float32 bytes on SQLite (sqlite-vec's
# format), real[] on PostgreSQL (cast to pgvector's vector(dim) in a per-model HNSW index).
event_embeddings_table = sa.Table(
    "event_embeddings",
    metadata,
    sa.Column("event_id", sa.String(64), primary_key=True),
    sa.Column("model_id", sa.String(200), nullable=False),
    sa.Column("dim", sa.Integer, nullable=False),
    sa.Column("embedding", sa.LargeBinary().with_variant(postgresql.ARRAY(sa.REAL), "postgresql"), nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Index("ix_event_embeddings_model_id", "model_id", "event_id"),
)

# One text vector per described event: its description embedded with the search encoder's text tower,
# shaped and stored as event_embeddings, so a search by words can rank by what was said as well.
event_text_embeddings_table = sa.Table(
    "event_text_embeddings",
    metadata,
    sa.Column("event_id", sa.String(64), primary_key=True),
    sa.Column("model_id", sa.String(200), nullable=False),
    sa.Column("dim", sa.Integer, nullable=False),
    sa.Column("embedding", sa.LargeBinary().with_variant(postgresql.ARRAY(sa.REAL), "postgresql"), nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Index("ix_event_text_embeddings_model_id", "model_id", "event_id"),
)

# One row per session: its desired state, shared by every replica, owned by one at a time through a
# lease judged by the database's clock and fenced by `epoch` (see sessions/records.py).
SESSION_STATES = ("pending", "opening", "running", "reconnecting", "moving", "stopped", "failed")
sessions_table = sa.Table(
    "sessions",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("options", sa.Text, nullable=False),  # JSON: what rebuilds the session, stream URL as given
    sa.Column("options_rev", sa.Integer, nullable=False, server_default="1"),
    sa.Column("viewer_token", sa.Text, nullable=False),
    sa.Column("desired", sa.String(8), nullable=False, server_default="run"),
    sa.Column("owner", sa.String(), nullable=True),
    sa.Column("lease_until", sa.Double, nullable=True),  # Unix seconds by the database's clock
    sa.Column("epoch", sa.Integer, nullable=False, server_default="0"),
    sa.Column("state", sa.String(16), nullable=False, server_default="pending"),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.CheckConstraint("desired IN ('run', 'stop')", name="ck_sessions_desired"),
    sa.CheckConstraint(f"state IN ({', '.join(repr(s) for s in SESSION_STATES)})", name="ck_sessions_state"),
    sa.Index("ix_sessions_claim", "desired", "created_at"),
    sa.Index("ix_sessions_owner", "owner"),
)

# One row per finished recording segment (outputs/recordings/): its file, its wall-clock span, and
# the mode it was recorded in (events-mode segments no event needs are deleted by the sweep).
recordings_table = sa.Table(
    "recordings",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("session_id", sa.String(), nullable=False),
    sa.Column("camera", sa.String(), nullable=True),
    sa.Column("path", sa.String(), nullable=False),  # relative to data_dir
    sa.Column("start_time", sa.Double, nullable=False),
    sa.Column("end_time", sa.Double, nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("codec", sa.String(32), nullable=False),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("mode", sa.String(16), nullable=False, server_default="events"),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Index("ix_recordings_camera_start_time", "camera", "start_time"),
    sa.Index("ix_recordings_session_id_start_time", "session_id", "start_time"),
)

_INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}
# The drivers we ship, per backend; a URL that names none gets this one, as other tools write them.
_DRIVERS = {"sqlite": "pysqlite", "postgresql": "psycopg"}
_SCHEMES = {"postgres": "postgresql", "postgresql": "postgresql", "sqlite": "sqlite"}
_MAX_ERROR_CHARS = 300


def words(exc: BaseException) -> str:
    """An error as one short line a user can act on, with no secret in it."""
    orig = getattr(exc, "orig", None)  # SQLAlchemy wraps the driver's error; its text is the useful part
    text = str(orig if orig is not None else exc).strip().splitlines()
    line = " ".join(part.strip() for part in text if part.strip()) or type(exc).__name__
    return redact(line)[:_MAX_ERROR_CHARS]


class Database:
    """The store's database: an engine on its URL (SQLite under data_dir when none is given) and
    the upserts of its dialect. Raises ValueError, without the URL's words, for a URL it cannot use."""

    def __init__(self, url: str | None, data_dir: Path, busy_timeout_s: float) -> None:
        try:
            self._url = shipped_driver(sa.engine.make_url(url or f"sqlite:///{data_dir.resolve() / 'events.db'}"))
            self.safe_url = self._url.render_as_string(hide_password=True)
            self.engine = self._make_engine(busy_timeout_s)
        except sa.exc.ArgumentError:  # its words may quote the URL, password included: not passed on
            raise ValueError(
                "the event store URL is not one it can use: give sqlite:///<path> or "
                "postgresql://user:password@host:port/database"
            ) from None
        self.backend = self.engine.dialect.name
        insert = _INSERTS[self.backend]
        self.insert = insert  # the dialect's INSERT, which has ON CONFLICT
        self.upsert = _event_upsert(insert)
        self.zone_insert = insert(event_zones_table).on_conflict_do_nothing(
            index_elements=[event_zones_table.c.event_id, event_zones_table.c.zone]
        )
        self.point_insert = insert(event_points_table).on_conflict_do_nothing(
            index_elements=[event_points_table.c.event_id, event_points_table.c.t]
        )

    def _make_engine(self, busy_timeout_s: float) -> sa.Engine:
        self.vector_problem: str | None = None  # why vectors cannot be searched; pgvector is asked later
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
                # Reads through a memory map, not a read() call per page: a vector search reads one 3 KB
                # page per stored vector (at 1 M, 2.3 s a search instead of 3.6). SQLite caps the map
                # at its build's limit (2 GB for Python's); past it, pages are read as before.
                cursor.execute(f"PRAGMA mmap_size={_SQLITE_MMAP_BYTES}")
                cursor.close()
                self._load_vec(dbapi_connection)

            return engine
        connect_args = {}
        if self._url.get_backend_name() == "postgresql" and "connect_timeout" not in self._url.query:
            connect_args["connect_timeout"] = 10  # a database that is down fails a write, it does not hang it
        engine = sa.create_engine(self._url, pool_pre_ping=True, connect_args=connect_args)
        if self._url.get_backend_name() == "postgresql":

            @sa.event.listens_for(engine, "connect")
            def _custom_plans(dbapi_connection, _record) -> None:
                # psycopg prepares a statement run five times on a connection, and PostgreSQL may then
                # keep one generic plan for it, made without the values. One statement serves every
                # camera here, and cameras differ by orders of magnitude: a plan made for a camera
                # with a tenth of the events (a merge join over every vector) then serves one with 3
                # (measured at 1 M: 0.2 ms planned for its values, 350 ms on the generic plan).
                # Planning each run costs a fraction of a millisecond.
                with dbapi_connection.cursor() as cursor:
                    cursor.execute("SET plan_cache_mode = force_custom_plan")
                dbapi_connection.commit()

        return engine

    def _load_vec(self, dbapi_connection) -> None:
        """sqlite-vec's distance functions, for the vector index (vectors.py); without them events are
        stored all the same and vector searches say why they cannot run."""
        if self.vector_problem is not None:
            return
        try:
            vec_extension.load(dbapi_connection)
        except vec_extension.ExtensionError as exc:
            self.vector_problem = str(exc)
            log.warning("event store: vector search is off: %s", exc)

    @contextlib.contextmanager
    def write_transaction(self) -> Iterator[sa.Connection]:
        """A transaction for read-then-write: on SQLite it takes the write lock at BEGIN (IMMEDIATE),
        so what it read is still true when it writes; PostgreSQL locks rows with FOR UPDATE instead."""
        with self.engine.begin() as conn:
            if self.backend == "sqlite":
                # pysqlite emits no BEGIN of its own before this statement: the transaction starts here.
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            yield conn

    def now(self) -> sa.ColumnElement[float]:
        """The database's clock in Unix seconds, as an expression: every replica reads the same clock."""
        if self.backend == "postgresql":
            return sa.cast(sa.extract("epoch", sa.func.clock_timestamp()), sa.Double)
        # julianday('now') has millisecond resolution; SQLite 3.40 has no unixepoch('subsec').
        return (sa.func.julianday("now") - 2440587.5) * 86400.0

    def dispose(self) -> None:
        """Close the pool's connections."""
        self.engine.dispose()


def shipped_driver(url: sa.URL) -> sa.URL:
    """`url` with the driver we ship for its backend (psycopg 3 for PostgreSQL, whatever the URL named
    it: `postgres://`, `postgresql://`); ValueError, without the password, for any other database or driver."""
    scheme, _, driver = url.drivername.partition("+")
    backend = _SCHEMES.get(scheme)
    safe = url.render_as_string(hide_password=True)
    if backend is None:
        raise ValueError(
            f"the event store URL is not one it can use: events are kept in SQLite or PostgreSQL, not {scheme!r} "
            f"(got {safe})"
        )
    shipped = _DRIVERS[backend]
    if driver and driver != shipped:
        raise ValueError(
            f"the event store URL is not one it can use: {backend} is reached through {shipped}, not {driver!r}; "
            f"write {backend}://… (got {safe})"
        )
    # SQLite has the one driver Python ships: its URL is left as written.
    return url if backend == "sqlite" else url.set(drivername=f"{backend}+{shipped}")


# Columns only a later stage sets (Re-ID, the VLM stage): NULL in a row means "not carried", never "clear".
KEPT_UNLESS_SET = ("global_id", "description", "description_model", "answers")


def _event_upsert(insert):
    ins = insert(events_table)
    # truncated: set by thinning only; global_id: by Re-ID only; what the VLM said, by its stage only:
    # an event's later changes keep them
    keep = {"id", "snapshot_path", "snapshot_bytes", "track_truncated", *KEPT_UNLESS_SET}
    set_ = {c.name: ins.excluded[c.name] for c in events_table.c if c.name not in keep}
    # A change without a new snapshot keeps the one already on record.
    set_["snapshot_path"] = sa.func.coalesce(ins.excluded.snapshot_path, events_table.c.snapshot_path)
    set_["snapshot_bytes"] = sa.case(
        (ins.excluded.snapshot_path.is_not(None), ins.excluded.snapshot_bytes),
        else_=events_table.c.snapshot_bytes,
    )
    # Re-ID decides an identity once, after the end; the VLM stage's words come on updates of their own:
    # a change that does not carry them (the publisher's next update, the end) keeps them.
    for name in KEPT_UNLESS_SET:
        set_[name] = sa.func.coalesce(ins.excluded[name], events_table.c[name])
    return ins.on_conflict_do_update(index_elements=[events_table.c.id], set_=set_)


def event_row(record: EventRecord, snapshot: tuple[str, int] | None, now: float) -> dict:
    """The events row of a record; `snapshot` is (path, bytes) of a file written with it, if any."""
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
        "track_hz": record.track_hz,
        "global_id": record.global_id,
        "description": record.description,
        "description_model": record.description_model,
        "answers": json.dumps([a.as_data() for a in record.answers]) if record.answers else None,
    }
