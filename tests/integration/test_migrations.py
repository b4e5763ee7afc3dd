"""The store's schema under Alembic, on real SQLite and PostgreSQL: a database made by the service
before migrations existed is upgraded in place with its events, an empty one is made at the head
revision and matches schema.py, replicas opening at once all succeed, and a database made by a
newer version is refused in words."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from rtdetr_service.outputs.store import migrate
from rtdetr_service.outputs.store.event_store import EventStore
from rtdetr_service.outputs.store.schema import Database, metadata
from rtdetr_service.outputs.store.vectors import open_index
from rtdetr_service.sessions.records import SessionRecord, SessionRecords

from support import ROOT

# What `metadata.create_all` made before migrations existed, frozen here as it emitted it
# (SQLAlchemy 2.1; DOUBLE on SQLite, DOUBLE PRECISION on PostgreSQL).
OLD_DDL = """
CREATE TABLE event_zones (
    event_id VARCHAR(64) NOT NULL,
    zone VARCHAR NOT NULL,
    PRIMARY KEY (event_id, zone)
);
CREATE INDEX ix_event_zones_zone ON event_zones (zone, event_id);
CREATE TABLE events (
    id VARCHAR(64) NOT NULL,
    session_id VARCHAR NOT NULL,
    camera VARCHAR,
    track_id INTEGER NOT NULL,
    label VARCHAR NOT NULL,
    class_id INTEGER NOT NULL,
    start_time {double} NOT NULL,
    end_time {double},
    last_seen {double} NOT NULL,
    best_confidence {double} NOT NULL,
    best_bbox TEXT NOT NULL,
    best_time {double} NOT NULL,
    frame_width INTEGER NOT NULL,
    frame_height INTEGER NOT NULL,
    zones TEXT NOT NULL,
    rules TEXT NOT NULL,
    snapshot_path VARCHAR,
    snapshot_bytes INTEGER DEFAULT '0' NOT NULL,
    updated_at {double} NOT NULL,
    PRIMARY KEY (id)
);
CREATE INDEX ix_events_start_time ON events (start_time);
CREATE INDEX ix_events_label_start_time ON events (label, start_time);
CREATE INDEX ix_events_camera_start_time ON events (camera, start_time);
CREATE INDEX ix_events_session_id ON events (session_id);
"""
T0 = 1_780_000_000.0
HEAD = "0006"  # the newest revision: what a vision-language model says about events


def old_event(n: int) -> dict:
    return {
        "id": f"old-{n}",
        "session_id": "s-1",
        "camera": "gate",
        "track_id": n,
        "label": "person",
        "class_id": 0,
        "start_time": T0 + n,
        "end_time": T0 + n + 5,
        "last_seen": T0 + n + 5,
        "best_confidence": 0.9,
        "best_bbox": "[1.0, 2.0, 3.0, 4.0]",
        "best_time": T0 + n + 1,
        "frame_width": 640,
        "frame_height": 480,
        "zones": '["door"]',
        "rules": "[]",
        "updated_at": T0 + n + 5,
    }


def make_old_database(url: str) -> None:
    """A database as the service made it before migrations: the old tables, three events, a zone row."""
    engine = sa.create_engine(url)
    double = "DOUBLE PRECISION" if engine.dialect.name == "postgresql" else "DOUBLE"
    with engine.begin() as conn:
        for statement in OLD_DDL.format(double=double).split(";"):
            if statement.strip():
                conn.exec_driver_sql(statement)
        columns = ", ".join(old_event(0))
        values = ", ".join(f":{name}" for name in old_event(0))
        for n in range(3):
            conn.execute(sa.text(f"INSERT INTO events ({columns}) VALUES ({values})"), old_event(n))
        conn.execute(sa.text("INSERT INTO event_zones (event_id, zone) VALUES ('old-1', 'door')"))
    engine.dispose()


def revisions(url: str) -> list[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [row[0] for row in conn.execute(sa.text("SELECT version_num FROM alembic_version"))]
    finally:
        engine.dispose()


@pytest.fixture
def opened(tmp_path):
    """`opened(url)`: a Database on the URL, disposed at the end."""
    made: list[Database] = []

    def open_(url: str) -> Database:
        db = Database(url, tmp_path, busy_timeout_s=5.0)
        made.append(db)
        return db

    yield open_
    for db in made:
        db.dispose()


def test_a_database_made_before_migrations_is_upgraded_in_place_with_its_events(database_url, tmp_path, caplog):
    # Given a database made by the old create_all, holding events
    make_old_database(database_url)
    caplog.set_level("INFO")

    # When the new store opens it
    store = EventStore(database_url, tmp_path / "data")
    try:
        # Then its events are all there, zone filter included, and the schema is at the head revision
        events, _ = store.query(limit=10)
        assert sorted(event["id"] for event in events) == ["old-0", "old-1", "old-2"]
        assert store.get("old-1")["zones"] == ["door"] and store.get("old-1")["end_time"] == T0 + 6
        assert [event["id"] for event in store.query(zone="door")[0]] == ["old-1"]
        assert "adopted as 0001" in caplog.text
    finally:
        store.stop()
    assert revisions(database_url) == [migrate.head()] == [HEAD]

    # And the new table works on it
    db = Database(database_url, tmp_path, busy_timeout_s=5.0)
    try:
        records = SessionRecords(db)
        records.add(SessionRecord("cam-1", {"stream_url": "rtsp://cam/1"}, "hash"))
        assert [record.id for record in records.list()] == ["cam-1"]
    finally:
        db.dispose()


def test_an_empty_database_is_made_at_the_head_and_matches_schema_py(database_url, opened):
    db = opened(database_url)
    first = migrate.upgrade(db)
    assert (first.before, first.after, first.stamped) == (None, HEAD, False)

    # The migrations make exactly what schema.py describes: tables, columns, types, indexes
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []

    # Opening again changes nothing
    again = migrate.upgrade(db)
    assert (again.before, again.after, again.stamped) == (HEAD, HEAD, False)
    assert revisions(database_url) == [HEAD]


def test_a_database_made_by_a_newer_version_is_refused_in_words_and_left_alone(database_url, opened, tmp_path):
    # Given a database a newer version has migrated past anything this one knows
    migrate.upgrade(opened(database_url))
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0107'"))
    engine.dispose()

    # When this version opens it, then it says why it will not, and changes nothing
    with pytest.raises(RuntimeError, match="made by a newer version of the service") as refused:
        EventStore(database_url, tmp_path / "data")
    assert "0107" in str(refused.value) and f"knows up to {HEAD}" in str(refused.value)
    assert revisions(database_url) == ["0107"]


def test_a_database_with_only_some_of_the_old_tables_is_refused_in_words(database_url, opened):
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE events (id VARCHAR(64) PRIMARY KEY)")
    engine.dispose()
    with pytest.raises(RuntimeError, match="not event_zones, and no schema revision"):
        migrate.upgrade(opened(database_url))


@pytest.mark.parametrize("old", [False, True], ids=["empty", "made-before-migrations"])
def test_replicas_opening_one_postgresql_database_at_once_all_succeed(postgres_url, opened, old):
    # Given an empty database, or one made before migrations, and four replicas starting together
    if old:
        make_old_database(postgres_url)
    replicas = [opened(postgres_url) for _ in range(4)]
    start = threading.Barrier(len(replicas))
    results: dict[int, object] = {}

    def open_(n: int) -> None:
        start.wait()
        try:
            results[n] = migrate.upgrade(replicas[n])
        except Exception as exc:  # noqa: BLE001 - the test reports what each replica met
            results[n] = exc

    threads = [threading.Thread(target=open_, args=(n,)) for n in range(len(replicas))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    # Then every one of them opens it, exactly one upgrades it, and it is at the head once
    assert all(isinstance(result, migrate.Upgrade) for result in results.values()), results
    assert len(results) == len(replicas)
    upgraded = [result for result in results.values() if result.before != HEAD]
    assert len(upgraded) == 1 and upgraded[0].stamped is old
    assert revisions(postgres_url) == [HEAD]
    if old:
        engine = sa.create_engine(postgres_url)
        with engine.connect() as conn:
            assert conn.scalar(sa.text("SELECT count(*) FROM events")) == 3
        engine.dispose()


def test_the_alembic_command_upgrades_a_database_for_developers(tmp_path):
    # The alembic.ini at the repository root finds the package's migrations and takes -x url=
    url = f"sqlite:///{tmp_path / 'dev.db'}"
    done = subprocess.run(
        [sys.executable, "-m", "alembic", "-x", f"url={url}", "upgrade", "head"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert revisions(url) == [HEAD]


def test_0005_adds_event_embeddings_and_global_id_to_a_0004_database_keeping_its_events(database_url, opened):
    # Given a database at 0004 (event tracks) holding an event
    db = opened(database_url)
    with db.write_transaction() as conn:
        command.upgrade(migrate.alembic_config(conn), "0004")
        conn.execute(
            sa.text(
                f"INSERT INTO events ({', '.join(old_event(0))}) VALUES "
                f"({', '.join(':' + name for name in old_event(0))})"
            ),
            old_event(0),
        )
    assert revisions(database_url) == ["0004"]

    # When this version opens it
    upgraded = migrate.upgrade(db)

    # Then it is at the head, the event is there without an identity, and its vector can be stored
    assert (upgraded.before, upgraded.after) == ("0004", HEAD)
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT id, global_id FROM events")).all() == [("old-0", None)]
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    vectors = open_index(db)
    assert vectors.upsert("old-0", np.ones(8, dtype=np.float32), "m") and vectors.count("m") == 1


def test_0006_adds_descriptions_answers_and_text_vectors_to_a_0005_database_keeping_its_vectors(database_url, opened):
    # Given a database at 0005 holding an event with its appearance vector
    db = opened(database_url)
    with db.write_transaction() as conn:
        command.upgrade(migrate.alembic_config(conn), "0005")
        conn.execute(
            sa.text(
                f"INSERT INTO events ({', '.join(old_event(0))}) VALUES "
                f"({', '.join(':' + name for name in old_event(0))})"
            ),
            old_event(0),
        )
    assert open_index(db).upsert("old-0", np.ones(8, dtype=np.float32), "m")

    # When this version opens it
    upgraded = migrate.upgrade(db)

    # Then it is at 0006; the event says nothing yet, its vector is kept, and the schema is this version's
    assert (upgraded.before, upgraded.after) == ("0005", "0006")
    with db.engine.connect() as conn:
        row = conn.execute(sa.text("SELECT id, description, description_model, answers FROM events")).one()
        assert tuple(row) == ("old-0", None, None, None)
        assert conn.execute(sa.text("SELECT count(*) FROM event_text_embeddings")).scalar() == 0
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    assert open_index(db).count("m") == 1
