"""Re-ID's decision over a real (exact) index: label and time are gates inside the query, the same
camera only after a gap, the threshold decides, and an event never finds itself."""

from __future__ import annotations

import numpy as np
import pytest

from rtdetr_service.core.results import EventRecord
from rtdetr_service.outputs.embeddings.reid import PAGE, ReidOptions, apart, link

from exact_index import ExactIndex

T0 = 1_700_000_000.0
MODEL = "test/model"
OPTIONS = ReidOptions(threshold=0.8, window_s=600.0)


def record(
    event_id: str,
    start: float,
    end: float | None,
    *,
    camera: str | None = "gate",
    label: str = "person",
    session: str = "s1",
    global_id: str | None = None,
) -> EventRecord:
    return EventRecord(
        id=event_id,
        session_id=session,
        camera=camera,
        track_id=1,
        label=label,
        class_id=0,
        start_time=T0 + start,
        end_time=None if end is None else T0 + end,
        last_seen=T0 + (end if end is not None else start),
        best_confidence=0.9,
        best_bbox=(0.0, 0.0, 10.0, 10.0),
        best_time=T0 + start,
        frame_width=64,
        frame_height=48,
        global_id=global_id,
    )


def unit(*values: float) -> np.ndarray:
    v = np.array(values, np.float32)
    return v / np.linalg.norm(v)


def at_cosine(base: np.ndarray, cosine: float) -> np.ndarray:
    """A unit vector whose cosine with `base` (a unit vector along x) is `cosine`."""
    return unit(cosine, np.sqrt(1 - cosine**2), 0.0)


X = unit(1, 0, 0)


def stored(index: ExactIndex, rec: EventRecord, vector: np.ndarray, model: str = MODEL) -> None:
    index.add_record(rec)
    index.upsert(rec.id, vector, model)


def decide(index: ExactIndex, event: EventRecord, vector: np.ndarray = X, options: ReidOptions = OPTIONS):
    index.add_record(event)
    index.upsert(event.id, vector, MODEL)
    return link(event, vector, MODEL, search=index.search, records=index.lookup, options=options, new_id=lambda: "new")


def test_an_earlier_look_on_another_camera_above_the_threshold_gives_its_global_id():
    index = ExactIndex()
    stored(index, record("a", 0, 10, camera="gate", global_id="g-1"), at_cosine(X, 0.9))
    decision = decide(index, record("b", 60, 70, camera="yard"))
    assert (decision.global_id, decision.matched) == ("g-1", "a")
    assert decision.score == pytest.approx(0.9, abs=1e-5)


def test_below_the_threshold_it_is_a_new_identity():
    index = ExactIndex()
    stored(index, record("a", 0, 10, camera="gate", global_id="g-1"), at_cosine(X, 0.79))
    assert decide(index, record("b", 60, 70, camera="yard")).global_id == "new"


def test_another_label_never_links_however_alike():
    index = ExactIndex()
    stored(index, record("a", 0, 10, camera="gate", label="car", global_id="g-1"), X)
    assert decide(index, record("b", 60, 70, camera="yard", label="person")).global_id == "new"
    assert index.searches[-1].labels == ("person",)  # the gate is inside the query


def test_a_look_that_started_before_the_window_is_not_linked():
    index = ExactIndex()
    stored(index, record("old", 0, 10, camera="gate", global_id="g-old"), X)
    stored(index, record("recent", 500, 510, camera="gate", global_id="g-recent"), at_cosine(X, 0.85))
    # given b starting 700 s after "old" began and 200 s after "recent" began, with a 600 s window
    decision = decide(index, record("b", 700, 710, camera="yard"))
    # then the older, more similar look is outside the window; the recent one is linked
    assert decision.global_id == "g-recent"


def test_the_same_camera_links_only_after_a_gap():
    index = ExactIndex()
    # given an object still in view on the gate camera, and an identical one appearing there meanwhile
    stored(index, record("a", 0, 30, camera="gate", global_id="g-1"), X)
    # then two objects seen at once by one camera stay two objects
    assert decide(index, record("b", 10, 20, camera="gate")).global_id == "new"
    # and one seen again on that camera after it left is the same object
    assert decide(index, record("c", 40, 50, camera="gate")).global_id == "g-1"


def test_unnamed_cameras_are_told_apart_by_session():
    index = ExactIndex()
    stored(index, record("a", 0, 30, camera=None, session="s1", global_id="g-1"), X)
    # given two unnamed sessions seeing the same object at the same time
    assert decide(index, record("b", 1, 29, camera=None, session="s2")).global_id == "g-1"
    # while the same unnamed session seeing two at once does not link them
    assert decide(index, record("c", 2, 28, camera=None, session="s1")).global_id == "new"


def test_a_look_that_started_while_this_one_lived_is_found_whichever_ended_first():
    index = ExactIndex()
    # given the look on the yard camera started after b, and was decided when it ended before b
    stored(index, record("yard", 5, 15, camera="yard", global_id="g-1"), X)
    # then b, ending later, finds it though it started after b's start
    assert decide(index, record("b", 0, 20, camera="gate")).global_id == "g-1"
    # and a look that started after b ended is not b's to take
    stored(index, record("later", 25, 30, camera="yard", global_id="g-2"), X)
    index.vectors.pop("yard")
    assert decide(index, record("c", 0, 20, camera="gate")).global_id == "new"


def test_it_never_finds_itself_and_skips_looks_not_decided_yet():
    index = ExactIndex()
    stored(index, record("live", 0, None, camera="yard"), X)  # live on another camera: no global_id yet
    stored(index, record("a", 0, 10, camera="hall", global_id="g-1"), at_cosine(X, 0.85))
    decision = decide(index, record("b", 5, 15, camera="gate"))
    assert decision.global_id == "g-1"
    assert "b" in index.searches[-1].exclude


def test_vectors_of_another_model_are_never_compared():
    index = ExactIndex()
    stored(index, record("a", 0, 10, camera="gate", global_id="g-1"), X, model="other/model")
    assert decide(index, record("b", 60, 70, camera="yard")).global_id == "new"


def test_past_a_page_of_looks_that_cannot_be_linked_it_reads_the_next_page():
    index = ExactIndex()
    for i in range(PAGE + 3):  # a crowd the same camera saw at the same time as b
        stored(index, record(f"crowd-{i:02}", 1, 20, camera="gate", global_id=f"g-c{i}"), X)
    stored(index, record("elsewhere", 2, 20, camera="yard", global_id="g-y"), at_cosine(X, 0.9))
    assert decide(index, record("b", 0, 20, camera="gate")).global_id == "g-y"


def test_apart_is_false_for_overlapping_or_live_lives():
    assert apart(record("a", 0, 10), record("b", 11, 12))
    assert not apart(record("a", 0, 10), record("b", 10 - 1, 12))
    assert not apart(record("a", 0, None), record("b", 100, 120))
