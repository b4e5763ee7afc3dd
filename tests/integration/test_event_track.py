"""Event tracks against real parts: the real event lifecycle decimates each object's boxes, the real
store writes them with the event's row on SQLite and on a real PostgreSQL server, and the real
service answers GET /api/v1/events/{id}/track."""

from __future__ import annotations

import time

import numpy as np
import pytest
import sqlalchemy as sa

from rtdetr_service.analytics.events import EventLifecycle
from rtdetr_service.core.types import Detection, Frame
from rtdetr_service.outputs.store.event_store import EventStore

from servers import running_postgres
from support import STORE_NOW, make_settings, run_service, wait_until

NOW = STORE_NOW
IMAGE = np.zeros((240, 320, 3), np.uint8)


def box_at(t: float) -> tuple[float, float, float, float]:
    """A box walking right 10 px a second: where it is tells when it was seen."""
    x = 10.0 * (t - NOW) + 2000.0
    return (x, 20.0, x + 40.0, 120.0)


def walk(life: EventLifecycle, start: float, seconds: float, fps: float, track: int = 1) -> list:
    """The changes of an object seen in every frame for `seconds`, then gone: in "door" for the first half."""
    changes = []
    n = int(seconds * fps)
    for i in range(n):
        t = start + i / fps
        det = Detection(0, "person", box_at(t), 0.5 + 0.4 * i / n, track)
        zones = ("door",) if i < n // 2 else ()
        changes += life.update(Frame(IMAGE, i, t, 0.0), [det], zones_of={track: zones})
    return changes + life.close_all()


def lifecycle(hz: float = 5.0, max_points: int = 3000, session: str = "session-1") -> EventLifecycle:
    return EventLifecycle(session, "gate", end_after_s=5.0, track_hz=hz, track_max_points=max_points)


def stored(store: EventStore, event_id: str, ended: bool = True) -> dict:
    """The event's track once the event is written (ended, when asked)."""
    event = wait_until(lambda: (e := store.get(event_id)) and (not ended or not e["active"]) and e, timeout=10)
    assert event, f"event {event_id} was not written"
    return store.track(event_id)


def point_count(store: EventStore, event_id: str | None = None) -> int:
    engine = sa.create_engine(store.database.engine.url)
    try:
        with engine.connect() as conn:
            where = "" if event_id is None else " WHERE event_id = :id"
            return conn.execute(sa.text("SELECT count(*) FROM event_points" + where), {"id": event_id}).scalar_one()
    finally:
        engine.dispose()


def test_a_life_is_stored_as_its_boxes_at_most_hz_a_second_first_and_last_sightings_included(make_store):
    # Given an object seen at 30 fps for 12 s, then gone
    store = make_store()
    changes = walk(lifecycle(hz=5.0), NOW - 100, 12.0, 30.0)
    assert sum(len(c.points) for c in changes if c.kind == "update") > 0, "points come with the heartbeats"

    # When its changes are stored
    store.submit(changes)
    event_id = changes[0].event.id
    track = stored(store, event_id)
    event = store.get(event_id)

    # Then its track is the boxes it had, at most 5 a second, from its first sighting to its last
    points = track["points"]
    assert track["event_id"] == event_id and track["hz"] == 5.0 and track["truncated"] is False
    times = [p["t"] for p in points]
    assert times[0] == event["start_time"] and times[-1] == event["end_time"]
    assert times == sorted(times)
    gaps = np.diff(times[:-1])  # the last sighting is kept however close it came
    assert gaps.min() >= 0.2 - 0.001 and gaps.max() < 0.2 + 1 / 30 + 1e-6
    assert 12 * 5 - 2 <= len(points) <= 12 * 5 + 2
    for point in points:
        assert point["bbox"] == [round(v, 1) for v in box_at(point["t"])]
    assert points[0]["zones"] == ["door"] and points[-1]["zones"] == []
    assert points[0]["confidence"] == 0.5 and points[-1]["confidence"] > 0.85
    # The event document itself is unchanged by its track
    assert "track_hz" not in event and "points" not in event


def test_a_long_life_is_thinned_evenly_within_the_bound(make_store):
    # Given a bound of 40 points and an object seen at 10 fps for 60 s (300 points at 5 Hz)
    store = make_store(track_max_points=40)
    changes = walk(lifecycle(hz=5.0, max_points=40), NOW - 300, 60.0, 10.0)

    # When its changes are stored, one by one as a session hands them out
    for change in changes:
        store.submit([change])
    event_id = changes[0].event.id
    track = stored(store, event_id)

    # Then at most 40 points are kept, evenly spaced at the halved rate the answer names, ends included
    points, hz = track["points"], track["hz"]
    assert track["truncated"] is True and hz in (5 / 8, 5 / 16)
    assert 15 <= len(points) <= 40
    event = store.get(event_id)
    assert points[0]["t"] == event["start_time"] and points[-1]["t"] == event["end_time"]
    gaps = np.diff([p["t"] for p in points][:-1])
    # (where the rate halved, one gap may be half as long again)
    assert gaps.min() >= 1 / hz - 0.01 and gaps.max() <= 1.5 / hz + 0.01, gaps
    assert point_count(store, event_id) == len(points)


def test_a_change_sent_again_adds_no_point_twice(make_store):
    store = make_store()
    changes = walk(lifecycle(), NOW - 100, 8.0, 15.0)
    store.submit(changes)
    event_id = changes[0].event.id
    first = stored(store, event_id)

    store.submit(changes)  # as a retry would
    wait_until(lambda: store.status()["written"] == 2 * len(changes), timeout=10)

    assert store.status()["written"] == 2 * len(changes)
    assert store.track(event_id) == first and point_count(store, event_id) == len(first["points"])


def test_deleting_an_event_or_its_expiry_removes_its_track(make_store):
    store = make_store(start=False, retention_days=30, sweep_interval_s=0.2)
    old = walk(lifecycle(session="old"), NOW - 40 * 86400, 4.0, 10.0)
    kept = walk(lifecycle(session="kept"), NOW - 200, 4.0, 10.0)
    gone = walk(lifecycle(session="gone"), NOW - 100, 4.0, 10.0)
    store.submit(old + kept + gone)

    # When the sweep runs at start, the expired event's track goes with it
    store.start()
    wait_until(lambda: store.status()["retention_deleted_events"] == 1, timeout=10)
    stored(store, gone[0].event.id)
    assert store.track(old[0].event.id) is None and point_count(store, old[0].event.id) == 0

    # When an event is deleted, its track goes too and stays gone
    assert point_count(store, gone[0].event.id) > 0
    assert store.delete(gone[0].event.id) is True
    assert store.track(gone[0].event.id) is None and point_count(store, gone[0].event.id) == 0
    assert point_count(store) == len(store.track(kept[0].event.id)["points"]) > 0


def test_points_of_a_life_seen_while_the_database_is_down_are_held_and_written_when_it_is_back(tmp_path):
    with running_postgres() as server:  # a server of its own: this test stops it
        store = EventStore(server.url(server.new_database()), tmp_path / "data", clock=lambda: NOW)
        store.start()
        try:
            changes = walk(lifecycle(), NOW - 100, 20.0, 10.0)
            (new, *rest) = changes
            store.submit([new])
            wait_until(lambda: store.get(new.event.id), timeout=10)

            server.down()
            for change in rest:
                store.submit([change])
            assert wait_until(lambda: store.status()["held"] >= 1, timeout=10), store.status()

            server.up()
            track = stored(store, new.event.id)
            assert len(track["points"]) == sum(len(c.points) for c in changes) > 90
            assert store.status()["dropped"] == 0
        finally:
            store.stop(timeout=5.0)


# -- through the HTTP route -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(tiny_model_dir):
    service = run_service(make_settings(tiny_model_dir))
    yield service
    service.stop()


def test_the_track_route_answers_the_stored_track_and_404_in_words(service):
    store = service.app.state.event_store  # on the real clock: its retention sweep must not find it old
    changes = walk(lifecycle(session="http"), time.time() - 100, 6.0, 10.0)
    store.submit(changes)
    event_id = changes[0].event.id
    expected = stored(store, event_id)

    with service.client() as client:
        answer = client.get(f"/api/v1/events/{event_id}/track")
        assert answer.status_code == 200, answer.text
        assert answer.json() == expected
        assert set(answer.json()) == {"event_id", "hz", "truncated", "points"}
        assert set(answer.json()["points"][0]) == {"t", "bbox", "confidence", "zones"}

        for unknown in ("0" * 32, "not-an-event"):
            missing = client.get(f"/api/v1/events/{unknown}/track")
            assert missing.status_code == 404 and missing.json()["error"] == "event_not_found", missing.text
            assert unknown in missing.json()["detail"]

        assert client.delete(f"/api/v1/events/{event_id}").status_code == 200
        gone = client.get(f"/api/v1/events/{event_id}/track")
        assert gone.status_code == 404 and gone.json()["detail"] == f"No event with id {event_id!r}"
