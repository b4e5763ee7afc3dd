"""The recordings sweep over a real database and real files, at explicit times: events mode keeps
only what an event needs, continuous keeps everything, age and size limits, oldest first."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from rtdetr_service.outputs.recordings.index import RecordingIndex, Segment
from rtdetr_service.outputs.recordings.retention import RecordingPolicy, RecordingRetention
from rtdetr_service.outputs.store import migrate
from rtdetr_service.outputs.store.schema import Database, events_table

NOW = 1_800_000_000.0
DAY = 86400.0
SESSION, OTHER = "s-1", "s-2"


@pytest.fixture
def index(database_url, tmp_path) -> RecordingIndex:
    db = Database(database_url, tmp_path, 5.0)
    migrate.upgrade(db)
    yield RecordingIndex(db, tmp_path)
    with db.engine.begin() as conn:  # a PostgreSQL database is shared by the tests
        conn.execute(sa.text("DELETE FROM recordings"))
        conn.execute(sa.text("DELETE FROM events"))
    db.dispose()


def policy(**values) -> RecordingPolicy:
    base = dict(pre_s=5.0, post_s=5.0, retain_s=7 * DAY, events_retain_s=30 * DAY, max_bytes=10**9, stale_part_s=600)
    return RecordingPolicy(**(base | values))


def segment(index: RecordingIndex, start: float, end: float, *, session=SESSION, mode="events", size=100) -> Segment:
    """A segment file of `size` bytes and its row."""
    path = f"recordings/cam/day/{session}-{int(start * 1000)}.mp4"
    (index.data_dir / path).parent.mkdir(parents=True, exist_ok=True)
    (index.data_dir / path).write_bytes(b"\x00" * size)
    return index.add(
        Segment(session, "cam", path, start, end, size, "h264", 320, 240, mode),
        now=end,
    )


def event(index: RecordingIndex, start: float, end: float | None, *, session=SESSION, n=1) -> None:
    row = {
        "id": f"{session}-ev{n}",
        "session_id": session,
        "camera": "cam",
        "track_id": n,
        "label": "person",
        "class_id": 0,
        "start_time": start,
        "end_time": end,
        "last_seen": end if end is not None else start,
        "best_confidence": 0.9,
        "best_bbox": json.dumps([1, 2, 3, 4]),
        "best_time": start,
        "frame_width": 320,
        "frame_height": 240,
        "zones": "[]",
        "rules": "[]",
        "snapshot_path": None,
        "snapshot_bytes": 0,
        "updated_at": start,
    }
    with index.db.engine.begin() as conn:
        conn.execute(sa.insert(events_table).values(**row))


def kept(index: RecordingIndex) -> list[tuple[str, float]]:
    segments = index.list()
    for s in segments:
        assert index.file(s).is_file()
    return [(s.session_id, s.start_time - NOW) for s in segments]


def test_events_mode_deletes_what_no_event_needs_and_continuous_keeps_everything(index, backend):
    # Given a session's segments around one event (-85 .. -84, widened by 5 s: -90 .. -79)
    for start in (-110, -90, -80, -70, -4):
        segment(index, NOW + start, NOW + start + (3 if start == -4 else 10))
    segment(index, NOW - 70, NOW - 60, session=OTHER, mode="continuous")
    event(index, NOW - 85, NOW - 84)
    retention = RecordingRetention(index, policy(), clock=lambda: NOW)
    before = {s.path for s in index.list()}

    result = retention.sweep()

    # Then the segments the widened event overlaps stay, and so does the one that ended less than the
    # pre-roll ago (an event starting now may reach back to it); the continuous one stays
    assert kept(index) == [(SESSION, -90), (SESSION, -80), (OTHER, -70), (SESSION, -4)]
    assert (result.unneeded, result.expired, result.over_size, result.freed_bytes) == (2, 0, 0, 200)
    gone = before - {s.path for s in index.list()}
    assert len(gone) == 2 and not any((index.data_dir / path).exists() for path in gone)
    assert retention.deleted_unneeded == 2


def test_an_open_event_keeps_its_sessions_segments_and_no_one_elses(index, backend):
    segment(index, NOW - 100, NOW - 90)
    segment(index, NOW - 100, NOW - 90, session=OTHER)
    event(index, NOW - 20, None)  # still open: it may need anything up to its end
    RecordingRetention(index, policy(), clock=lambda: NOW).sweep()
    assert kept(index) == [(SESSION, -100)]


def test_age_limits_keep_events_footage_longer_than_continuous(index, backend):
    # Given continuous footage 10 days old, some of it during an event, and some 40 days old
    old = NOW - 10 * DAY
    segment(index, old, old + 10, mode="continuous")
    segment(index, old + 100, old + 110, mode="continuous")
    segment(index, NOW - 40 * DAY, NOW - 40 * DAY + 10, mode="continuous")
    event(index, old + 102, old + 104)
    event(index, NOW - 40 * DAY + 2, NOW - 40 * DAY + 3, n=2)
    result = RecordingRetention(index, policy(), clock=lambda: NOW).sweep()
    # Then only the event's segment younger than RECORD_EVENTS_RETAIN_DAYS stays
    assert kept(index) == [(SESSION, old + 100 - NOW)]
    assert result.expired == 2


def test_the_size_cap_deletes_the_oldest_first(index, backend):
    for n in range(5):
        segment(index, NOW - 100 + n * 10, NOW - 90 + n * 10, mode="continuous", size=1000)
    result = RecordingRetention(index, policy(max_bytes=2500), clock=lambda: NOW).sweep()
    assert result.over_size == 3 and result.freed_bytes == 3000
    assert kept(index) == [(SESSION, -70), (SESSION, -60)]
    assert index.total_bytes() == 2000
