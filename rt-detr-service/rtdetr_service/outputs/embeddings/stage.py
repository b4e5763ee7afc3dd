"""The embedding stage: each event's appearance vector, into the index, and its global_id out.

A sink like the others. On a session's publisher thread it does only cheap work (outputs/base.py):
from the frames it is handed it cuts small crops of each live event (crops.py: the best view, and up
to EMBED_CROPS_PER_EVENT more over the life, while the session's crops hold less than
EMBED_CROPS_MAX_MB: past it best views only, the others not cut and counted as shed), and it queues
an embedding request twice per event: once early (the event has lived EMBED_EARLY_S, so live objects
can be found) and once at its end (all its crops). The queue is bounded and fair between sessions;
requests hold crops, never frames. Its own thread (`sink-embeddings`) takes requests, batches their
crops across sessions (at most EMBED_BATCH a pass), runs the encoder, averages each event's crops
into one normalised vector and upserts it with the model's id. At an end, Re-ID (reid.py) decides
the global_id inside the store's `deciding` (store/identities.py: written at once, one decision per
label at a time across replicas, so two replicas ending look-alikes together never mint two ids),
and the ended record with it goes out as one more "update" to every other output of the session (the
store keeps it again, webhook/MQTT/Kafka send it), on this thread, bounded by what was queued.

Descriptions: a change (new, update or end) whose record carries a `description` this stage has not
embedded for that event (a digest per event id, the newest DESCRIPTIONS_KEPT remembered) queues a
text request in the same queue; the thread embeds the descriptions with the encoder's text tower, in
passes of at most EMBED_BATCH, and upserts each into the index's text vectors under the encoder's id.
A description is a model's words: bounded here too (DESCRIPTION_MAX_CHARS) and never logged. An
update that brings only words (the VLM stage's, from its own thread) touches nothing else here.

Until the encoder has loaded (or when it failed to), requests wait in the queue, the oldest of the
busiest session dropped past its bound, counted; the stage says so in its state.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Callable, Protocol, Sequence

import numpy as np

from rtdetr_service.core.results import Embedding, EventChange, EventRecord, Published, SessionView
from rtdetr_service.core.search import Embedder, SearchFilters, SearchHit
from rtdetr_service.core.slot import ModelSlot
from rtdetr_service.core.types import FrameResult
from rtdetr_service.outputs.base import QueuedSink, Sink, SinkStats, republish
from rtdetr_service.outputs.embeddings.crops import Crop, EventCrops, cut
from rtdetr_service.outputs.embeddings.reid import Records, ReidOptions, link
from rtdetr_service.outputs.embeddings.settings import EmbeddingSettings
from rtdetr_service.outputs.store.identities import Keep
from rtdetr_service.outputs.store.vectors import VectorsUnavailable

log = logging.getLogger(__name__)

DESCRIPTIONS_KEPT = 10_000  # events whose description's digest is remembered (a resend is not embedded again)
# Descriptions come bounded (VLM_ANSWER_MAX_CHARS); this holds whatever sends one. The text tower reads
# far less anyway (64 tokens for SigLIP).
DESCRIPTION_MAX_CHARS = 4096


class TextVectors(Protocol):
    """What the stage needs of the index's text vectors (the descriptions')."""

    def upsert_many(self, model_id: str, items: Sequence[tuple[str, np.ndarray]]) -> int: ...


class VectorIndex(Protocol):
    """What the stage needs of the event store's vector index (sqlite-vec or pgvector)."""

    texts: TextVectors | None  # None: descriptions are not embedded

    def upsert(self, event_id: str, vector: np.ndarray, model_id: str) -> bool: ...  # False: no such event

    def search(
        self, vector: np.ndarray, model_id: str, filters: SearchFilters, limit: int, offset: int
    ) -> list[SearchHit]: ...


class Decisions(Protocol):
    """Where Re-ID's decisions are kept (store/identities.py): `deciding(label)` yields
    `keep(event_id, global_id)`, which writes the decision and answers the event's global_id as
    stored (an earlier decision stands; None: the event is not stored)."""

    def deciding(self, label: str) -> AbstractContextManager[Keep]: ...


class EmbedderSlot(ModelSlot[Embedder]):
    """The image encoder, once the app's loader thread has set it (core/slot.py `ModelSlot`)."""

    def __init__(self) -> None:
        super().__init__("the image encoder", "requests wait, and the oldest are dropped")


@dataclass(frozen=True)
class EmbeddingParts:
    """What the app hands the stage: its settings, the encoder's slot, the index, the store's
    records (what Re-ID knows of earlier looks) and where its decisions are kept, and the most crops
    one encoder pass takes (EMBED_BATCH, the encoder's setting)."""

    settings: EmbeddingSettings
    embedder: EmbedderSlot
    index: VectorIndex
    records: Records
    decisions: Decisions
    batch: int = 16


@dataclass(frozen=True, slots=True)
class EmbedRequest:
    """One event's crops to embed: early (upsert only) or at its end (upsert, Re-ID, update)."""

    view: SessionView
    record: EventRecord
    crops: tuple[np.ndarray, ...]
    final: bool


@dataclass(frozen=True, slots=True)
class TextRequest:
    """One event's description to embed with the text tower (a model's words: bounded, never logged)."""

    event_id: str
    text: str
    digest: bytes


@dataclass(slots=True)
class _Life:
    """A live event as the publisher side keeps it."""

    record: EventRecord
    crops: EventCrops
    early_sent: bool = False


@dataclass(slots=True)
class _SessionLives:
    """One session's live events; touched by that session's publisher thread only."""

    by_id: dict[str, _Life] = field(default_factory=dict)
    by_track: dict[int, str] = field(default_factory=dict)
    nbytes: int = 0  # what its lives' crops hold


class EmbeddingStage(QueuedSink):
    """See the module docstring."""

    name = "embeddings"

    def __init__(self, parts: EmbeddingParts) -> None:
        settings = parts.settings
        super().__init__(queue_size=settings.embed_queue_size, batch_max=parts.batch)
        self._batch = parts.batch
        self._settings = settings
        self._slot = parts.embedder
        self._index = parts.index
        self._records = parts.records
        self._decisions = parts.decisions
        self._reid = ReidOptions(settings.reid_threshold, settings.reid_window_s)
        self._crops_max = int(settings.embed_crops_max_mb * 1024 * 1024)
        self._sessions: dict[str, _SessionLives] = {}
        self._sessions_lock = threading.Lock()
        self._targets: tuple[Sink, ...] = ()
        self._texts = parts.index.texts
        self._described: OrderedDict[str, bytes] = OrderedDict()  # event → digest queued or embedded
        self._described_lock = threading.Lock()  # publishers and other stages' threads hand changes over
        self.embedded = 0  # vectors upserted
        self.texts_embedded = 0  # description vectors upserted
        self.crops_embedded = 0
        self.linked = 0  # ended events given an earlier look's global_id
        self.new_identities = 0
        self.not_stored = 0  # vectors of events the store does not have (dropped or deleted): not kept
        self.decided_before = 0  # ended events decided once already: the stored global_id stands
        self.unlinked = 0  # ended events left without a global_id: the index cannot search (no pgvector)
        self.reid_problem: str | None = None  # why, in the index's words
        self.superseded = 0  # early requests whose event's end came in the same batch
        self.crops_shed = 0  # crops not kept: their session's crops held EMBED_CROPS_MAX_MB
        self.republish_errors = 0
        self.model_id: str | None = None

    def republish_to(self, sinks: Sequence[Sink]) -> None:
        """The outputs an ended event's update goes to: every sink of the app but this one (so an
        update never comes back here)."""
        self._targets = tuple(s for s in sinks if s is not self)

    # -- publisher side ----------------------------------------------------------------------

    def handle(self, item: Published) -> None:
        if not item.events and item.result is None:
            return
        lives = self._lives(item.session.session_id)
        for change in item.events:
            self._on_change(item.session, lives, change)
        if item.result is not None and lives.by_track:
            self._sample(item.session, lives, item.result)

    def _lives(self, session_id: str) -> _SessionLives:
        with self._sessions_lock:
            return self._sessions.setdefault(session_id, _SessionLives())

    def _on_change(self, view: SessionView, lives: _SessionLives, change: EventChange) -> None:
        record = change.event
        if record.description and self._texts is not None:
            self._maybe_describe(view, record.id, record.description)
        if _newly_said(change):
            return  # the VLM stage's update, from its own thread: new words, nothing new to see
        if change.kind == "update" and record.end_time is not None:
            return  # an ended event's update (ours, Re-ID): nothing new to see
        life = lives.by_id.get(record.id)
        if life is None:
            if change.kind == "end":
                return  # its life began before this stage saw it (or was dropped): no crop of it
            life = lives.by_id[record.id] = _Life(record, EventCrops(self._settings.embed_crops_per_event))
            lives.by_track[record.track_id] = record.id
        life.record = record
        if change.snapshot is not None:
            snap, det = change.snapshot, change.snapshot.detection
            self._add(lives, life, snap.frame.image, det.bbox, snap.frame.timestamp, det.confidence, best=True)
        if change.kind == "end":
            del lives.by_id[record.id]
            lives.nbytes -= life.crops.nbytes
            if lives.by_track.get(record.track_id) == record.id:
                del lives.by_track[record.track_id]
            self._request(view, life, final=True)
        else:
            self._maybe_early(view, life, record.last_seen)

    def _sample(self, view: SessionView, lives: _SessionLives, result: FrameResult) -> None:
        """Another crop of each live event in this frame whose next crop is due, and early requests."""
        t = result.timestamp
        for det in result.detections:
            event_id = lives.by_track.get(det.track_id) if det.track_id is not None else None
            if event_id is None:
                continue
            life = lives.by_id[event_id]
            if life.crops.due(t):
                self._add(lives, life, result.frame.image, det.bbox, t, det.confidence, best=False)
            self._maybe_early(view, life, t)

    def _add(
        self, lives: _SessionLives, life: _Life, image: np.ndarray, bbox, t: float, confidence: float, *, best: bool
    ) -> None:
        """A crop kept for the life: a best view always (it replaces one), another only while the
        session's crops hold less than EMBED_CROPS_MAX_MB (else counted as shed, without cutting it)."""
        room = lives.nbytes < self._crops_max
        if not best and not room:
            self._shed()
            return
        pixels = cut(image, bbox, self._settings.embed_crop_px)
        if pixels is None:
            return
        crop, before = Crop(pixels, t, confidence), life.crops.nbytes
        if best:
            if not room and life.crops.best is not None:
                self._shed()  # the view it beats goes, instead of joining the others
            life.crops.offer_best(crop, keep_beaten=room)
        else:
            life.crops.offer(crop)
        lives.nbytes += life.crops.nbytes - before

    def _shed(self) -> None:
        with self._lock:
            self.crops_shed += 1

    def _maybe_early(self, view: SessionView, life: _Life, t: float) -> None:
        if not life.early_sent and t - life.record.start_time >= self._settings.embed_early_s and len(life.crops):
            life.early_sent = True
            self._request(view, life, final=False)

    def _request(self, view: SessionView, life: _Life, *, final: bool) -> None:
        crops = tuple(life.crops.crops())
        if crops:
            self.offer(EmbedRequest(view, life.record, crops, final), view.session_id)

    def _maybe_describe(self, view: SessionView, event_id: str, text: str) -> None:
        """A text request, unless this very description of the event was queued or embedded already."""
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        with self._described_lock:
            if self._described.get(event_id) == digest:
                return
            self._described[event_id] = digest
            self._described.move_to_end(event_id)
            while len(self._described) > DESCRIPTIONS_KEPT:
                self._described.popitem(last=False)
        self.offer(TextRequest(event_id, text[:DESCRIPTION_MAX_CHARS], digest), view.session_id)

    def _forget(self, requests: Sequence[TextRequest]) -> None:
        """Not embedded after all (dropped, failed, no event yet): the same description sent again is."""
        with self._described_lock:
            for request in requests:
                if self._described.get(request.event_id) == request.digest:
                    del self._described[request.event_id]

    def dropped_entry(self, entry) -> None:
        if isinstance(entry, TextRequest):
            self._forget([entry])

    def session_ended(self, session_id: str) -> None:
        """Its publisher closed every event (their ends are queued); what it kept goes."""
        with self._sessions_lock:
            self._sessions.pop(session_id, None)

    # -- the writer thread --------------------------------------------------------------------

    def ready(self) -> bool:
        """Requests wait in the queue until the encoder is there (bounded: the oldest are dropped)."""
        return self._slot.wait(self.wait_s) is not None

    def write(self, batch: list[EmbedRequest | TextRequest]) -> None:
        """Embed every request's crops and descriptions in passes of at most EMBED_BATCH, then store
        each event's vectors."""
        embedder = self._slot.get()
        if embedder is None:  # ready() said it was there; it is never taken back
            raise RuntimeError("the image encoder is not loaded")
        texts = [r for r in batch if isinstance(r, TextRequest)]
        try:
            failed = self._write_crops(embedder, [r for r in batch if isinstance(r, EmbedRequest)])
            failed += self._write_texts(embedder, texts)
        except BaseException:
            self._forget(texts)  # the whole batch failed: a description sent again is embedded then
            raise
        self.model_id = embedder.model_id
        with self._lock:
            self.sent += len(batch) - len(failed)
            self.failed += len(failed)
            if failed:
                self.last_error = f"{len(failed)} event(s) not indexed: {failed[-1]}"[:500]
        if failed:
            if not self._failing:
                log.warning("sink %s: %s", self.name, self.last_error)
            self._failing = True
        elif self._failing:
            log.info("sink %s: indexing again", self.name)
            self._failing = False

    def after_write(self, batch: list) -> None:
        pass  # write() counts what it indexed and what failed, request by request

    def _write_crops(self, embedder: Embedder, batch: list[EmbedRequest]) -> list[str]:
        """Each event's crops averaged into its vector, stored (and Re-ID at an end); the failures in words."""
        finals = {r.record.id for r in batch if r.final}
        todo = [r for r in batch if r.final or r.record.id not in finals]
        with self._lock:
            self.superseded += len(batch) - len(todo)
        crops = [crop for request in todo for crop in request.crops]
        vectors = self._embed(embedder.embed_images, crops, embedder.dim)
        failed: list[str] = []
        start = 0
        for request in todo:
            rows = vectors[start : start + len(request.crops)]
            start += len(request.crops)
            try:
                self._store(request, _mean_direction(rows), embedder.model_id)
            except Exception as exc:  # noqa: BLE001 - one event's index write or Re-ID costs that event only
                failed.append(f"{type(exc).__name__}: {exc}")
        with self._lock:
            self.crops_embedded += len(crops)
        return failed

    def _write_texts(self, embedder: Embedder, batch: list[TextRequest]) -> list[str]:
        """Each event's newest description in the batch embedded and stored; the failures in words (never
        the description's: an encoder's error may quote its input, so only the error's type is said)."""
        if not batch or self._texts is None:
            return []
        latest = list({r.event_id: r for r in batch}.values())  # a description changed twice: the last one
        with self._lock:
            self.superseded += len(batch) - len(latest)
        try:
            vectors = self._embed(embedder.embed_texts, [r.text for r in latest], embedder.dim)
        except Exception as exc:  # noqa: BLE001 - the descriptions' pass costs its descriptions only
            self._forget(latest)
            return [f"embedding {len(latest)} description(s) failed: {type(exc).__name__}"] * len(latest)
        try:
            stored = self._texts.upsert_many(
                embedder.model_id, [(r.event_id, v) for r, v in zip(latest, vectors, strict=True)]
            )
        except Exception as exc:  # noqa: BLE001 - the index write costs these descriptions only
            self._forget(latest)
            return [f"{type(exc).__name__}: {exc}"] * len(latest)
        if stored < len(latest):
            self._forget(latest)  # some event is not stored (yet, or no more): a resend may find it
        with self._lock:
            self.texts_embedded += stored
        return []

    def _embed(self, embed: Callable[[list], np.ndarray], inputs: list, dim: int) -> np.ndarray:
        size = self._batch
        parts = [np.asarray(embed(inputs[i : i + size]), np.float32) for i in range(0, len(inputs), size)]
        vectors = np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
        if vectors.shape != (len(inputs), dim):
            raise ValueError(f"the encoder gave {vectors.shape} for {len(inputs)} input(s) of dim {dim}")
        return vectors

    def _store(self, request: EmbedRequest, vector: np.ndarray, model_id: str) -> None:
        record = request.record
        stored = self._index.upsert(record.id, vector, model_id)
        with self._lock:
            if stored:
                self.embedded += 1
            else:
                self.not_stored += 1
        if not request.final:
            return
        try:
            with self._decisions.deciding(record.label) as keep:
                decision = link(
                    record, vector, model_id, search=self._index.search, records=self._records, options=self._reid
                )
                kept = keep(record.id, decision.global_id)
        except VectorsUnavailable as exc:
            # The vector is kept (searched once the extension is there); an identity given without a
            # search would be a guess, so the event has none, and the stage's state says why.
            with self._lock:
                self.unlinked += 1
                self.reid_problem = f"Re-ID is off: {exc}"[:500]
            return
        with self._lock:
            if kept is not None and kept != decision.global_id:
                self.decided_before += 1  # decided once already (a replayed end): that decision stands
            elif decision.matched is None:
                self.new_identities += 1
            else:
                self.linked += 1
        linked = replace(record, global_id=kept or decision.global_id)
        embedding = Embedding(model_id, tuple(float(v) for v in vector)) if self._settings.output_embeddings else None
        change = EventChange("update", linked, record, embedding=embedding)
        self._republish(Published(request.view, None, (), (change,)))

    def _republish(self, item: Published) -> None:
        """The update to every other output (outputs/base.py `republish`)."""
        if failed := republish(self._targets, item, "an event's global_id"):
            with self._lock:
                self.republish_errors += failed

    # -- state --------------------------------------------------------------------------------

    def _held_bytes(self) -> int:
        """What every session's live events' crops hold now (read across threads: a moment's sum)."""
        with self._sessions_lock:
            return sum(lives.nbytes for lives in self._sessions.values())

    def stats(self) -> SinkStats:
        base = super().stats()
        held_mb = round(self._held_bytes() / 1024 / 1024, 1)
        waiting = self._slot.waiting_for()
        with self._lock:
            detail = {
                "model_id": self.model_id,
                "embedded": self.embedded,
                "crops_embedded": self.crops_embedded,
                "texts_embedded": self.texts_embedded,
                "linked": self.linked,
                "new_identities": self.new_identities,
                "decided_before": self.decided_before,
                "not_stored": self.not_stored,
                "superseded": self.superseded,
                "crops_shed": self.crops_shed,
                "crops_held_mb": held_mb,
                "republish_errors": self.republish_errors,
                "unlinked": self.unlinked,
            }
            if self.reid_problem is not None:
                detail["reid"] = self.reid_problem
        if waiting is not None and base.state != "failing":
            state = "failing" if self._slot.failed else "degraded"
            return replace(base, state=state, detail={**detail, "detail": waiting})
        return replace(base, detail=detail)


def _newly_said(change: EventChange) -> bool:
    """An update that brings a description and nothing else to see (no snapshot)."""
    before = change.before.description if change.before is not None else None
    return change.kind == "update" and change.snapshot is None and change.event.description not in (None, before)


def _mean_direction(rows: np.ndarray) -> np.ndarray:
    """The normalised mean of unit vectors: the direction they share (one crop: itself)."""
    mean = rows.mean(axis=0, dtype=np.float64)
    norm = np.linalg.norm(mean)
    if not np.isfinite(norm) or norm == 0:
        raise ValueError("the crops' vectors cancel out or are not finite: no direction to store")
    return (mean / norm).astype(np.float32)
