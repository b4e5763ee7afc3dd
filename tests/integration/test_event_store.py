"""The event store against real databases: SQLite in a temporary directory and a real PostgreSQL
server started for the test session. Changes come from the real event lifecycle; the writer
thread, the snapshots on disk and the retention sweep are the real ones."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import sqlite3
import time

import cv2
import numpy as np
import pytest
import sqlalchemy as sa

from rtdetr_service.analytics.events import EventLifecycle
from rtdetr_service.core.types import Detection, Frame
from rtdetr_service.outputs.store.event_store import EventStore
from rtdetr_service.outputs.store.queries import InvalidCursor, encode_cursor
from rtdetr_service.sessions.records import SessionRecord, SessionRecords

from servers import running_postgres
from support import STORE_NOW, free_port, make_settings, run_service

NOW = STORE_NOW  # the stores' clock in these tests
DAY = 86400.0


def wait_until(predicate, timeout: float = 5.0, what: str = "condition"):
    """Poll `predicate` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


# -- changes from the real lifecycle -----------------------------------------------------------


def noise(width: int = 160, height: int = 120, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def seen(
    lifecycle: EventLifecycle,
    t: float,
    *tracks: int,
    label: str = "person",
    class_id: int = 0,
    zones: tuple[str, ...] = (),
    image: np.ndarray | None = None,
    confidence: float = 0.6,
):
    """The changes of one frame at time `t` in which `tracks` are seen."""
    image = noise() if image is None else image
    frame = Frame(image, 0, t, 0.0)
    h, w = image.shape[:2]
    box = (w * 0.1, h * 0.2, w * 0.5, h * 0.9)
    detections = [Detection(class_id, label, box, confidence, track) for track in tracks]
    return lifecycle.update(frame, detections, zones_of={track: zones for track in tracks})


def lifecycle(camera: str | None = "gate", session: str = "session-1") -> EventLifecycle:
    return EventLifecycle(session, camera, end_after_s=5.0, snapshot_interval_s=1.0, update_interval_s=5.0)


def visible(store: EventStore, event_id: str, **expect):
    """The stored event once it is there with the expected values, else None."""
    event = store.get(event_id)
    if event is None or any(event[key] != value for key, value in expect.items()):
        return None
    return event


# -- behaviour on both backends ----------------------------------------------------------------


def test_submitted_changes_are_stored_with_a_jpeg_snapshot_of_the_source_size(make_store, backend):
    store = make_store()
    life = lifecycle()
    (new,) = seen(life, NOW - 60, 1, image=noise(320, 240), zones=("door",))

    assert store.submit([new]) == 0
    event = wait_until(lambda: visible(store, new.event.id, has_snapshot=True), what="the new event")

    assert event["session_id"] == "session-1" and event["camera"] == "gate" and event["label"] == "person"
    assert event["start_time"] == NOW - 60 and event["end_time"] is None and event["active"] is True
    assert event["zones"] == ["door"] and event["frame"] == {"width": 320, "height": 240}
    assert event["snapshot_url"] == f"/api/v1/events/{new.event.id}/snapshot.jpg"
    path = store.snapshot_path(new.event.id)
    day = time.strftime("%Y-%m-%d", time.gmtime(NOW - 60))
    assert path == store.data_dir / "snapshots" / day / f"{new.event.id}.jpg"
    image = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape == (240, 320, 3)
    assert not list(path.parent.glob(".*.tmp"))

    (end,) = life.close_all()
    store.submit([end])
    ended = wait_until(lambda: visible(store, new.event.id, active=False), what="the end of the event")
    assert ended["end_time"] == NOW - 60 and ended["has_snapshot"]  # an end without a new view keeps the old one

    status = store.status()
    assert status["backend"] == backend and status["state"] == "ok" and status["running"]
    assert status["written"] == 2 and status["dropped"] == 0 and status["errors"] == 0
    assert status["snapshots_written"] == 1 and status["snapshot_bytes"] == path.stat().st_size


def test_filters_and_cursor_pages_cover_every_event_once(make_store):
    store = make_store()
    gate, yard = lifecycle("gate"), lifecycle("yard")
    changes, expected = [], []
    for i in range(12):
        life = gate if i % 2 else yard
        label = "car" if i % 3 == 0 else "person"
        tracks = (i, 100 + i) if i == 7 else (i,)  # equal start times, split by the first page boundary
        batch = seen(life, NOW - 1000 + i * 10, *tracks, label=label, zones=("door",) if i % 4 == 0 else ())
        changes += batch
        expected += [c.event for c in batch if c.kind == "new"]
    changes += gate.close_all() + yard.close_all()
    store.submit(changes)
    wait_until(lambda: sum(not e["active"] for e in store.query(limit=500)[0]) == 13, what="13 ended events")

    newest_first = sorted(expected, key=lambda r: (r.start_time, r.id), reverse=True)
    pages, cursor = [], None
    while True:
        page, cursor = store.query(limit=5, cursor=cursor)
        pages.append([e["id"] for e in page])
        if cursor is None:
            break
    assert [len(p) for p in pages] == [5, 5, 3]
    assert [i for p in pages for i in p] == [r.id for r in newest_first]

    def ids(**filters) -> set[str]:
        return {e["id"] for e in store.query(limit=500, **filters)[0]}

    assert ids(camera="gate") == {r.id for r in expected if r.camera == "gate"}
    assert ids(label="car") == {r.id for r in expected if r.label == "car"}
    assert ids(zone="door") == {r.id for r in expected if "door" in r.zones} and len(ids(zone="door")) == 3
    assert ids(zone="nowhere") == set()
    window = ids(after=NOW - 950, before=NOW - 920)
    assert window == {r.id for r in expected if NOW - 950 <= r.start_time < NOW - 920}
    assert len(window) == 4  # i = 5, 6, 7 (two objects)
    assert ids(camera="yard", label="car", zone="door") == {
        r.id for r in expected if r.camera == "yard" and r.label == "car" and "door" in r.zones
    }
    assert ids(session_id="session-1") == {r.id for r in expected}
    assert ids(session_id="other") == set()


def test_a_malformed_cursor_or_limit_is_refused_in_words(make_store):
    store = make_store()
    for bad in ("not a cursor!", encode_cursor(1.0, "x")[:-3] + "@@@", "e30", "WyJhIiwiYiJd", "WzEuMCwyXQ"):
        with pytest.raises(InvalidCursor, match="cursor is not valid"):
            store.query(cursor=bad)
    for limit in (0, 501):
        with pytest.raises(ValueError, match="limit"):
            store.query(limit=limit)
    assert store.query(cursor=encode_cursor(NOW, "z")) == ([], None)


def _cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "raw",
    [
        "[1" + "0" * 320 + ',"a"]',  # no float holds it: once OverflowError, a 500
        "[-" + "9" * 320 + ',"a"]',
        '[1e400,"a"]',
        '[1.0,"a\\u0000b"]',  # PostgreSQL refuses NUL in any text: once a 500 there
        '[1.0,"a\\nb"]',
        '[1.0,""]',
        '[1.0,"' + "a" * 65 + '"]',
    ],
)
def test_a_cursor_with_a_number_or_id_no_event_has_is_refused_on_both_backends(make_store, raw):
    store = make_store()
    with pytest.raises(InvalidCursor, match="cursor is not valid"):
        store.query(cursor=_cursor(raw))


def test_delete_removes_the_row_its_zones_and_its_snapshot_and_it_stays_deleted(make_store):
    store = make_store()
    life = lifecycle()
    (new,) = seen(life, NOW - 10, 1, zones=("door",))
    store.submit([new])
    wait_until(lambda: store.snapshot_path(new.event.id), what="the snapshot")
    path = store.snapshot_path(new.event.id)

    assert store.delete(new.event.id) is True

    assert store.get(new.event.id) is None and store.snapshot_path(new.event.id) is None
    assert not path.exists() and store.query(zone="door") == ([], None)
    assert store.delete(new.event.id) is False
    # A late change of the deleted event must not bring it back.
    late = seen(life, NOW - 9, 1, zones=("door", "yard"))
    (other,) = seen(lifecycle(), NOW - 5, 2)
    store.submit([*late, *life.close_all(), other])
    wait_until(lambda: store.get(other.event.id), what="the later event")
    assert store.get(new.event.id) is None
    assert store.status()["snapshot_bytes"] == store.snapshot_path(other.event.id).stat().st_size


def test_events_survive_a_restart_and_events_left_open_are_closed(make_store):
    first = make_store()
    life = lifecycle()
    (ended,) = seen(life, NOW - 100, 1)
    store_changes = [ended, *life.close_all()]
    open_life = lifecycle()
    seen(open_life, NOW - 50, 2)
    store_changes += seen(open_life, NOW - 49, 2, confidence=0.5)  # quiet: nothing
    (left_open,) = seen(open_life, NOW - 44, 2)  # heartbeat: last seen moves
    assert left_open.kind == "update"
    store_changes += [left_open]
    first.submit(store_changes)
    wait_until(lambda: visible(first, left_open.event.id, last_seen=NOW - 44), what="the heartbeat")
    assert first.stop() is True  # the session never ended the open event: as after a crash

    # (past the time after which an open event no one writes is taken as abandoned: on PostgreSQL,
    # shared by replicas, a younger one may be another replica's, live; see the next test)
    second = make_store(clock=lambda: NOW + 601)

    assert second.closed_at_start == 1 and second.status()["closed_at_start"] == 1
    reopened = second.get(left_open.event.id)
    assert reopened["end_time"] == NOW - 44 == reopened["last_seen"] and not reopened["active"]
    assert second.get(ended.event.id)["end_time"] == NOW - 100
    assert second.snapshot_path(ended.event.id) is not None
    assert len(second.query()[0]) == 2


def test_replicas_sharing_postgresql_close_only_events_no_one_writes_any_more(postgres_url, tmp_path):
    url = postgres_url
    clock = [NOW]
    stores = []

    def replica(name: str) -> EventStore:
        store = EventStore(url, tmp_path / name, sweep_interval_s=0.2, stale_after_s=600, clock=lambda: clock[0])
        stores.append(store)
        store.start()
        return store

    try:
        # Given replica A with an open event it keeps writing, and replica B that stopped with one open
        a = replica("a")
        live = lifecycle("gate", session="on-a")
        (a_new,) = seen(live, NOW - 10, 1)
        a.submit([a_new])
        b = replica("b")
        gone = lifecycle("door", session="on-b")
        (b_new,) = seen(gone, NOW - 20, 1)
        b.submit([b_new])
        wait_until(lambda: a.get(a_new.event.id) and a.get(b_new.event.id), what="both events")
        assert b.stop() is True

        # When B starts again at once
        b = replica("b-again")
        # Then it closes neither: A's is live, and its own might be as far as it can tell
        assert b.closed_at_start == 0
        assert a.get(a_new.event.id)["active"] and a.get(b_new.event.id)["active"]

        # When time passes in which A keeps writing its event and no one writes B's old one
        clock[0] = NOW + 300
        (heartbeat,) = seen(live, NOW + 290, 1)
        a.submit([heartbeat])
        wait_until(lambda: visible(a, a_new.event.id, last_seen=NOW + 290), what="A's heartbeat")
        clock[0] = NOW + 700

        # Then a sweep closes the abandoned event at its last sighting, and A's stays open
        wait_until(lambda: not a.get(b_new.event.id)["active"], what="the abandoned event to be closed")
        assert a.get(b_new.event.id)["end_time"] == NOW - 20
        assert a.get(a_new.event.id)["active"]
        assert a.status()["closed_stale"] + b.status()["closed_stale"] == 1
    finally:
        for store in stores:
            store.stop()


def test_retention_deletes_events_older_than_the_retention_period(make_store):
    store = make_store(start=False, retention_days=30, sweep_interval_s=0.2)
    old_life, long_life, new_life = lifecycle("a"), lifecycle("b"), lifecycle("c")
    (old,) = seen(old_life, NOW - 40 * DAY, 1)
    (old_open,) = seen(lifecycle("d"), NOW - 31 * DAY, 5)  # never ended, gone for 31 days
    (long,) = seen(long_life, NOW - 40 * DAY, 2)
    seen(long_life, NOW - 1 * DAY, 2)  # started long ago, seen yesterday: kept
    (recent,) = seen(new_life, NOW - 60, 3)
    store.submit([old, *old_life.close_all(), old_open, long, *long_life.close_all(), recent])

    store.start()
    wait_until(lambda: store.status()["retention_deleted_events"] == 2, what="the sweep")

    assert store.get(old.event.id) is None and store.get(old_open.event.id) is None
    assert {e["id"] for e in store.query(limit=500)[0]} == {long.event.id, recent.event.id}
    assert store.get(long.event.id)["end_time"] == NOW - 1 * DAY
    day_dirs = {p.name for p in (store.data_dir / "snapshots").iterdir()}
    assert time.strftime("%Y-%m-%d", time.gmtime(NOW - 31 * DAY)) not in day_dirs  # emptied days go too
    assert sum(1 for _ in (store.data_dir / "snapshots").rglob("*.jpg")) == 2
    assert store.status()["retention_deleted_snapshots"] == 0


def test_retention_keeps_snapshots_under_the_size_limit_oldest_first(make_store):
    probe = cv2.imencode(".jpg", noise(seed=0), [cv2.IMWRITE_JPEG_QUALITY, 85])[1].size
    store = make_store(start=False, max_snapshot_bytes=int(probe * 2.5), sweep_interval_s=0.2)
    news = []
    for i in range(4):
        (new,) = seen(lifecycle(f"cam{i}"), NOW - 400 + i * 100, i, image=noise(seed=i))
        news.append(new)
    store.submit(news)

    store.start()
    wait_until(lambda: store.status()["retention_deleted_snapshots"] == 2, what="the size sweep")

    oldest, newest = news[:2], news[2:]
    for change in oldest:
        event = store.get(change.event.id)
        assert event is not None and event["has_snapshot"] is False and event["snapshot_url"] is None
        assert store.snapshot_path(change.event.id) is None
    files = [store.snapshot_path(c.event.id) for c in newest]
    assert all(files)
    assert sorted(p.name for p in (store.data_dir / "snapshots").rglob("*.jpg")) == sorted(p.name for p in files)
    status = store.status()
    assert status["snapshot_bytes"] == sum(p.stat().st_size for p in files) <= probe * 2.5
    assert status["retention_deleted_events"] == 0


@contextlib.contextmanager
def writes_locked(store: EventStore, backend: str, url: str):
    """Hold a real lock that keeps the writer from writing: SQLite's exclusive lock (the writer's
    statements fail after the busy timeout) or PostgreSQL's table lock (they wait)."""
    if backend == "sqlite":
        conn = sqlite3.connect(store.data_dir / "events.db", isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
    else:
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            conn.execute(sa.text("LOCK TABLE events IN ACCESS EXCLUSIVE MODE"))
            try:
                yield
            finally:
                conn.rollback()
        engine.dispose()


def test_a_full_queue_drops_and_counts_without_blocking(make_store, backend, store_url):
    store = make_store(queue_size=2, batch_max=1, busy_timeout_s=0.3)
    changes = [seen(lifecycle(f"cam{i}"), NOW - 100 + i, i, image=noise(32, 24))[0] for i in range(40)]

    with writes_locked(store, backend, store_url):
        store.submit(changes[:1])
        wait_until(lambda: store.status()["queued"] == 0, what="the writer to take the first change")
        started = time.perf_counter()
        dropped = sum(store.submit([change]) for change in changes[1:])
        elapsed = time.perf_counter() - started

        assert elapsed < 0.5, f"submit blocked for {elapsed:.2f} s"
        assert dropped >= 37  # at most 2 wait in the queue
        status = store.status()
        assert status["dropped"] >= dropped and status["queued"] <= 2
        assert status["state"] in ("degraded", "failing")
        assert f"dropping events: the writer cannot keep up ({status['dropped']} dropped)" in status["detail"]
        if backend == "sqlite":
            failing = wait_until(lambda: (s := store.status())["state"] == "failing" and s, what="a failed write")
            assert "cannot write: database is locked" in failing["detail"] and failing["errors"] >= 1
            assert failing["last_error"] == "cannot write: database is locked"

    (after,) = seen(lifecycle("later"), NOW - 1, 99)
    wait_until(lambda: store.submit([after]) == 0, what="room in the queue")
    wait_until(lambda: store.get(after.event.id), timeout=10, what="writes to resume")
    assert store.status()["state"] != "failing"


def test_a_session_flooding_a_stalled_store_loses_its_own_changes_not_another_sessions(make_store, backend, store_url):
    # The writer waits on the lock with the first change for up to 5 s: meanwhile nothing leaves the queue.
    store = make_store(queue_size=8, batch_max=1, busy_timeout_s=5.0)
    flood = lifecycle("busy-cam", session="flood")
    quiet = lifecycle("quiet-cam", session="quiet")
    with writes_locked(store, backend, store_url):
        (first,) = seen(quiet, NOW - 60, 1)
        store.submit([first])  # the writer takes it and waits on the lock
        wait_until(lambda: store.status()["queued"] == 0, what="the writer to take the first change")
        # the quiet session's one new event, between floods of the busy one
        flooded = sum(store.submit(seen(flood, NOW - 59 + i / 10, i)) for i in range(100))
        (second,) = seen(quiet, NOW - 58, 2)
        flooded += store.submit([second])
        flooded += sum(store.submit(seen(flood, NOW - 49 + i / 10, 100 + i)) for i in range(100))
        # then the flood paid for itself: 200 changes through 8 places
        assert flooded >= 200 - 8
    # and once the database is free, the quiet session's changes are all written
    wait_until(lambda: store.get(second.event.id), timeout=15, what="the quiet session's event to be written")
    assert store.get(first.event.id)


def test_stop_returns_within_its_timeout_while_the_database_is_locked(make_store, backend, store_url):
    store = make_store(busy_timeout_s=0.3)
    (new,) = seen(lifecycle(), NOW - 10, 1)

    with writes_locked(store, backend, store_url):
        store.submit([new])
        wait_until(lambda: store.status()["queued"] == 0, timeout=20, what="the writer to take the change")
        started = time.perf_counter()
        store.stop(timeout=0.5)
        assert time.perf_counter() - started < 1.5
    wait_until(lambda: not store.running, what="the writer to end once the lock is gone")
    assert store.stop() is True and store.submit([new]) == 1  # idempotent; a stopped store drops


def test_stop_before_start_is_legal(make_store):
    store = make_store(start=False)
    assert store.stop() is True and store.stop() is True
    with pytest.raises(RuntimeError, match="stopped"):
        store.start()


# -- secrets -----------------------------------------------------------------------------------


def test_a_password_in_the_url_never_shows(postgres_server, postgres_database, tmp_path, caplog):
    caplog.set_level("INFO")
    url = postgres_server.url(postgres_database, password="s3cret-pw")  # trust auth ignores it
    store = EventStore(url, tmp_path / "data")
    try:
        status = store.status()
        assert status["backend"] == "postgresql" and "***" in status["url"]
        assert "s3cret-pw" not in repr(status)
    finally:
        store.stop()

    closed = f"postgresql+psycopg://postgres:s3cret-pw@127.0.0.1:{free_port()}/events"
    with pytest.raises(RuntimeError, match="cannot open the event store") as failed:
        EventStore(closed, tmp_path / "other")
    assert "s3cret-pw" not in str(failed.value)
    for unusable in ("not a url :s3cret-pw", "mysql+nosuchdriver://u:s3cret-pw@h/db"):
        with pytest.raises(ValueError, match="URL is not one it can use") as refused:
            EventStore(unusable, tmp_path / "other")
        assert "s3cret-pw" not in str(refused.value)
    assert "s3cret-pw" not in caplog.text


# -- URL forms ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+psycopg"])
def test_postgresql_urls_as_other_tools_write_them_open_the_store_through_psycopg(
    postgres_server, postgres_database, tmp_path, caplog, scheme
):
    caplog.set_level("INFO")
    port = postgres_server.port
    store = EventStore(postgres_server.url(postgres_database, "s3cret-pw", scheme), tmp_path / "data")
    try:
        store.start()
        assert store.status()["backend"] == "postgresql"
        assert store.status()["url"] == f"postgresql+psycopg://postgres:***@127.0.0.1:{port}/{postgres_database}"
        events, _ = store.query(limit=1)  # a query reaches the server through the driver
        assert isinstance(events, list)
    finally:
        store.stop()
    assert f"event store: postgresql at postgresql+psycopg://postgres:***@127.0.0.1:{port}" in caplog.text
    assert "s3cret-pw" not in caplog.text


@pytest.mark.parametrize(
    "url, words",
    [
        ("mysql://u:s3cret-pw@h/db", "SQLite or PostgreSQL, not 'mysql'"),
        ("mongodb://u:s3cret-pw@h/db", "not 'mongodb'"),
        ("postgresql+asyncpg://u:s3cret-pw@h/db", "through psycopg, not 'asyncpg'"),
        ("postgresql+psycopg2://u:s3cret-pw@h/db", "through psycopg, not 'psycopg2'"),
    ],
)
def test_other_databases_and_drivers_are_refused_in_words_before_any_connection(tmp_path, url, words):
    with pytest.raises(ValueError, match="URL is not one it can use") as refused:
        EventStore(url, tmp_path / "data")
    assert words in str(refused.value) and "s3cret-pw" not in str(refused.value)


# -- client text that reaches PostgreSQL ---------------------------------------------------------


@pytest.fixture
def postgres_service(postgres_server, postgres_database, tiny_model_dir):
    """The real app keeping its events in the PostgreSQL server, on a URL written as other tools write it."""
    url = postgres_server.url(postgres_database, scheme="postgresql")
    service = run_service(make_settings(tiny_model_dir, database_url=url))
    yield service
    service.stop()


@pytest.mark.parametrize("field", ["session_id", "camera", "label", "zone"])
@pytest.mark.parametrize("bad", ["a\x00b", "a\x07b", "a\nb"])
def test_control_characters_in_filters_are_422_in_words_on_postgresql(postgres_service, field, bad):
    # PostgreSQL refuses NUL in any text: once a 500 with the driver's words, SQLite took it
    with postgres_service.client() as client:
        assert client.get("/api/v1/events", params={field: "a b"}).status_code == 200
        response = client.get("/api/v1/events", params={field: bad})
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_request"
    assert response.json()["detail"].startswith(f"{field}: U+00"), response.json()["detail"]


def test_event_ids_no_event_of_ours_can_have_are_404_on_postgresql(postgres_service):
    nul_cursor = base64.urlsafe_b64encode(b'[1.0,"a\\u0000b"]').decode().rstrip("=")
    with postgres_service.client() as client:
        assert client.get("/api/v1/events", params={"cursor": nul_cursor}).json()["error"] == "invalid_cursor"
        for event_id in ("a%00b", "0123456789abcdef0123456789abcde%00", "%07", "x" * 300, "0" * 32):
            for response in (
                client.get(f"/api/v1/events/{event_id}"),
                client.get(f"/api/v1/events/{event_id}/snapshot.jpg"),
                client.get(f"/api/v1/events/{event_id}/track"),
                client.delete(f"/api/v1/events/{event_id}"),
            ):
                assert response.status_code == 404, (event_id, response.text)
                assert response.json()["error"] == "event_not_found"


def test_a_snapshot_folder_that_is_a_file_for_a_while_costs_snapshots_only_and_writing_recovers(make_store, backend):
    store = make_store()
    life = lifecycle()
    (first,) = seen(life, NOW - 60, 1)
    store.submit([first])
    wait_until(lambda: visible(store, first.event.id, has_snapshot=True), what="the first event")
    folder = store.data_dir / "snapshots"
    aside = store.data_dir / "snapshots.aside"
    folder.rename(aside)
    folder.write_bytes(b"not a folder")
    try:
        (second,) = seen(life, NOW - 59, 2)
        store.submit([second])
        # the row is written without its snapshot, and the store says in words why
        event = wait_until(lambda: visible(store, second.event.id), what="the row despite the snapshot failure")
        assert event["has_snapshot"] is False
        status = wait_until(lambda: (s := store.status())["state"] == "failing" and s, what="failing")
        assert status["running"] and status["detail"].startswith("cannot write snapshot: ")
        assert "snapshots" in status["detail"]
    finally:
        folder.unlink()
        aside.rename(folder)
    (third,) = seen(life, NOW - 58, 3)
    store.submit([third])
    wait_until(lambda: visible(store, third.event.id, has_snapshot=True), what="snapshots again")
    status = wait_until(lambda: (s := store.status())["state"] == "ok" and s, what="the store to say ok")
    assert status["detail"] == "writing events" and status["written"] == 3


def test_one_row_the_database_refuses_costs_that_row_not_its_batch(make_store, backend):
    store = make_store(batch_max=64)
    life = lifecycle()
    changes = [seen(life, NOW - 60 + i, i)[0] for i in range(5)]
    bad = changes[2]
    # a NOT NULL column left NULL: refused by both databases, as a bug or bad data would be
    broken = dataclasses.replace(bad, event=dataclasses.replace(bad.event, label=None))
    store.submit([*changes[:2], broken, *changes[3:]])
    for change in (*changes[:2], *changes[3:]):
        wait_until(lambda c=change: store.get(c.event.id), what="the good rows of the batch")
    assert store.get(bad.event.id) is None
    status = store.status()
    assert status["dropped"] == 1 and "cannot write" in (status["last_error"] or "")


def test_events_of_a_session_another_replica_claimed_since_are_not_written(make_store, backend):
    # Given replica A running session s-1 under epoch 1, its event writes fenced by that epoch
    store = make_store()
    records = SessionRecords(store.database)
    records.add(SessionRecord("s-1", {"camera": "gate"}, "token"), owner="replica-a", lease_s=1.0)
    ran = {"s-1": 1}  # what A ran, under which epoch (as sessions/cluster.py keeps it)

    def refused(conn, ids):
        pairs = {(sid, ran[sid]) for sid in ids if sid in ran}
        return {sid for sid, _ in pairs} - records.fence(conn, pairs)

    store.set_fence(refused)
    life = lifecycle(session="s-1")
    (first,) = seen(life, NOW - 60, 1)
    store.submit([first])
    wait_until(lambda: store.get(first.event.id), what="A's event while it owns the session")

    # When A's lease runs out and B claims the session (epoch 2)
    wait_until(lambda: records.now() > records.get("s-1").lease_until, what="the lease to run out")
    (claim,) = records.claim("replica-b", capacity=1, lease_s=30.0)
    assert claim.epoch == 2

    # Then A's later events are not written, counted, and its other writes go on
    late = next(change for change in seen(life, NOW - 50, 2) if change.kind == "new")
    (other,) = seen(lifecycle(session="not-recorded"), NOW - 50, 3)
    store.submit([late, other])
    wait_until(lambda: store.get(other.event.id), what="the event of a session the fence does not know")
    assert store.get(late.event.id) is None
    assert store.status()["dropped"] == 1


def test_events_submitted_while_the_database_is_down_are_held_and_all_written_when_it_is_back(tmp_path):
    with running_postgres() as server:  # a server of its own: this test stops it
        store = EventStore(server.url(server.new_database()), tmp_path / "data", clock=lambda: NOW)
        store.start()
        try:
            life = lifecycle()
            (first,) = seen(life, NOW - 60, 1)
            store.submit([first])
            wait_until(lambda: store.get(first.event.id), what="an event while the database is up")

            # when the database goes away, events come, change and get snapshots meanwhile
            server.down()
            during = [change for i in range(2, 12) for change in seen(life, NOW - 59 + i, 1, i, image=noise(seed=i))]
            for change in during:
                assert store.submit([change]) == 0
            newest = {change.event.id: change.event for change in during}
            held = wait_until(
                lambda: (s := store.status())["held"] >= len(newest) and s, timeout=10, what="the events held"
            )
            assert held["state"] == "failing" and "held until the database answers again" in held["detail"], held

            # then once it is back, every event is written in its newest state, nothing dropped
            server.up()
            for event_id, record in newest.items():
                wait_until(lambda e=event_id, r=record: visible(store, e, last_seen=r.last_seen), timeout=15,
                           what=f"event {event_id} written after the outage")  # fmt: skip
            status = wait_until(lambda: (s := store.status())["state"] == "ok" and s, timeout=10, what="ok again")
            assert status["held"] == 0 and status["dropped"] == 0, status
            assert store.get(during[-1].event.id)["snapshot_url"], "a snapshot taken during the outage is kept"
        finally:
            store.stop(timeout=5.0)
