"""The event store keeps what the vision-language model said: a description and rules' answers on their own
updates, kept when a later change (the publisher's next update, the end, Re-ID's) does not carry them,
in one batch or in several, and read back by the events API's queries. On SQLite and PostgreSQL, with
changes from the real event lifecycle."""

from __future__ import annotations

import dataclasses

import numpy as np

from rtdetr_service.analytics.events import EventLifecycle
from rtdetr_service.core.results import EventChange, RuleAnswer
from rtdetr_service.core.types import Detection, Frame

from support import STORE_NOW, wait_until

ANSWER = RuleAnswer(
    rule="door",
    question="Is the person carrying a parcel?",
    time=STORE_NOW - 59,
    event_id=None,
    session_id="session-1",
    camera="gate",
    text='{"answer": "yes", "score": 0.8, "reason": "a box"}',
    answer="yes",
    score=0.8,
    model_id="scripted-vlm",
)


def a_life():
    """new, a live update, and the end of one person."""
    life = EventLifecycle("session-1", "gate", end_after_s=5.0, update_interval_s=0.5)
    image = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    person = Detection(0, "person", (10, 10, 50, 90), 0.8, 1)
    (new,) = life.update(Frame(image, 0, STORE_NOW - 60, 0.0), [person])
    (update,) = life.update(Frame(image, 1, STORE_NOW - 59, 1.0), [person])
    (end,) = life.close_all()
    return new, update, end


def test_a_description_and_answers_survive_later_changes_that_do_not_carry_them(make_store):
    store = make_store()
    new, update, end = a_life()
    answer = dataclasses.replace(ANSWER, event_id=new.event.id)
    # given a live event whose rule's answer came, then its publisher's next update, in one batch
    answered = dataclasses.replace(new.event, answers=(answer,))
    store.submit([new, EventChange("update", answered, new.event), update])
    assert wait_until(lambda: (store.get(new.event.id) or {}).get("answers"), timeout=10)
    # when it ends, and then its description comes, then Re-ID's global_id without it
    store.submit([end])
    described = dataclasses.replace(end.event, description="A person in a red coat.", description_model="m")
    store.submit([EventChange("update", dataclasses.replace(described, answers=(answer,)), end.event)])
    store.submit([EventChange("update", dataclasses.replace(end.event, global_id="g-1"), end.event)])
    assert wait_until(lambda: (store.get(new.event.id) or {}).get("global_id") == "g-1", timeout=10)
    # then the event has all of it, as the API shows it and as a record
    event = store.get(new.event.id)
    assert (event["description"], event["description_model"]) == ("A person in a red coat.", "m")
    assert event["answers"] == [answer.as_data()] and not event["active"]
    record = store.records([new.event.id])[new.event.id]
    assert record.answers == (answer,) and record.description == "A person in a red coat."
    page, _ = store.query(session_id="session-1")
    assert page[0]["description"] == "A person in a red coat." and page[0]["answers"][0]["answer"] == "yes"


def test_in_one_batch_a_later_change_keeps_what_an_earlier_one_brought(make_store):
    store = make_store()
    new, update, end = a_life()
    described = dataclasses.replace(end.event, description="A person.", description_model="m", global_id="g-2")
    store.submit([new, update, EventChange("update", described, end.event), end])  # a replayed end last
    assert wait_until(lambda: (store.get(new.event.id) or {}).get("description") == "A person.", timeout=10)
    assert store.get(new.event.id)["global_id"] == "g-2"


def test_an_event_without_words_says_null_and_no_answers(make_store):
    store = make_store()
    new, _, _ = a_life()
    store.submit([new])
    assert wait_until(lambda: store.get(new.event.id) is not None, timeout=10)
    event = store.get(new.event.id)
    assert (event["description"], event["description_model"], event["answers"]) == (None, None, [])
