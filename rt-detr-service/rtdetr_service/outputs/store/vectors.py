"""The event store's vector indexes: one appearance vector per event (event_embeddings) and one text
vector per described event (event_text_embeddings: its description through the encoder's text tower),
each with the model that made it, searched by cosine similarity with the event filters inside the
query, so a page is never short because of them. Both tables are one code path (`VectorIndex` takes
its table); the image index holds the text one as `texts`, so whoever has one has both. A search by
words asks both and fuses their rankings (`fuse`: reciprocal rank fusion, see there).

The embedding thread writes (`upsert`), API threads read; every call takes its own connection from the
engine's pool. A vector whose event is gone is never kept: `upsert` inserts only while the event exists,
and the store's deletes (queries.py, retention.py) delete both vectors with their events (`delete_vectors`).

SQLite (sqlite-vec): an exact scan, `vec_distance_cosine` over the model's rows with the filters as plain
SQL. Without an event filter the vectors are scanned alone (no event is looked up per row: a vector
never outlives its event); with one, the query starts from the events, whose indexes (camera, label,
time, session) find the few that match, and only their vectors are read: a filter that leaves 3 events
reads 3 vectors, without relying on table statistics the store may not have. The cost per vector is
sqlite-vec's scalar cosine (about 1 µs for 768 numbers here) plus reading its 3 KB page, which the
memory map (schema.py) keeps out of read() calls. Measured at 100 k × 768 on this project's 2-core
machine: 235 ms a query, against 130 ms for a vec0 table's KNN; vec0 would need copies of each event's
camera, label, time and confidence kept in step with every change of the event, and its KNN cannot
test zones or leave ids out; sqlite-vec's int8 distance is slower than its float one, and its binary
one is fast but not exact. Exact also means SQLite's answers are the reference the PostgreSQL index
is checked against.

PostgreSQL (pgvector): vectors are real[]; each model gets a partial HNSW index (cosine) on
`CAST(embedding AS vector(dim))` where `model_id` is that model, so models of any length live side by
side (pgvector's answer to mixed dimensions: an expression index per dimension). A search without an
event filter goes through HNSW. When the filters leave fewer events than the walk would cost (a
number that grows with the square root of the model's vectors, at most `exact_below`), those are
scanned exactly (the events' b-tree indexes find them); otherwise HNSW with pgvector 0.8's iterative
scan in relaxed order, allowed to walk on until the page is full, its rows sorted again; and if a page
still comes back short, the exact scan answers it. Each statement is planned for its own values
(schema.py sets plan_cache_mode): which plan is right depends on how many events the filter leaves.
HNSW is fast when its index sits in shared_buffers (docs/deploy.md sizes them). Without pgvector the
vectors are still stored, and searches say in words what is missing.
"""

from __future__ import annotations

import math
import threading
import zlib
from dataclasses import dataclass
from typing import Literal, NamedTuple, Sequence

import numpy as np
import sqlalchemy as sa

from rtdetr_service.core.search import SearchFilters, SearchHit
from rtdetr_service.outputs.store.migrate import LOCK_KEY
from rtdetr_service.outputs.store.schema import (
    Database,
    event_embeddings_table,
    event_text_embeddings_table,
    event_zones_table,
    events_table,
)

MAX_DIM = 2000  # pgvector indexes vectors of at most 2,000 dimensions; the same bound on both backends
_MODEL_CHARS = event_embeddings_table.c.model_id.type.length
# pgvector: a filter that leaves m of a model's n vectors costs about EXACT_COST_S × m scanned exactly,
# and about WALK_COST_S × depth × n / m through HNSW (the walk passes n / m vectors for each one the
# filter keeps, to fill limit + offset). Measured at 1 M (docs/benchmarks.md, Search): 10 µs a
# vector exactly, 0.1 ms a vector walked in relaxed order (45 ms to find 50 of 1 camera in 10). The
# two meet at m = sqrt(WALK_COST_S / EXACT_COST_S × depth × n): about 2,000 at 10 k vectors, 7,000 at
# 100 k and 22,000 at 1 M for a page of 50. Fewer matches are scanned exactly, at most EXACT_BELOW:
# the count that decides reads up to that many rows.
EXACT_COST_S = 10e-6
WALK_COST_S = 100e-6
EXACT_BELOW = 20_000
_MAX_PAGE = 1000  # limit + offset: deeper pages are not searched (pgvector's ef_search tops out at 1,000 too)
RRF_K = 60  # reciprocal rank fusion's constant, as its authors set it (Cormack et al., SIGIR 2009)

Kind = Literal["image", "text"]
_TABLES = {"image": event_embeddings_table, "text": event_text_embeddings_table}


class VectorsUnavailable(RuntimeError):
    """The database cannot search vectors (no sqlite-vec, no pgvector); the message says what to do."""


class MissingEvent(NamedTuple):
    """An event a model has no vector for, as `missing` lists them; pass the last one back as `after`."""

    start_time: float
    event_id: str


def open_index(db: Database, *, ef_search: int = 100, exact_below: int = EXACT_BELOW) -> VectorIndex:
    """The image vector index of the store's database, for its backend, holding the text one as `texts`."""
    if db.backend == "postgresql":
        index = PgVectorIndex(db, ef_search=ef_search, exact_below=exact_below)
        index.texts = PgVectorIndex(db, ef_search=ef_search, exact_below=exact_below, kind="text")
    else:
        index = SqliteVectorIndex(db)
        index.texts = SqliteVectorIndex(db, kind="text")
    return index


def delete_vectors(conn: sa.Connection, event_ids: list[str]) -> None:
    """Delete the vectors (image and text) of these events, inside the transaction that deletes the events
    (after them: on PostgreSQL an `upsert` waiting on the event row has then either written or found no event)."""
    for e in _TABLES.values():
        conn.execute(sa.delete(e).where(e.c.event_id.in_(event_ids)))


@dataclass(frozen=True, slots=True)
class FusedHit:
    """One event of a search by words: its fused score, and each side's cosine (None: not in its list)."""

    event_id: str
    score: float
    image_score: float | None
    text_score: float | None


def fuse(image: Sequence[SearchHit], text: Sequence[SearchHit], k: int = RRF_K) -> list[FusedHit]:
    """The two rankings of a search by words as one, by reciprocal rank fusion: an event scores
    1/(k + rank) in each list it is in (rank from 1), summed. Image–text and text–text cosines live on
    different scales (a SigLIP's text–text similarities run far higher), so their raw scores are never
    compared; only the order within each list counts. An event both lists found outranks one that only
    one list found at the same rank. The score is scaled by the most it can be, 2/(k + 1): 1.0 is first
    in both lists, 0.5 first in one. Highest first, ties by event id."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ranks: dict[str, list] = {}
    for side, hits in enumerate((image, text)):
        for rank, hit in enumerate(hits, start=1):
            entry = ranks.setdefault(hit.event_id, [0.0, None, None])
            if entry[1 + side] is None:  # a list names an event once; the first place counts
                entry[0] += 1.0 / (k + rank)
                entry[1 + side] = hit.score
    best = 2.0 / (k + 1)
    fused = [
        FusedHit(event_id, total / best, image_score, text_score)
        for event_id, (total, image_score, text_score) in ranks.items()
    ]
    fused.sort(key=lambda hit: (-hit.score, hit.event_id))
    return fused


class VectorIndex:
    """Store, read and search event vectors of one kind, image or text (see the module docstring).
    Vectors are float32 and, by the Embedder contract, L2-normalised; a score is the cosine similarity,
    vectors of different models are never compared, and an event holds one vector of each kind (a
    reindex under another model replaces it)."""

    texts: VectorIndex | None = None  # the image index's sibling over descriptions (open_index sets it)

    def __init__(self, db: Database, *, kind: Kind = "image") -> None:
        self._db = db
        self.kind = kind
        self._table = _TABLES[kind]
        self._lock = threading.Lock()
        self._dims: dict[str, int] = {}  # model → its vectors' length, once seen

    def problem(self) -> str | None:
        """Why vectors cannot be searched here, in words; None when they can (for /ready and search's 503)."""
        return None

    # -- writes (the embedding thread) ----------------------------------------------------------

    def upsert(self, event_id: str, vector: np.ndarray, model_id: str) -> bool:
        """Store (or replace) the event's vector; False when there is no such event (deleted meanwhile)."""
        return self.upsert_many(model_id, [(event_id, vector)]) > 0

    def upsert_many(self, model_id: str, items: Sequence[tuple[str, np.ndarray]]) -> int:
        """Store (or replace) the vectors of a batch of events in one transaction; returns how many were
        stored (the events that no longer exist are skipped)."""
        if not items:
            return 0
        vectors = [_vector(vector) for _, vector in items]
        dim = len(vectors[0])
        if any(len(vec) != dim for vec in vectors):
            raise ValueError("the vectors of one batch of one model must all have one length")
        self._check_model(model_id, dim)
        try:
            self._prepare(model_id, dim)
        except VectorsUnavailable:
            pass  # kept all the same, to be searched once the extension is there
        t, e = events_table, self._table
        stored = {event_id: self._stored(vec) for (event_id, _), vec in zip(items, vectors, strict=True)}
        # The events are looked up and held in the writing transaction (SQLite: the write lock, taken at
        # BEGIN; PostgreSQL: FOR KEY SHARE on their rows), so a delete of one waits and then takes its
        # vector too, or came first and its vector is not written.
        alive = sa.select(t.c.id).where(t.c.id.in_(list(stored))).with_for_update(read=True, key_share=True)
        insert = self._db.insert(e).values(created_at=self._db.now())
        columns = ("model_id", "dim", "embedding", "created_at")
        upsert = insert.on_conflict_do_update(
            index_elements=[e.c.event_id], set_={name: insert.excluded[name] for name in columns}
        )
        with self._db.write_transaction() as conn:
            ids = sorted(conn.execute(alive).scalars())
            if ids:
                rows = [{"event_id": i, "model_id": model_id, "dim": dim, "embedding": stored[i]} for i in ids]
                conn.execute(upsert, rows)
        return len(ids)

    # -- reads (API threads) ----------------------------------------------------------------------

    def get(self, event_id: str) -> tuple[np.ndarray, str] | None:
        """The event's vector and the model that made it, or None."""
        e = self._table
        with self._db.engine.connect() as conn:
            row = conn.execute(sa.select(e.c.embedding, e.c.model_id).where(e.c.event_id == event_id)).first()
        return None if row is None else (self._loaded(row.embedding), row.model_id)

    def count(self, model_id: str) -> int:
        """How many events hold a vector of this model."""
        e = self._table
        with self._db.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).where(e.c.model_id == model_id)).scalar_one())

    def missing(self, model_id: str, limit: int, after: MissingEvent | None = None) -> list[MissingEvent]:
        """Events without a vector of this model (text: described events only), oldest first, from just
        after `after`: a reindex pages through them and, after a restart, starts again where vectors are
        still missing."""
        if not 1 <= limit <= 10_000:
            raise ValueError(f"limit must be 1..10000, got {limit}")
        t, e = events_table, self._table
        stmt = (
            sa.select(t.c.start_time, t.c.id)
            .outerjoin(e, e.c.event_id == t.c.id)
            .where(sa.or_(e.c.event_id.is_(None), e.c.model_id != model_id))
        )
        if self.kind == "text":
            stmt = stmt.where(t.c.description.is_not(None), t.c.description != "")
        if after is not None:
            start, event_id = after
            stmt = stmt.where(sa.or_(t.c.start_time > start, sa.and_(t.c.start_time == start, t.c.id > event_id)))
        stmt = stmt.order_by(t.c.start_time, t.c.id).limit(limit)
        with self._db.engine.connect() as conn:
            return [MissingEvent(row.start_time, row.id) for row in conn.execute(stmt)]

    def search(
        self,
        vector: np.ndarray,
        model_id: str,
        filters: SearchFilters | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[SearchHit]:
        """The events whose vectors of this model are closest to `vector`, highest score first (ties by
        event id), that pass every filter; `offset` skips that many. Raises VectorsUnavailable in words."""
        if limit < 1 or offset < 0 or limit + offset > _MAX_PAGE:
            raise ValueError(f"limit must be >= 1, offset >= 0 and limit + offset <= {_MAX_PAGE}")
        vec = _vector(vector)
        self._prepare(model_id, len(vec))
        return self._search(vec, model_id, filters or SearchFilters(), limit, offset)

    # -- what each backend does its own way ------------------------------------------------------

    def _stored(self, vec: np.ndarray):
        raise NotImplementedError

    def _loaded(self, value) -> np.ndarray:
        raise NotImplementedError

    def _prepare(self, model_id: str, dim: int) -> None:
        """Make the database ready to store and search this model's vectors (raise in words if it cannot)."""

    def _search(
        self, vec: np.ndarray, model_id: str, filters: SearchFilters, limit: int, offset: int
    ) -> list[SearchHit]:
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------------

    def _check_model(self, model_id: str, dim: int) -> None:
        """A model's vectors all have one length: a different one is a bug upstream, refused here."""
        if not (isinstance(model_id, str) and 0 < len(model_id) <= _MODEL_CHARS and model_id.isprintable()):
            raise ValueError(f"model_id must be 1..{_MODEL_CHARS} printable characters")
        with self._lock:
            known = self._dims.get(model_id)
        if known is None:
            e = self._table
            with self._db.engine.connect() as conn:
                known = conn.execute(sa.select(e.c.dim).where(e.c.model_id == model_id).limit(1)).scalar()
            known = dim if known is None else known
            with self._lock:
                self._dims[model_id] = known
        if known != dim:
            raise ValueError(f"model {model_id!r} makes vectors of {known} dimensions, not {dim}")

    def _matching(self, model_id: str, filters: SearchFilters, model_column: sa.ColumnElement | None = None) -> list:
        """The WHERE terms of a search: this model's vectors, of events that pass every filter
        (`model_column`: the model column as the backend should see it)."""
        t, e = events_table, self._table
        # Inlined, not bound: PostgreSQL's partial index for the model matches only a literal model.
        model = e.c.model_id if model_column is None else model_column
        where = [model == sa.bindparam("model_id", model_id, literal_execute=True)]
        if filters.cameras:
            where.append(t.c.camera.in_(filters.cameras))
        if filters.labels:
            where.append(t.c.label.in_(filters.labels))
        if filters.zones:
            z = event_zones_table
            where.append(sa.exists().where(z.c.event_id == t.c.id, z.c.zone.in_(filters.zones)))
        if filters.session_id is not None:
            where.append(t.c.session_id == filters.session_id)
        if filters.after is not None:
            where.append(t.c.start_time >= filters.after)
        if filters.before is not None:
            where.append(t.c.start_time < filters.before)
        if filters.min_confidence is not None:
            where.append(t.c.best_confidence >= filters.min_confidence)
        if filters.exclude:
            where.append(e.c.event_id.not_in(filters.exclude))
        return where

    def _ranked(self, distance: sa.ColumnElement, model_id: str, filters: SearchFilters) -> sa.Select:
        """This model's matching vectors, nearest first by `distance` (ties by event id)."""
        t, e = events_table, self._table
        return (
            sa.select(e.c.event_id, distance.label("distance"))
            .join(t, t.c.id == e.c.event_id)
            .where(*self._matching(model_id, filters))
            .order_by(distance, e.c.event_id)
        )


class SqliteVectorIndex(VectorIndex):
    """Float32 bytes in a BLOB, searched by an exact scan with sqlite-vec's `vec_distance_cosine`."""

    def _stored(self, vec: np.ndarray) -> bytes:
        return vec.astype("<f4").tobytes()

    def _loaded(self, value: bytes) -> np.ndarray:
        return np.frombuffer(value, dtype="<f4").astype(np.float32)

    def problem(self) -> str | None:
        return None if self._db.vector_problem is None else f"vector search is off: {self._db.vector_problem}"

    def _prepare(self, model_id: str, dim: int) -> None:
        if (problem := self.problem()) is not None:
            raise VectorsUnavailable(problem)

    def _search(
        self, vec: np.ndarray, model_id: str, filters: SearchFilters, limit: int, offset: int
    ) -> list[SearchHit]:
        t, e = events_table, self._table
        query = sa.bindparam("query", self._stored(vec), type_=sa.LargeBinary)
        distance = sa.func.vec_distance_cosine(e.c.embedding, query)
        if _filters_events(filters):
            # From the events: "+model_id" keeps SQLite from driving the scan through the vectors' model
            # index, so it starts from the events' own indexes and looks each match's vector up by id.
            model = sa.literal_column(f"+{e.name}.{e.c.model_id.name}", type_=e.c.model_id.type)
            stmt = (
                sa.select(e.c.event_id, distance.label("distance"))
                .select_from(t)
                .join(e, e.c.event_id == t.c.id)
                .where(*self._matching(model_id, filters, model))
            )
        else:  # the vectors alone: no event lookup per row
            stmt = sa.select(e.c.event_id, distance.label("distance")).where(*self._matching(model_id, filters))
        stmt = stmt.where(e.c.dim == len(vec)).order_by(distance, e.c.event_id).limit(limit).offset(offset)
        with self._db.engine.connect() as conn:
            return [SearchHit(row.event_id, 1.0 - float(row.distance)) for row in conn.execute(stmt)]


class _Vector(sa.types.UserDefinedType):
    """pgvector's `vector(dim)`, for casts; values go over the wire in its text form."""

    cache_ok = True

    def __init__(self, dim: int | None = None) -> None:
        self.dim = dim

    def get_col_spec(self, **_kw) -> str:
        return "vector" if self.dim is None else f"vector({self.dim})"

    @staticmethod
    def text(value) -> str:
        return "[" + ",".join(repr(float(x)) for x in value) + "]"

    def bind_processor(self, dialect):
        return self.text

    def literal_processor(self, dialect):  # for EXPLAIN and printed SQL
        return lambda value: f"'{self.text(value)}'"


class PgVectorIndex(VectorIndex):
    """real[] rows, a partial HNSW index per model on their cast to vector(dim) (see the module docstring)."""

    HNSW_M = 16  # pgvector's defaults: the graph's degree, and the candidates kept while building it
    HNSW_EF_CONSTRUCTION = 64

    def __init__(
        self, db: Database, *, ef_search: int = 100, exact_below: int = EXACT_BELOW, kind: Kind = "image"
    ) -> None:
        super().__init__(db, kind=kind)
        if not 1 <= ef_search <= 1000 or exact_below < 0:
            raise ValueError("ef_search must be 1..1000 (pgvector's range), exact_below >= 0")
        self._ef_search = ef_search
        self._exact_below = exact_below
        self._indexed: set[tuple[str, int]] = set()
        self._problem: str | None = None
        self._checked = False  # whether the server was asked for pgvector (once per process)

    def problem(self) -> str | None:
        """Asked of the server once (restart the service after installing pgvector); an unreachable
        database is the store's to report, so it leaves the question open."""
        with self._lock:
            if self._checked or self._problem is not None:
                return self._problem
        try:
            with self._db.engine.connect() as conn:
                available = self._has_pgvector(conn)
        except sa.exc.SQLAlchemyError:
            return None
        with self._lock:
            self._checked = True
            if not available:
                self._problem = self._missing_words()
            return self._problem

    @staticmethod
    def _has_pgvector(conn: sa.Connection) -> bool:
        query = "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'"
        return conn.exec_driver_sql(query).scalar() is not None

    def _missing_words(self) -> str:
        return (
            f"the PostgreSQL server at {self._db.safe_url} has no pgvector extension: vectors are kept "
            "but cannot be searched; run a server with pgvector 0.8 or newer (the pgvector/pgvector image)"
        )

    def _stored(self, vec: np.ndarray) -> list[float]:
        return vec.tolist()

    def _loaded(self, value) -> np.ndarray:
        return np.asarray(value, dtype=np.float32)

    def index_name(self, model_id: str, dim: int) -> str:
        """The HNSW index of one model on this kind's table: named by a hash of its id, which may hold any
        character (at most 43 characters, under PostgreSQL's 63)."""
        return f"ix_{self._table.name}_hnsw_{zlib.crc32(model_id.encode()):08x}_{dim}"

    def _prepare(self, model_id: str, dim: int) -> None:
        """pgvector created if the server has it, and this model's index made, once per process (a server
        without pgvector is asked once: restart the service after installing it)."""
        with self._lock:
            if (model_id, dim) in self._indexed:
                return
            if self._problem is not None:
                raise VectorsUnavailable(self._problem)
        if dim > MAX_DIM:
            raise ValueError(f"vectors of {dim} dimensions: pgvector indexes at most {MAX_DIM}")
        literal = "'" + model_id.replace("'", "''") + "'"
        with self._db.engine.begin() as conn:
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(LOCK_KEY)))  # replicas take turns with DDL
            if not self._has_pgvector(conn):
                self._problem = self._missing_words()
                raise VectorsUnavailable(self._problem)
            conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS vector")
            conn.exec_driver_sql(
                f"CREATE INDEX IF NOT EXISTS {self.index_name(model_id, dim)} ON {self._table.name} "
                f"USING hnsw ((CAST(embedding AS vector({dim}))) vector_cosine_ops) "
                f"WITH (m = {self.HNSW_M}, ef_construction = {self.HNSW_EF_CONSTRUCTION}) "
                f"WHERE model_id = {literal}"
            )
        with self._lock:
            self._indexed.add((model_id, dim))

    def _search(
        self, vec: np.ndarray, model_id: str, filters: SearchFilters, limit: int, offset: int
    ) -> list[SearchHit]:
        e = self._table
        dim = len(vec)
        query = sa.cast(sa.bindparam("query", vec, type_=_Vector(dim)), _Vector(dim))
        indexed = sa.cast(e.c.embedding, _Vector(dim)).op("<=>", return_type=sa.Double)(query)
        # The same distance on the untyped cast: no index serves it, so the scan is exact.
        exact = sa.cast(e.c.embedding, _Vector()).op("<=>", return_type=sa.Double)(query)
        with self._db.engine.begin() as conn:
            # Without an event filter HNSW finds a page in one short walk at any size (at 10 k vectors
            # the exact scan took 60 ms, the walk a few); a filter makes it walk past what the filter
            # drops, so a filter that leaves few events is scanned exactly instead.
            if _filters_events(filters):
                below = self._exact_limit(conn, model_id, dim, limit + offset)
                if self._fewer_than(conn, model_id, filters, below):
                    return self._hits(conn, self._ranked(exact, model_id, filters), limit, offset)
            conn.exec_driver_sql(f"SET LOCAL hnsw.ef_search = {max(self._ef_search, limit + offset)}")
            # Relaxed: each further pass over the graph may bring a nearer vector than the last pass's
            # farthest, so the first limit + offset the index gives are sorted again here (`_resorted`).
            # Strict order costs far more for a filtered search that must walk on: at 1 M vectors, 1
            # camera in 10, 5 times the buffers for the same page (docs/benchmarks.md, Search).
            conn.exec_driver_sql("SET LOCAL hnsw.iterative_scan = relaxed_order")
            # Walk the graph as far as it takes to fill the page, within a bounded memory.
            conn.exec_driver_sql("SET LOCAL hnsw.max_scan_tuples = 2147483647")
            conn.exec_driver_sql("SET LOCAL hnsw.scan_mem_multiplier = 16")
            hits = self._hits(
                conn, self._resorted(self._ranked(indexed, model_id, filters), limit + offset), limit, offset
            )
            if len(hits) < limit:  # the graph could not fill it: the exact scan can, if there is more
                hits = self._hits(conn, self._ranked(exact, model_id, filters), limit, offset)
            return hits

    def _exact_limit(self, conn: sa.Connection, model_id: str, dim: int, depth: int) -> int:
        """Below how many matches an exact scan is cheaper than the walk (see EXACT_COST_S), from the
        model's vector count as PostgreSQL's statistics have it (the HNSW index's reltuples, kept by
        autovacuum: no count of its own); `exact_below` while they have none, and never above it."""
        if self._exact_below == 0:
            return 0
        query = sa.text("SELECT reltuples FROM pg_class WHERE oid = to_regclass(:name)")
        vectors = conn.execute(query, {"name": self.index_name(model_id, dim)}).scalar()
        if vectors is None or vectors <= 0:
            return self._exact_below
        meet = math.sqrt(WALK_COST_S / EXACT_COST_S * depth * vectors)
        return max(1, min(self._exact_below, int(meet)))

    def _fewer_than(self, conn: sa.Connection, model_id: str, filters: SearchFilters, n: int) -> bool:
        """Whether fewer than n vectors pass the filters (counts at most n rows)."""
        if n == 0:
            return False
        t, e = events_table, self._table
        some = sa.select(sa.literal(1)).select_from(e).join(t, t.c.id == e.c.event_id)
        some = some.where(*self._matching(model_id, filters)).limit(n).subquery()
        return conn.execute(sa.select(sa.func.count()).select_from(some)).scalar_one() < n

    @staticmethod
    def _resorted(ranked: sa.Select, depth: int) -> sa.Select:
        """The first `depth` rows the index gives for `ranked`, fetched once (a materialized CTE, so the
        planner cannot fold it back into one scan) and ordered again by distance, then event id. The
        order is by `distance + 0`: PostgreSQL 17 and later take the CTE's own ORDER BY as the order of
        its rows and would skip a sort by `distance` itself, which is the sort this is for."""
        first = ranked.limit(depth).cte("found").prefix_with("MATERIALIZED")
        return sa.select(first.c.event_id, first.c.distance).order_by(first.c.distance + 0, first.c.event_id)

    @staticmethod
    def _hits(conn: sa.Connection, ranked: sa.Select, limit: int, offset: int) -> list[SearchHit]:
        rows = conn.execute(ranked.limit(limit).offset(offset)).all()
        return [SearchHit(row.event_id, 1.0 - float(row.distance)) for row in rows]


def _filters_events(filters: SearchFilters) -> bool:
    """Whether a search must read the events (any filter but `exclude`, which names vectors' own ids)."""
    return bool(
        filters.cameras
        or filters.labels
        or filters.zones
        or filters.session_id is not None
        or filters.after is not None
        or filters.before is not None
        or filters.min_confidence is not None
    )


def _vector(vector) -> np.ndarray:
    """A vector as float32, checked: one dimension, 1..MAX_DIM long, finite, not all zero."""
    vec = np.asarray(vector, dtype=np.float32)
    if vec.ndim != 1 or not 1 <= len(vec) <= MAX_DIM:
        raise ValueError(f"a vector is one row of 1..{MAX_DIM} numbers, got shape {vec.shape}")
    if not np.all(np.isfinite(vec)) or not np.any(vec):
        raise ValueError("a vector must be finite and not all zero")
    return vec
