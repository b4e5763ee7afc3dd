"""The VLM stage: events described and rules' questions answered by a vision-language model.

A sink like the others. On a session's publisher thread it does only cheap work: for a session that
asked for descriptions (`describe`), it keeps small views of each live event of the labels asked for
(views.py: the best view, and up to VLM_DESCRIBE_FRAMES - 1 more over its life), and queues one
describe request per event, at its end or once it has lived `describe.after_s`; for an alert whose
rule asks a question (`ask`), it queues a rule request with the frame that fired it, the box drawn,
and VERDICT_INSTRUCTIONS. Requests hold small pictures, never frames; the queue is bounded (VLM_QUEUE_SIZE)
and fair between sessions and between a session's descriptions and its rules' questions, so a flood of
one never drops the other's. Its own thread (`sink-vlm`) encodes the pictures and hands at most
VLM_WORKERS requests at once to the model (`generate`, bounded by the provider's VLM_TIMEOUT_S).

A description (cut to VLM_ANSWER_MAX_CHARS) goes onto the event's record, and the record goes out as one
more "update" to every other output (store, webhook, MQTT, Kafka, viewers, the embedding stage). A rule's
answer becomes a `RuleAnswer` (its verdict read by `parse_verdict`; `error` in words when the model gave
none) that goes out at once as an answer of its own (`Published.answers`) and onto its event's `answers`,
sent the same way. The update of a live event is handed to the outputs on that session's publisher
thread, at its next step, with the newest record: the outputs see one session's changes in the order
they were made, so a late answer can never bring back a live record after the event's end. An ended
event's record is final, so its update goes out from the stage's thread at once.

Until the model has loaded (or when it failed to), requests wait in the queue, the oldest of the
busiest dropped past its bound, counted; the stage says why in its state. A stalled model stalls this
thread only: the publisher never waits on it.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Protocol, Sequence

import numpy as np

from rtdetr_service.core.results import Alert, EventChange, EventRecord, Published, RuleAnswer, SessionView
from rtdetr_service.core.slot import ModelSlot
from rtdetr_service.core.types import FrameResult
from rtdetr_service.core.vlm import (
    PURPOSES,
    VERDICT_INSTRUCTIONS,
    VisionLanguageModel,
    VlmAnswer,
    VlmError,
    VlmRequest,
    parse_verdict,
)
from rtdetr_service.outputs.base import QueuedSink, Sink, SinkStats, republish
from rtdetr_service.outputs.embeddings.crops import Crop, EventCrops
from rtdetr_service.outputs.vlm.settings import VlmStageSettings
from rtdetr_service.outputs.vlm.views import alert_view, cut_view, jpeg

log = logging.getLogger(__name__)

FINISHED_KEPT = 10_000  # ended events remembered, so a late answer lands on their final record
ERROR_MAX_CHARS = 500


class _VlmBounds(Protocol):
    """The inference floor's VLM settings the stage reads (VLM_*); the app's Settings has them."""

    vlm_image_max_px: int
    vlm_images_max: int
    vlm_answer_max_chars: int
    vlm_prompt_max_chars: int
    vlm_max_tokens: int


@dataclass(frozen=True)
class VlmLimits:
    """The bounds every request and answer keeps (VLM_IMAGE_MAX_PX, VLM_IMAGES_MAX, VLM_ANSWER_MAX_CHARS,
    VLM_PROMPT_MAX_CHARS, VLM_MAX_TOKENS)."""

    image_max_px: int = 768
    images_max: int = 4
    answer_max_chars: int = 2000
    prompt_max_chars: int = 4000
    max_tokens: int | None = None

    @classmethod
    def of(cls, settings: _VlmBounds) -> VlmLimits:
        return cls(
            settings.vlm_image_max_px,
            settings.vlm_images_max,
            settings.vlm_answer_max_chars,
            settings.vlm_prompt_max_chars,
            settings.vlm_max_tokens,
        )


@dataclass(frozen=True)
class VlmStageParts:
    """What the app hands the stage: its settings, the bounds of every call, and the model's slot."""

    settings: VlmStageSettings
    limits: VlmLimits
    vlm: ModelSlot[VisionLanguageModel]


@dataclass(frozen=True, slots=True)
class VlmJob:
    """One question for the model: a description of an event, or a rule's question about an alert."""

    purpose: str  # "describe" | "rule"
    view: SessionView
    record: EventRecord | None  # the event as it was when asked (None: an alert without an event)
    views: tuple[np.ndarray, ...]  # small RGB pictures, encoded on the stage's thread
    prompt: str
    alert: Alert | None = None


@dataclass(slots=True)
class _Life:
    """What the stage knows of one event: the newest record the publisher (or Re-ID) gave, what the
    model said of it, and, for a described event, its views."""

    record: EventRecord
    crops: EventCrops | None = None  # None: not described (only its rules' answers are kept)
    asked: bool = False  # its describe request is queued
    description: str | None = None
    description_model: str | None = None
    answers: tuple[RuleAnswer, ...] = ()

    def merged(self) -> EventRecord:
        """The record as the outputs should have it: the newest, with what the model said."""
        return replace(
            self.record,
            description=self.description or self.record.description,
            description_model=self.description_model or self.record.description_model,
            answers=self.answers,
        )


@dataclass(slots=True)
class _SessionLives:
    """One session's live events, and the updates that wait for its publisher thread."""

    view: SessionView
    by_id: dict[str, _Life] = field(default_factory=dict)
    by_track: dict[int, str] = field(default_factory=dict)
    pending: list[tuple[str, EventRecord]] = field(default_factory=list)  # (event id, its record before)


class VlmStage(QueuedSink):
    """See the module docstring."""

    name = "vlm"

    def __init__(self, parts: VlmStageParts) -> None:
        settings = parts.settings
        super().__init__(queue_size=settings.vlm_queue_size, batch_max=settings.vlm_workers)
        self._settings = settings
        self._limits = parts.limits
        self._slot = parts.vlm
        self._frames = max(1, min(settings.vlm_describe_frames, parts.limits.images_max))
        self._state = threading.Lock()  # lives, the finished, pending updates: publisher threads and ours
        self._sessions: dict[str, _SessionLives] = {}
        self._finished: OrderedDict[str, tuple[SessionView, _Life]] = OrderedDict()
        self._targets: tuple[Sink, ...] = ()
        self.asked = dict.fromkeys(PURPOSES, 0)
        self.answered = dict.fromkeys(PURPOSES, 0)
        self.failed_by = dict.fromkeys(PURPOSES, 0)
        self.dropped_by = dict.fromkeys(PURPOSES, 0)
        self.in_flight = 0
        self.republish_errors = 0
        self.model_id: str | None = None

    def republish_to(self, sinks: Sequence[Sink]) -> None:
        """The outputs the stage's updates and answers go to: every sink of the app but this one."""
        self._targets = tuple(s for s in sinks if s is not self)

    # -- publisher side ----------------------------------------------------------------------

    def handle(self, item: Published) -> None:
        view = item.session
        # Another stage's update of an ended event (Re-ID's global_id) comes from that stage's thread:
        # kept for the final record, and nothing else is done on that thread (see _flush).
        ended_updates = [c for c in item.events if c.kind == "update" and c.event.end_time is not None]
        if ended_updates and item.result is None and len(ended_updates) == len(item.events):
            with self._state:
                for change in ended_updates:
                    self._reid_update(change.event)
            return
        asks = [a for a in item.alerts if a.ask]
        described = view.describe is not None
        if not (item.events or asks or (described and item.result is not None)):
            with self._state:
                lives = self._sessions.get(view.session_id)
            if lives is not None and lives.pending:  # a hint; _flush reads it under the lock
                self._flush(lives)
            return
        lives = self._lives(view)
        for change in item.events:
            self._on_change(view, lives, change, described)
        if described and item.result is not None and lives.by_track:
            self._sample(view, lives, item.result)
        for alert in asks:
            self._ask(view, lives, alert, item)
        self._flush(lives)

    def _lives(self, view: SessionView) -> _SessionLives:
        with self._state:
            lives = self._sessions.get(view.session_id)
            if lives is None:
                lives = self._sessions[view.session_id] = _SessionLives(view)
            lives.view = view
            return lives

    def _on_change(self, view: SessionView, lives: _SessionLives, change: EventChange, described: bool) -> None:
        record = change.event
        if change.kind == "update" and record.end_time is not None:
            with self._state:
                self._reid_update(record)
            return
        with self._state:
            life = lives.by_id.get(record.id)
            if life is None:
                if not (described and change.kind != "end" and view.describe.wants(record.label)):
                    return  # not described; a rule's question about it starts its life here (_ask)
                life = lives.by_id[record.id] = _Life(record, EventCrops(self._frames - 1))
                lives.by_track[record.track_id] = record.id
            life.record = record
        if life.crops is not None and change.snapshot is not None:
            snap, det = change.snapshot, change.snapshot.detection
            self._add(life, snap.frame.image, det.bbox, snap.frame.timestamp, det.confidence, best=True)
        if change.kind == "end":
            with self._state:
                del lives.by_id[record.id]
                if lives.by_track.get(record.track_id) == record.id:
                    del lives.by_track[record.track_id]
                self._remember(view, life)
            if life.crops is not None and not life.asked:
                self._describe(view, life)
        else:
            self._maybe_early(view, life, record.last_seen)

    def _reid_update(self, record: EventRecord) -> None:
        """Keep Re-ID's global_id on the final record a late description or answer goes out with
        (under the state lock)."""
        kept = self._finished.get(record.id)
        if kept is not None:
            kept[1].record = record

    def _sample(self, view: SessionView, lives: _SessionLives, result: FrameResult) -> None:
        """Another view of each described live event in this frame whose next view is due."""
        t = result.timestamp
        for det in result.detections:
            event_id = lives.by_track.get(det.track_id) if det.track_id is not None else None
            life = lives.by_id.get(event_id) if event_id is not None else None
            if life is None or life.crops is None:
                continue
            if life.crops.due(t):
                self._add(life, result.frame.image, det.bbox, t, det.confidence, best=False)
            self._maybe_early(view, life, t)

    def _add(self, life: _Life, image: np.ndarray, bbox, t: float, confidence: float, *, best: bool) -> None:
        pixels = cut_view(image, bbox, self._limits.image_max_px, self._settings.vlm_describe_context)
        if pixels is None:
            return
        crop = Crop(pixels, t, confidence)
        life.crops.offer_best(crop) if best else life.crops.offer(crop)

    def _maybe_early(self, view: SessionView, life: _Life, t: float) -> None:
        after_s = view.describe.after_s if view.describe is not None else None
        if life.crops is None or life.asked or after_s is None:
            return
        if t - life.record.start_time >= after_s and len(life.crops):
            self._describe(view, life)

    def _describe(self, view: SessionView, life: _Life) -> None:
        """Queue the event's one describe request, with its views (the best first)."""
        views = tuple(life.crops.crops()[: self._frames])
        if not views:
            return  # never seen whole inside the frame: nothing to show
        life.asked = True
        record = life.record
        asked_for = view.describe.prompt if view.describe is not None else None
        prompt = f"{asked_for or self._settings.vlm_describe_default_prompt}\n\nThe detector calls it a {record.label}."
        self._offer(VlmJob("describe", view, record, views, prompt[: self._limits.prompt_max_chars]))

    def _ask(self, view: SessionView, lives: _SessionLives, alert: Alert, item: Published) -> None:
        """Queue the question the alert's rule asks, about the frame that fired it, the box drawn."""
        if item.result is None:
            return  # alerts come with their frame; without one there is nothing to ask about
        record = None
        if alert.event_id is not None:
            with self._state:
                life = lives.by_id.get(alert.event_id)
                if life is None:
                    record = next((c.event for c in item.events if c.event.id == alert.event_id), None)
                    if record is not None:
                        life = lives.by_id[record.id] = _Life(record)
                        lives.by_track.setdefault(record.track_id, record.id)
                if life is not None:
                    record = life.record
        picture = alert_view(item.result.frame.image, alert.bbox, self._limits.image_max_px)
        prompt = _rule_prompt(alert)[: self._limits.prompt_max_chars]
        self._offer(VlmJob("rule", view, record, (picture,), prompt, alert))

    def _offer(self, job: VlmJob) -> None:
        with self._lock:
            self.asked[job.purpose] += 1
        self.offer(job, f"{job.purpose}:{job.view.session_id}")

    def offer(self, entry: VlmJob, session_id: str) -> None:
        """Queue one job; past the bound the oldest of the longest queue goes, counted by its purpose."""
        with self._lock:
            self.handled += 1
        pushed_out = self._queue.put_nowait(entry, session_id)
        if pushed_out is not None:
            self._count_dropped(1)
            with self._lock:
                self.dropped_by[pushed_out.purpose] += 1

    def _flush(self, lives: _SessionLives) -> None:
        """The updates the model's words brought to this session's live events, with their newest record,
        to every other output, on this session's publisher thread (see the module docstring)."""
        with self._state:
            if not lives.pending:
                return
            pending, lives.pending = lives.pending, []
            changes = []
            for event_id, before in pending:
                life = lives.by_id.get(event_id) or self._finished_life(event_id)
                if life is not None:
                    changes.append(EventChange("update", life.merged(), before))
        if changes:
            self._republish(Published(lives.view, None, (), tuple(changes)))

    def _finished_life(self, event_id: str) -> _Life | None:
        kept = self._finished.get(event_id)
        return kept[1] if kept is not None else None

    def _remember(self, view: SessionView, life: _Life) -> None:
        self._finished[life.record.id] = (view, life)
        self._finished.move_to_end(life.record.id)
        while len(self._finished) > FINISHED_KEPT:
            self._finished.popitem(last=False)

    def session_ended(self, session_id: str) -> None:
        """Its publisher ended every event (their updates went out with those ends); what it kept goes,
        and an update still waiting (an end that failed) goes out with the record known."""
        with self._state:
            lives = self._sessions.pop(session_id, None)
            if lives is not None:
                for life in lives.by_id.values():
                    self._remember(lives.view, life)
                lives.by_id.clear()
        if lives is not None:
            self._flush(lives)

    # -- the stage's thread -------------------------------------------------------------------

    def ready(self) -> bool:
        """Jobs wait in the queue until the model is there (bounded: the oldest are dropped)."""
        return self._slot.wait(self.wait_s) is not None

    def write(self, batch: list[VlmJob]) -> None:
        """Encode the batch's pictures, ask the model (at most VLM_WORKERS at once), apply each answer."""
        vlm = self._slot.get()
        if vlm is None:  # ready() said it was there; it is never taken back
            raise RuntimeError("the vision-language model is not loaded")
        requests = [
            VlmRequest(job.prompt, tuple(jpeg(v) for v in job.views), job.purpose, self._limits.max_tokens)  # type: ignore[arg-type]
            for job in batch
        ]
        with self._lock:
            self.in_flight = len(requests)
        try:
            answers = vlm.generate(requests)
        finally:
            with self._lock:
                self.in_flight = 0
        self.model_id = vlm.model_id
        if len(answers) != len(batch):
            raise RuntimeError(f"the model gave {len(answers)} answer(s) to {len(batch)} request(s)")
        for job, answer in zip(batch, answers, strict=True):
            try:
                self._apply(job, answer)
            except Exception as exc:  # noqa: BLE001 - one answer's failure costs that answer only
                self._failed(job.purpose, f"{type(exc).__name__}: {exc}")
                log.exception("sink %s: applying a %s answer failed", self.name, job.purpose)

    def after_write(self, batch: list) -> None:
        pass  # _apply counts what was answered and what failed, job by job

    def _apply(self, job: VlmJob, answer: VlmAnswer | VlmError) -> None:
        if isinstance(answer, VlmError):
            self._failed(job.purpose, answer.words)
        if job.purpose == "describe":
            if isinstance(answer, VlmAnswer):
                self._described(job, answer)
        else:
            self._answered(job, answer)

    def _described(self, job: VlmJob, answer: VlmAnswer) -> None:
        text = _bounded(answer.text, self._limits.answer_max_chars)
        if not text:
            self._failed("describe", "the model said nothing about the event")
            return
        self._count_answered("describe")

        def describe(life: _Life) -> None:
            life.description, life.description_model = text, answer.model_id

        self._update(job, describe)

    def _answered(self, job: VlmJob, answer: VlmAnswer | VlmError) -> None:
        alert = job.alert
        base = RuleAnswer(
            rule=alert.rule or "",
            question=alert.ask or "",
            time=alert.timestamp,
            event_id=alert.event_id,
            session_id=job.view.session_id,
            camera=job.view.camera,
        )
        if isinstance(answer, VlmError):
            result = replace(base, error=_bounded(answer.words, ERROR_MAX_CHARS) or answer.reason)
        else:
            text = _bounded(answer.text, self._limits.answer_max_chars)
            verdict = parse_verdict(text, self._limits.answer_max_chars)
            error = None if verdict.answer is not None else "the model's words held no yes/no verdict"
            result = replace(
                base, text=text, answer=verdict.answer, score=verdict.score, model_id=answer.model_id, error=error
            )
            self._count_answered("rule")
        self._republish(Published(job.view, None, answers=(result,)))
        if alert.event_id is not None:

            def add(life: _Life) -> None:
                life.answers = life.answers + (result,)

            self._update(job, add)

    def _update(self, job: VlmJob, apply) -> None:
        """Apply the model's words to the event's life, and send its update: on the session's publisher
        thread while it lives, from here once it has ended (its record is final)."""
        event_id = job.record.id if job.record is not None else job.alert.event_id
        with self._state:
            lives = self._sessions.get(job.view.session_id)
            life = lives.by_id.get(event_id) if lives is not None else None
            if life is not None:  # live: its publisher thread sends it, with the newest record
                lives.pending.append((event_id, life.merged()))
                apply(life)
                return
            kept = self._finished.get(event_id)
            if kept is None and job.record is None:
                return  # an event this stage never saw and no record of it: the answer went out alone
            if kept is None:  # forgotten (long ago, or never seen live): the record as asked is the best known
                kept = (job.view, _Life(job.record))
                self._remember(*kept)
            life = kept[1]
            before = life.merged()
            apply(life)
            change = EventChange("update", life.merged(), before)
        self._republish(Published(job.view, None, (), (change,)))

    def _republish(self, item: Published) -> None:
        """To every other output (outputs/base.py `republish`)."""
        if failed := republish(self._targets, item, "the vision-language model's words"):
            with self._lock:
                self.republish_errors += failed

    def _count_answered(self, purpose: str) -> None:
        with self._lock:
            self.answered[purpose] += 1
            self.sent += 1
            recovered, self._failing = self._failing, False
        if recovered:
            log.info("sink %s: answered again", self.name)

    def _failed(self, purpose: str, words: str) -> None:
        with self._lock:
            self.failed_by[purpose] += 1
            self.failed += 1
            self.last_error = f"a {purpose} request got no answer: {words}"[:ERROR_MAX_CHARS]
            first = not self._failing
            self._failing = True
        if first:
            log.warning("sink %s: %s", self.name, self.last_error)

    # -- state --------------------------------------------------------------------------------

    def stats(self) -> SinkStats:
        base = super().stats()
        waiting = self._slot.waiting_for()
        with self._lock:
            detail = {
                "model_id": self.model_id,
                "in_flight": self.in_flight,
                "workers": self._settings.vlm_workers,
                "purposes": {
                    purpose: {
                        "asked": self.asked[purpose],
                        "answered": self.answered[purpose],
                        "failed": self.failed_by[purpose],
                        "dropped": self.dropped_by[purpose],
                    }
                    for purpose in ("describe", "rule")
                },
                "republish_errors": self.republish_errors,
            }
        if waiting is not None and base.state != "failing":
            state = "failing" if self._slot.failed else "degraded"
            return replace(base, state=state, detail={**detail, "detail": waiting})
        return replace(base, detail=detail)


def _rule_prompt(alert: Alert) -> str:
    where = f' in zone "{alert.zone}"' if alert.zone else (f' at line "{alert.line}"' if alert.line else "")
    return (
        f'{alert.ask}\n\nThe picture is the camera frame in which the rule "{alert.rule}" ({alert.kind}{where}) '
        f"fired; the red box marks the {alert.class_name} it fired for.\n{VERDICT_INSTRUCTIONS}"
    )


def _bounded(text: str, max_chars: int) -> str:
    """The model's words, trimmed and cut to the bound (untrusted: nothing else is done with them here)."""
    return text.strip()[:max_chars].strip()
