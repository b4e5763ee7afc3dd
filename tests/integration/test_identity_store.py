"""The event store's reads behind search and identities, on SQLite and PostgreSQL: a search's hits as
event documents in one query, and one identity's events oldest first in pages."""

from __future__ import annotations

import dataclasses
import uuid

from rtdetr_service.core.results import EventChange, EventRecord

from support import STORE_NOW, wait_until


def record(camera: str, start: float, global_id: str | None) -> EventRecord:
    return EventRecord(
        id=uuid.uuid4().hex,
        session_id=f"session-{camera}",
        camera=camera,
        track_id=1,
        label="person",
        class_id=0,
        start_time=start,
        end_time=start + 5,
        last_seen=start + 5,
        best_confidence=0.9,
        best_bbox=(1.0, 2.0, 3.0, 4.0),
        best_time=start,
        frame_width=320,
        frame_height=240,
        global_id=global_id,
    )


def test_identity_lists_its_events_oldest_first_in_pages_and_documents_come_by_id(make_store):
    store = make_store()
    # Given one object seen by three cameras (two of them at the same second), another object, and an unlinked event
    t = STORE_NOW - 600
    journey = [record("gate", t, "g-1"), record("yard", t + 30, "g-1"), record("door", t + 30, "g-1")]
    others = [record("gate", t + 10, "g-2"), record("gate", t + 20, None)]
    records = journey + others
    changes = [EventChange("new", dataclasses.replace(r, global_id=None), None) for r in records]
    changes += [EventChange("update", r, r) for r in records]
    store.submit(changes)
    assert wait_until(lambda: all(store.get(r.id) is not None for r in records), timeout=10)
    assert wait_until(lambda: store.get(journey[-1].id)["global_id"] == "g-1", timeout=10)

    # When its identity is read, then its events come oldest first (ties by id), across cameras
    expected = [r.id for r in sorted(journey, key=lambda r: (r.start_time, r.id))]
    events, cursor = store.identity("g-1")
    assert [e["id"] for e in events] == expected and cursor is None
    assert {e["camera"] for e in events} == {"gate", "yard", "door"}
    # and in pages of one, the same order
    seen, cursor = [], None
    for _ in range(5):
        page, cursor = store.identity("g-1", limit=1, cursor=cursor)
        seen += [e["id"] for e in page]
        if cursor is None:
            break
    assert seen == expected
    assert store.identity("no-such-identity") == ([], None)

    # And documents are read by id in one query, those not stored left out
    ids = [journey[0].id, others[1].id, "0" * 32]
    documents = store.documents(ids)
    assert set(documents) == set(ids[:2])
    assert documents[journey[0].id] == store.get(journey[0].id)
