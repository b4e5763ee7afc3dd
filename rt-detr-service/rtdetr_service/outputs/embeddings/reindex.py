"""Reindex: vectors for the stored events that have none of the current model (stored before search
was on, or under another model), made from each event's snapshot file; then text vectors for the
described events whose description has none of the current model, made with the encoder's text
tower (texts are cheap: a description costs far less than a crop).

One thread (`reindex`), one run at a time. It pages through the index's `missing` list oldest first,
so a run stopped half-way (a restart) starts again with what is still missing and never embeds an
event twice. Each event's crop is cut from its stored snapshot as the live stage cuts it (crops.py:
the best box, padded, shrunk to the encoder's size): one view, where the live stage averages its best
view with up to EMBED_CROPS_PER_EVENT more, and the snapshot has the box drawn on it, so a reindexed
vector is close to, not equal to, the one the live stage would have made.

The CPU share is bounded: after each batch the thread sleeps in proportion to the batch's work time
(REINDEX_DUTY=0.5: as long as it worked), and the encoder's own threads are those live embedding uses.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Protocol, Sequence

import cv2
import numpy as np

from rtdetr_service.core.results import EventRecord
from rtdetr_service.core.search import Embedder
from rtdetr_service.outputs.embeddings.crops import cut
from rtdetr_service.outputs.embeddings.stage import DESCRIPTION_MAX_CHARS
from rtdetr_service.outputs.store.vectors import MissingEvent

log = logging.getLogger(__name__)

ESTIMATE_PAGE = 10_000  # events counted to estimate what is left (the index's `missing` page bound)


class VectorTable(Protocol):
    """What a reindex needs of one kind of vectors (an event's image, or its description's text)."""

    def missing(self, model_id: str, limit: int, after: MissingEvent | None = None) -> list[MissingEvent]: ...

    def upsert_many(self, model_id: str, items: Sequence[tuple[str, np.ndarray]]) -> int: ...


class ReindexIndex(VectorTable, Protocol):
    """The image vectors, holding the descriptions' text vectors as `texts` (None: none are kept)."""

    texts: VectorTable | None


class ReindexSource(Protocol):
    """What a reindex reads of the event store: the events' records and their snapshot files."""

    def records(self, event_ids: Sequence[str]) -> Mapping[str, EventRecord]: ...

    def snapshot_path(self, event_id: str) -> Path | None: ...


class EncoderSlot(Protocol):
    """The encoder once loaded (outputs/embeddings/stage.py `EmbedderSlot`)."""

    def wait(self, timeout: float) -> Embedder | None: ...

    def waiting_for(self) -> str | None: ...

    @property
    def failed(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class ReindexOptions:
    batch: int = 16  # events per encoder pass
    duty: float = 0.5  # the share of the thread's time spent working
    crop_px: int = 224  # crops shrunk to this longest side, as the live stage's


class Reindexer:
    """Runs reindexes on a thread of its own, one at a time; `progress()` says where it stands."""

    def __init__(
        self,
        index: ReindexIndex,
        source: ReindexSource,
        slot: EncoderSlot,
        options: ReindexOptions,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if options.batch < 1 or not 0 < options.duty <= 1:
            raise ValueError("batch must be >= 1 and duty in (0, 1]")
        self._index, self._source, self._slot, self._options = index, source, slot, options
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = "idle"
        self._model_id: str | None = None
        self._done = self._skipped = self._failed = self._runs = 0
        self._texts_done = 0  # of `done`, the descriptions
        self._remaining: int | None = None
        self._remaining_capped = False
        self._started_at: float | None = None
        self._finished_at: float | None = None
        self._work_s = 0.0
        self._wall_started: float | None = None
        self._last_error: str | None = None

    # -- control ---------------------------------------------------------------------------------

    def start(self) -> bool:
        """Start a run; False when one is running already (nothing changes)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return False
            self._stop.clear()
            self._state = "waiting"
            self._done = self._skipped = self._failed = self._texts_done = 0
            self._remaining, self._remaining_capped = None, False
            self._started_at, self._finished_at = time.time(), None
            self._wall_started, self._work_s = self._clock(), 0.0
            self._last_error = None
            self._runs += 1
            self._thread = threading.Thread(target=self._run, name="reindex", daemon=True)
            self._thread.start()
        return True

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop a run at its next batch; True once the thread has ended (legal in every state)."""
        self._stop.set()
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def progress(self) -> dict:
        """Where the current (or last) run stands: state, model, counts, rate, last error."""
        with self._lock:
            elapsed = None if self._wall_started is None else max(self._clock() - self._wall_started, 1e-9)
            rate = None if not elapsed or not self._done else self._done / elapsed
            total = None if self._remaining is None else self._done + self._skipped + self._failed + self._remaining
            return {
                "state": self._state,
                "detail": self._detail(),
                "model_id": self._model_id,
                "done": self._done,
                "texts_done": self._texts_done,
                "skipped": self._skipped,
                "failed": self._failed,
                "remaining": self._remaining,
                "total_estimate": total,
                "estimate_capped": self._remaining_capped,
                "rate_per_s": None if rate is None else round(rate, 3),
                "duty": self._options.duty,
                "started_at": self._started_at,
                "finished_at": self._finished_at,
                "runs": self._runs,
                "last_error": self._last_error,
            }

    def _detail(self) -> str:
        words = {
            "idle": "no reindex has run since the service started",
            "waiting": "waiting for the image encoder to load",
            "running": "embedding stored events that have no vector of the current model, oldest first, then "
            "descriptions that have no text vector of it",
            "done": "every stored event with a snapshot has a vector of the current model, and every description "
            "its text vector",
            "stopped": "stopped before the end; a new run continues with what is still missing",
            "failed": "stopped by an error (last_error); a new run continues with what is still missing",
        }
        return words[self._state]

    # -- the thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            embedder = None
            while embedder is None and not self._stop.is_set():
                embedder = self._slot.wait(0.5)
                if embedder is None and self._slot.failed:
                    with self._lock:
                        self._last_error = self._slot.waiting_for()
                    self._finish("failed")
                    return
            if embedder is None:
                self._finish("stopped")
                return
            with self._lock:
                self._model_id, self._state = embedder.model_id, "running"
            self._estimate(embedder.model_id)
            done = self._pages(embedder, self._index, self._images_batch)
            if done and self._index.texts is not None:
                done = self._pages(embedder, self._index.texts, self._texts_batch)
            self._finish("done" if done else "stopped")
        except Exception as exc:  # noqa: BLE001 - said in the progress and the log; the service goes on
            log.exception("reindex failed")
            with self._lock:
                self._last_error = f"{type(exc).__name__}: {exc}"[:500]
            self._finish("failed")

    def _pages(
        self, embedder: Embedder, table: VectorTable, batch: Callable[[Embedder, VectorTable, list[str]], None]
    ) -> bool:
        """Page through what `table` misses of the model, oldest first, `batch` at a time; False if stopped."""
        after: MissingEvent | None = None
        while not self._stop.is_set():
            page = table.missing(embedder.model_id, self._options.batch, after)
            if not page:
                return True
            after = page[-1]
            began = self._clock()
            batch(embedder, table, [event.event_id for event in page])
            worked = self._clock() - began
            with self._lock:
                self._work_s += worked
            # The duty cycle: rest in proportion to the work, so the thread's share stays bounded.
            self._stop.wait(worked * (1.0 - self._options.duty) / self._options.duty)
        return False

    def _estimate(self, model_id: str) -> None:
        """What is left, counted once at the start (at most ESTIMATE_PAGE of each kind: then "at least")."""
        tables = [self._index] if self._index.texts is None else [self._index, self._index.texts]
        counts = [len(table.missing(model_id, ESTIMATE_PAGE)) for table in tables]
        with self._lock:
            self._remaining, self._remaining_capped = sum(counts), max(counts) >= ESTIMATE_PAGE

    def _texts_batch(self, embedder: Embedder, table: VectorTable, event_ids: list[str]) -> None:
        """Embed one page of descriptions; an event deleted meanwhile, or no longer described, is skipped."""
        records = self._source.records(event_ids)
        items = [
            (i, records[i].description[:DESCRIPTION_MAX_CHARS])
            for i in event_ids
            if i in records and records[i].description
        ]
        stored = failed = 0
        if items:
            try:
                vectors = np.asarray(embedder.embed_texts([text for _, text in items]), np.float32)
                stored = table.upsert_many(
                    embedder.model_id, [(i, v) for (i, _), v in zip(items, vectors, strict=True)]
                )
            except Exception as exc:  # noqa: BLE001 - the batch's descriptions only; never their words in the error
                failed = len(items)
                with self._lock:
                    self._last_error = f"embedding {failed} description(s) failed: {type(exc).__name__}"
                log.warning("reindex: a batch of %d description(s) failed: %s", failed, type(exc).__name__)
        with self._lock:
            self._done += stored
            self._texts_done += stored
            self._skipped += len(event_ids) - stored - failed
            self._failed += failed
            if self._remaining is not None:
                self._remaining = max(0, self._remaining - len(event_ids))

    def _images_batch(self, embedder: Embedder, table: VectorTable, event_ids: list[str]) -> None:
        """Embed one page of events from their snapshots; one that cannot be read is skipped."""
        records = self._source.records(event_ids)
        ids, crops, skipped = [], [], 0
        for event_id in event_ids:
            record = records.get(event_id)
            crop = None if record is None else self._crop(record)
            if crop is None:
                skipped += 1  # deleted meanwhile, no snapshot (yet), or an unreadable file
                continue
            ids.append(event_id)
            crops.append(crop)
        stored = failed = 0
        if crops:
            try:
                vectors = np.asarray(embedder.embed_images(crops), np.float32)
                stored = table.upsert_many(embedder.model_id, list(zip(ids, vectors, strict=True)))
                skipped += len(ids) - stored  # deleted while they were embedded
            except Exception as exc:  # noqa: BLE001 - one batch's failure costs its events, the run goes on
                failed = len(ids)
                with self._lock:
                    self._last_error = f"{type(exc).__name__}: {exc}"[:500]
                log.warning("reindex: a batch of %d event(s) failed: %s", len(ids), exc)
        with self._lock:
            self._done += stored
            self._skipped += skipped
            self._failed += failed
            if self._remaining is not None:
                self._remaining = max(0, self._remaining - len(event_ids))

    def _crop(self, record: EventRecord) -> np.ndarray | None:
        """The event's best box cut from its snapshot, as the live stage cuts it; None if unreadable."""
        path = self._source.snapshot_path(record.id)
        if path is None:
            return None
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            return None
        # The snapshot is the frame the best box was seen in; scale the box if it was stored smaller.
        sx = image.shape[1] / record.frame_width if record.frame_width else 1.0
        sy = image.shape[0] / record.frame_height if record.frame_height else 1.0
        x1, y1, x2, y2 = record.best_bbox
        return cut(image, (x1 * sx, y1 * sy, x2 * sx, y2 * sy), self._options.crop_px)

    def _finish(self, state: str) -> None:
        with self._lock:
            self._state = state
            self._finished_at = time.time()
            if state == "done":
                self._remaining, self._remaining_capped = 0, False
        log.info(
            "reindex %s: %d embedded (%d descriptions), %d skipped, %d failed",
            state,
            self._done,
            self._texts_done,
            self._skipped,
            self._failed,
        )
