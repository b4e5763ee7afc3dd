"""Re-ID across replicas: two replicas (two event stores and two embedding stages on one PostgreSQL
with pgvector, as two processes would have) that end look-alike events at the same instant give
them one global_id, because each decision is made and written under the store's lock for its
label. The race is made certain, not hoped for: B's event ends once A's decision has begun, and A's
decision waits, after its search, until B has read what it found (at most WAIT_S); under the lock B
cannot search until A's decision is written."""

from __future__ import annotations

import threading

import pytest

from rtdetr_service.outputs.embeddings.settings import EmbeddingSettings
from rtdetr_service.outputs.embeddings.stage import EmbedderSlot, EmbeddingParts, EmbeddingStage
from rtdetr_service.outputs.registry import connect_republishers
from rtdetr_service.outputs.store.event_store import EventStore
from rtdetr_service.outputs.store.sink import EventStoreSink

from exact_index import MeanColour, Scene
from support import STORE_NOW, wait_until

RED = (0, 0, 255)  # BGR
WAIT_S = 2.0


class SlowDecider:
    """Replica A's index: says when its search begins, and once done waits until B has read the
    records of what its own search found (or WAIT_S)."""

    def __init__(self, index, began: threading.Event, other_read: threading.Event) -> None:
        self._index, self._began, self._other_read = index, began, other_read
        self.texts = index.texts

    def upsert(self, *args):
        return self._index.upsert(*args)

    def search(self, *args):
        self._began.set()
        hits = self._index.search(*args)
        self._other_read.wait(WAIT_S)
        return hits


def announcing(records, read: threading.Event):
    """Replica B's records: says when it has read them."""

    def read_and_say(event_ids):
        known = records(event_ids)
        read.set()
        return known

    return read_and_say


@pytest.fixture
def replicas(pgvector_url, tmp_path):
    """Two replicas' stores and stages on one database; A's decisions wait for B's search to begin."""
    a_began, b_read = threading.Event(), threading.Event()
    made = []
    for name in ("a", "b"):
        store = EventStore(pgvector_url, tmp_path / name, clock=lambda: STORE_NOW)
        store.start()
        slot = EmbedderSlot()
        slot.set(MeanColour())
        if name == "a":
            index, records = SlowDecider(store.vectors, a_began, b_read), store.records
        else:
            index, records = store.vectors, announcing(store.records, b_read)
        settings = EmbeddingSettings(embed_early_s=60.0, reid_threshold=0.9)
        stage = EmbeddingStage(EmbeddingParts(settings, slot, index, records, store.decisions))
        sinks = [EventStoreSink(store), stage]
        connect_republishers(sinks)
        stage.start()
        made.append((store, stage, sinks))
    yield made, a_began
    for store, stage, _ in made:
        stage.close(2.0)
        store.stop(5.0)


def test_two_replicas_ending_look_alikes_at_once_give_them_one_global_id(replicas):
    ((store_a, stage_a, sinks_a), (store_b, stage_b, sinks_b)), a_began = replicas
    # The same red figure walks past camera A and camera B at the same time; each replica runs one.
    walks = [
        (Scene("session-a", "cam-a", t0=STORE_NOW - 60).walk(0.0, 2.0, (1, RED)), sinks_a),
        (Scene("session-b", "cam-b", t0=STORE_NOW - 60).walk(0.0, 2.0, (1, RED)), sinks_b),
    ]
    ids = []
    for steps, sinks in walks:
        for step in steps[:-1]:  # every frame, but not yet the step that ends the event
            for sink in sinks:
                sink.handle(step)
        ids += [c.event.id for s in steps for c in s.events if c.kind == "new"]
    # Both rows are stored before the ends, as they are long before an event ends in a real session.
    assert wait_until(lambda: all(store_a.get(i) for i in ids), timeout=10)
    (steps_a, _), (steps_b, _) = walks
    for sink in sinks_a:
        sink.handle(steps_a[-1])
    assert a_began.wait(10)  # A is deciding: now B's event ends
    for sink in sinks_b:
        sink.handle(steps_b[-1])

    def decided() -> list:
        return [(store_a.get(i) or {}).get("global_id") for i in ids]

    assert wait_until(lambda: all(decided()), timeout=15), decided()
    assert len(set(decided())) == 1, f"one object, two identities: {decided()}"
    assert stage_a.stats().detail["new_identities"] + stage_b.stats().detail["new_identities"] == 1
    assert stage_a.stats().detail["linked"] + stage_b.stats().detail["linked"] == 1
    assert stage_a.stats().failed == stage_b.stats().failed == 0
