"""The event store keeps what Re-ID decides: an ended event's update with its global_id, a later change
without one keeping it, the records Re-ID reads back (camera, times, global_id) by id, and a decision
written at once under a lock per label that replicas take turns on (PostgreSQL). On SQLite and
PostgreSQL, with changes from the real event lifecycle."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import sqlalchemy as sa

from rtdetr_service.analytics.events import EventLifecycle
from rtdetr_service.core.results import EventChange
from rtdetr_service.core.types import Detection, Frame
from rtdetr_service.outputs.store import identities
from rtdetr_service.outputs.store.event_store import EventStore

from support import STORE_NOW, wait_until


def ended_event(camera: str = "gate") -> tuple[EventChange, EventChange]:
    life = EventLifecycle("session-1", camera, end_after_s=5.0)
    image = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    (new,) = life.update(Frame(image, 0, STORE_NOW - 60, 0.0), [Detection(0, "person", (10, 10, 50, 90), 0.8, 1)])
    (end,) = life.close_all()
    return new, end


def test_records_are_read_back_by_id_with_what_re_id_weighs(make_store):
    store = make_store()
    new, end = ended_event("yard")
    store.submit([new, end])
    wait_until(lambda: (e := store.get(new.event.id)) is not None and not e["active"], timeout=10)
    records = store.records([new.event.id, "no-such-event"])
    assert list(records) == [new.event.id]
    record = records[new.event.id]
    assert (record.camera, record.label, record.start_time, record.end_time) == (
        "yard",
        "person",
        end.event.start_time,
        end.event.end_time,
    )
    assert store.get(new.event.id)["global_id"] is None  # not decided: the API says null


def test_an_update_after_the_end_stores_the_global_id_and_a_later_change_keeps_it(make_store):
    store = make_store()
    new, end = ended_event()
    linked = dataclasses.replace(end.event, global_id="g-1")
    store.submit([new, end, EventChange("update", linked, end.event)])
    assert wait_until(lambda: (store.get(new.event.id) or {}).get("global_id") == "g-1", timeout=10)
    assert store.records([new.event.id])[new.event.id].global_id == "g-1"
    # when a change without one comes later (a stale close, a replay), the identity stays
    store.submit([end])
    wait_until(lambda: store.status()["written"] >= 4, timeout=10)
    assert store.get(new.event.id)["global_id"] == "g-1"


def test_a_decision_is_kept_at_once_and_an_earlier_one_stands(make_store):
    store = make_store()
    new, end = ended_event()
    store.submit([new, end])
    event_id = new.event.id
    assert wait_until(lambda: store.get(event_id) is not None, timeout=10)
    with store.decisions.deciding("person") as keep:
        assert keep(event_id, "g-1") == "g-1"
    assert store.records([event_id])[event_id].global_id == "g-1"  # written, not waiting for the writer
    with store.decisions.deciding("person") as keep:
        assert keep(event_id, "g-2") == "g-1"  # decided once: that decision stands
        assert keep("no-such-event", "g-3") is None


def test_deciders_of_one_label_take_turns_across_replicas_and_other_labels_do_not_wait(
    postgres_url, tmp_path, monkeypatch
):
    monkeypatch.setattr(identities, "LOCK_TIMEOUT_S", 1)
    one = EventStore(postgres_url, tmp_path / "one", clock=lambda: STORE_NOW)
    other = EventStore(postgres_url, tmp_path / "other", clock=lambda: STORE_NOW)  # another replica's
    try:
        with one.decisions.deciding("person"):
            with other.decisions.deciding("car") as keep:  # another label: no wait
                assert keep("no-such-event", "g-1") is None
            started = time.monotonic()
            with pytest.raises(sa.exc.OperationalError, match="lock timeout"):
                with other.decisions.deciding("person"):
                    pass
            assert 0.9 <= time.monotonic() - started < 5  # bounded by LOCK_TIMEOUT_S, then said in words
        with other.decisions.deciding("person") as keep:  # the first decider done: the next goes
            assert keep("no-such-event", "g-2") is None
    finally:
        one.stop()
        other.stop()
