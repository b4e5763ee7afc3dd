"""An event's `has_clip` and `clip_url`, on SQLite and PostgreSQL: true when a kept segment of its own
session overlaps the event widened by the pre- and post-roll (to now while it is active), computed
by the one list query, never a query per event."""

from __future__ import annotations

import time
import uuid

import pytest
import sqlalchemy as sa

from rtdetr_service.core.results import EventChange, EventRecord
from rtdetr_service.outputs.recordings.index import RecordingIndex, Segment
from rtdetr_service.outputs.store.queries import ClipWindow

PRE, POST = 5.0, 5.0


def event(session: str, start: float, end: float | None) -> EventChange:
    record = EventRecord(
        id=uuid.uuid4().hex,
        session_id=session,
        camera="gate",
        track_id=1,
        label="person",
        class_id=0,
        start_time=start,
        end_time=end,
        last_seen=end if end is not None else start,
        best_confidence=0.9,
        best_bbox=(1.0, 2.0, 3.0, 4.0),
        best_time=start,
        frame_width=320,
        frame_height=240,
    )
    return EventChange("new", record, None)


def segment(session: str, start: float, end: float) -> Segment:
    path = f"recordings/gate/{session}-{start}.mp4"
    return Segment(session, "gate", path, start, end, 1000, "h264", 320, 240, "events")


def wait_for(store, ids: list[str], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while any(store.get(i) is None for i in ids):
        if time.monotonic() > deadline:
            pytest.fail("the events were not written")
        time.sleep(0.05)


def test_has_clip_is_a_kept_segment_of_the_session_overlapping_the_widened_event(make_store, tmp_path):
    # Given events of two sessions (one still active, by the database's own clock) and segments of one
    store = make_store(clips=ClipWindow(PRE, POST))
    t = time.time() - 3600
    covered = event("s1", t, t + 10)  # a segment ends 0.5 s into its pre-roll
    after_post = event("s1", t + 100, t + 110)  # a segment starts 1 s after its post-roll
    active = event("s1", time.time() - 20, None)  # a segment of the last seconds: within "now + post"
    other_session = event("s2", t, t + 10)  # the same times, another session: not its recording
    changes = [covered, after_post, active, other_session]
    store.submit(changes)
    ids = [c.event.id for c in changes]
    wait_for(store, ids)
    index = RecordingIndex(store.database, tmp_path / "data")
    index.add(segment("s1", t - 8, t - PRE + 0.5), now=t)
    index.add(segment("s1", t + 110 + POST + 1, t + 130), now=t)
    index.add(segment("s1", time.time() - 3, time.time() - 1), now=t)

    # When the events are listed (in one statement) and read one by one
    statements = []
    sa.event.listen(store.database.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    listed, _ = store.query(limit=50)
    assert len([s for s in statements if "events" in s]) == 1, statements
    shown = {e["id"]: e for e in listed}

    # Then has_clip and clip_url say which have a clip, in the list and alone
    expected = {covered: True, after_post: False, active: True, other_session: False}
    for change, has_clip in expected.items():
        event_id = change.event.id
        for document in (shown[event_id], store.get(event_id)):
            assert document["has_clip"] is has_clip, (change.event, document)
            assert document["clip_url"] == (f"/api/v1/events/{event_id}/clip.mp4" if has_clip else None)

    # And a segment deleted by retention takes the clip with it
    index.forget([s.id for s in index.list(session_id="s1", before=t)])
    assert store.get(covered.event.id)["has_clip"] is False
