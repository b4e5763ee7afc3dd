"""Re-ID: which earlier look of the same object an ended event is, across cameras.

One pure function over the vector index's `search` and a lookup of stored records, so any index
(sqlite-vec, pgvector, an exact one in a test) gives the same decision. Time and class are gates,
inside the index's query (the same label; started within the window); appearance decides among
what passes them. NVIDIA's multi-camera tracking clusters appearance under time and camera-layout
constraints; this keeps the idea and drops the layout (we have none).

The time gate is symmetric: an earlier look started at most `window_s` before this event's start,
or while this event lived. Two cameras that see one object at once end its two events in either
order, and whichever ends first must not be the only one that could have found the other.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from rtdetr_service.core.results import EventRecord
from rtdetr_service.core.search import SearchFilters, SearchHit

# search(vector, model_id, filters, limit, offset) -> hits, most similar first: the index's own method.
Search = Callable[[np.ndarray, str, SearchFilters, int, int], Sequence[SearchHit]]
# records(event ids) -> the stored records among them, by id.
Records = Callable[[Sequence[str]], Mapping[str, EventRecord]]

PAGE = 20  # candidates read per search; most decisions need the first page
MAX_PAGES = 5  # past 100 candidates above the threshold that cannot be linked, a new identity is fairer


@dataclass(frozen=True, slots=True)
class ReidOptions:
    threshold: float  # cosine similarity from which two looks are one object
    window_s: float  # how long before this event's start an earlier look may have started


@dataclass(frozen=True, slots=True)
class Link:
    """Re-ID's decision: the event's global_id, and the earlier look it came from (None: a new one)."""

    global_id: str
    matched: str | None = None
    score: float | None = None


def camera_of(record: EventRecord) -> str:
    """What counts as one camera: its name, or its session when it has none (two unnamed sessions on
    one URL are two viewpoints to Re-ID, as two cameras looking at one place are)."""
    return record.camera if record.camera is not None else f"session:{record.session_id}"


def apart(a: EventRecord, b: EventRecord) -> bool:
    """Whether two lives do not overlap in time: one ended before the other started."""
    a_end = a.end_time if a.end_time is not None else float("inf")
    b_end = b.end_time if b.end_time is not None else float("inf")
    return a_end < b.start_time or b_end < a.start_time


def may_be_same(event: EventRecord, other: EventRecord) -> bool:
    """The gates besides time and label: another camera, or the same one after a gap (two objects
    seen at once by one camera are two objects, however alike)."""
    return camera_of(other) != camera_of(event) or apart(event, other)


def link(
    event: EventRecord,
    vector: np.ndarray,
    model_id: str,
    *,
    search: Search,
    records: Records,
    options: ReidOptions,
    new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
) -> Link:
    """The global_id of an ended event: that of the most similar earlier look of the same label that
    passes the gates and already has one, when its similarity reaches the threshold; else a new one."""
    end = event.end_time if event.end_time is not None else event.last_seen
    filters = SearchFilters(
        labels=(event.label,),
        after=event.start_time - options.window_s,
        before=np.nextafter(end, np.inf).item(),  # `before` is exclusive: a look started at our end is in
        exclude=(event.id,),
    )
    for page in range(MAX_PAGES):
        hits = list(search(vector, model_id, filters, PAGE, page * PAGE))
        known = records([hit.event_id for hit in hits]) if hits else {}
        for hit in hits:
            if hit.score < options.threshold:
                return Link(new_id())  # most similar first: nothing further can reach it
            other = known.get(hit.event_id)
            # A look not stored yet, or not decided yet (live, or ended a moment ago), finds us when it ends.
            if other is None or other.global_id is None or not may_be_same(event, other):
                continue
            return Link(other.global_id, hit.event_id, hit.score)
        if len(hits) < PAGE:
            break
    return Link(new_id())
