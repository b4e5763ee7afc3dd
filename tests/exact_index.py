"""Test helpers for the embedding stage and Re-ID: an exact cosine index over numpy arrays with the
filters inside the query (what the real index does with sqlite-vec or pgvector, for a handful of
vectors), and an encoder whose answer is known (the crop's mean colour as a direction)."""

from __future__ import annotations

import threading
from typing import Mapping, Sequence

import numpy as np

from rtdetr_service.core.results import EventRecord
from rtdetr_service.core.search import SearchFilters, SearchHit


class ExactIndex:
    """Vectors by event id with each event's record (for the filters); brute-force cosine search."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.vectors: dict[str, tuple[np.ndarray, str]] = {}
        self.records: dict[str, EventRecord] = {}
        self.upserts: list[str] = []
        self.searches: list[SearchFilters] = []

    def add_record(self, record: EventRecord) -> None:
        with self._lock:
            self.records[record.id] = record

    def upsert(self, event_id: str, vector: np.ndarray, model_id: str) -> None:
        with self._lock:
            self.vectors[event_id] = (np.asarray(vector, np.float32), model_id)
            self.upserts.append(event_id)

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

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if self.fail:
            raise RuntimeError("the encoder broke")
        self.calls.append(len(images))
        rows = np.array([img.reshape(-1, 3).mean(axis=0) - 127.5 for img in images], np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError("not needed by the stage")
