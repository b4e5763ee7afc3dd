"""Test helpers for the embedding stage and Re-ID: an exact cosine index over numpy arrays with the
filters inside the query (what the real index does with sqlite-vec or pgvector, for a handful of
vectors; its `texts` holds the descriptions' vectors), and an encoder whose answer is known (the crop's
mean colour as a direction; a text's digest as one), and a camera whose events are known (`Scene`)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import threading
from typing import Iterator, Mapping, Sequence

import numpy as np

from rtdetr_service.analytics.events import EventLifecycle
from rtdetr_service.core.results import EventRecord, Published, SessionView
from rtdetr_service.core.search import SearchFilters, SearchHit
from rtdetr_service.core.types import Detection, Frame, FrameResult

T0 = 1_700_000_000.0  # the Unix time a Scene starts at, unless told


class ExactIndex:
    """Vectors by event id with each event's record (for the filters); brute-force cosine search."""

    def __init__(self, *, texts: bool = True, needs_record: bool = True) -> None:
        self._lock = threading.Lock()
        self._deciding = threading.Lock()
        self.vectors: dict[str, tuple[np.ndarray, str]] = {}
        self.records: dict[str, EventRecord] = {}
        self.upserts: list[str] = []
        self.searches: list[SearchFilters] = []
        self._needs_record = needs_record
        # the descriptions' vectors: their events' records are the image index's
        self.texts: ExactIndex | None = ExactIndex(texts=False, needs_record=False) if texts else None

    def add_record(self, record: EventRecord) -> None:
        with self._lock:
            self.records[record.id] = record

    def upsert(self, event_id: str, vector: np.ndarray, model_id: str) -> bool:
        """As the real index: kept only for an event the store has (False otherwise)."""
        with self._lock:
            if self._needs_record and event_id not in self.records:
                return False
            self.vectors[event_id] = (np.asarray(vector, np.float32), model_id)
            self.upserts.append(event_id)
            return True

    def upsert_many(self, model_id: str, items: Sequence[tuple[str, np.ndarray]]) -> int:
        return sum(self.upsert(event_id, vector, model_id) for event_id, vector in items)

    @contextlib.contextmanager
    def deciding(self, label: str) -> Iterator:
        """As the store's Decisions: one decision at a time, written at once, an earlier one standing."""
        with self._deciding:

            def keep(event_id: str, global_id: str) -> str | None:
                with self._lock:
                    record = self.records.get(event_id)
                    if record is None:
                        return None
                    if record.global_id is None:
                        record = self.records[event_id] = dataclasses.replace(record, global_id=global_id)
                    return record.global_id

            yield keep

    def get(self, event_id: str):
        with self._lock:
            return self.vectors.get(event_id)

    def search(
        self, vector: np.ndarray, model_id: str, filters: SearchFilters, limit: int, offset: int
    ) -> list[SearchHit]:
        with self._lock:
            self.searches.append(filters)
            hits = [
                SearchHit(event_id, float(np.dot(vector, stored)))
                for event_id, (stored, model) in self.vectors.items()
                if model == model_id and self._passes(self.records.get(event_id), filters, event_id)
            ]
        hits.sort(key=lambda h: (-h.score, h.event_id))
        return hits[offset : offset + limit]

    @staticmethod
    def _passes(record: EventRecord | None, f: SearchFilters, event_id: str) -> bool:
        if record is None or event_id in f.exclude:
            return False
        return (
            (not f.labels or record.label in f.labels)
            and (not f.cameras or record.camera in f.cameras)
            and (f.session_id is None or record.session_id == f.session_id)
            and (f.after is None or record.start_time >= f.after)
            and (f.before is None or record.start_time < f.before)
        )

    def lookup(self, event_ids: Sequence[str]) -> Mapping[str, EventRecord]:
        """What the store would answer for these ids."""
        with self._lock:
            return {i: self.records[i] for i in event_ids if i in self.records}


class MeanColour:
    """An encoder whose vectors are known: a crop's mean RGB, centred on grey, as a unit vector. Red and
    blue crops point apart (cosine -1/3); two crops of one colour point the same way (cosine 1)."""

    model_id = "test/mean-colour"
    dim = 3
    trained = False

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.fail = False
        self.texts: list[str] = []  # every text embedded, in order
        self.text_threads: set[str] = set()  # the threads that embedded them
        self.fail_texts = False

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if self.fail:
            raise RuntimeError("the encoder broke")
        self.calls.append(len(images))
        rows = np.array([img.reshape(-1, 3).mean(axis=0) - 127.5 for img in images], np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Each text's digest as a direction: the same text the same vector, another text another."""
        if self.fail_texts:
            raise RuntimeError(f"the text tower broke on {texts[0]!r}")  # as a tokenizer's error may quote
        self.texts.extend(texts)
        self.text_threads.add(threading.current_thread().name)
        digests = [hashlib.blake2b(text.encode(), digest_size=3).digest() for text in texts]
        rows = np.array([[b + 0.5 for b in digest] for digest in digests], np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


class Scene:
    """One session's camera: grey frames with coloured boxes, through a real event lifecycle."""

    def __init__(self, session_id: str, camera: str | None = None, t0: float = T0) -> None:
        self.t0 = t0
        self.view = SessionView(session_id, camera, enable_drawing=False, jpeg_quality=75)
        self.events = EventLifecycle(session_id, camera, end_after_s=1.0, snapshot_interval_s=0.5)
        self.index = 0

    def step(self, t: float, *objects: tuple[int, tuple[int, int, int], float]) -> Published:
        """The frame at `t` s with each (track id, BGR colour, x) as a 20x30 box, and what it changed."""
        image = np.full((120, 160, 3), 128, np.uint8)
        detections = []
        for track, colour, x in objects:
            x1 = int(x)
            image[40:70, x1 : x1 + 20] = colour
            detections.append(Detection(0, "person", (float(x1), 40.0, float(x1 + 20), 70.0), 0.8, track))
        frame = Frame(image, self.index, self.t0 + t, t)
        self.index += 1
        changes = self.events.update(frame, detections)
        return Published(
            self.view, FrameResult(self.view.session_id, frame, tuple(detections), 0.01), (), tuple(changes)
        )

    def walk(self, start: float, seconds: float, *objects: tuple[int, tuple[int, int, int]], fps: float = 10.0):
        """Steps of the objects walking right for `seconds`, then the step that ends them."""
        steps, n = [], int(seconds * fps)
        for i in range(n):
            t = start + i / fps
            steps.append(self.step(t, *((track, colour, 5 + i * 100 / n) for track, colour in objects)))
        steps.append(Published(self.view, None, (), tuple(self.events.tick(self.t0 + start + seconds + 2.0))))
        return steps
