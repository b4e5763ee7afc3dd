"""Test helpers for the embedding stage and Re-ID: an exact cosine index over numpy arrays with the
filters inside the query (what the real index does with sqlite-vec or pgvector, for a handful of
vectors; its `texts` holds the descriptions' vectors), and an encoder whose answer is known (the crop's
mean colour as a direction; a text's digest as one)."""

from __future__ import annotations

import hashlib
import threading
from typing import Mapping, Sequence

import numpy as np

from rtdetr_service.core.results import EventRecord
from rtdetr_service.core.search import SearchFilters, SearchHit


class ExactIndex:
    """Vectors by event id with each event's record (for the filters); brute-force cosine search."""

    def __init__(self, *, texts: bool = True) -> None:
        self._lock = threading.Lock()
        self.vectors: dict[str, tuple[np.ndarray, str]] = {}
        self.records: dict[str, EventRecord] = {}
        self.upserts: list[str] = []
        self.searches: list[SearchFilters] = []
        self.texts: ExactIndex | None = ExactIndex(texts=False) if texts else None

    def add_record(self, record: EventRecord) -> None:
        with self._lock:
            self.records[record.id] = record

    def upsert(self, event_id: str, vector: np.ndarray, model_id: str) -> None:
        with self._lock:
            self.vectors[event_id] = (np.asarray(vector, np.float32), model_id)
            self.upserts.append(event_id)

    def upsert_many(self, model_id: str, items: Sequence[tuple[str, np.ndarray]]) -> int:
        for event_id, vector in items:
            self.upsert(event_id, vector, model_id)
        return len(items)

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
