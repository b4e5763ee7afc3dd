"""Questions over stored footage (`POST /api/v1/ask`) and the vision-language model's state
(`GET /api/v1/vlm`, the `vlm` field of /ready).

An ask runs in two steps. Recall: the question's words are embedded as a search's are (the one
`search-embed` thread) and ranked as a search by words ranks them (search.words_hits): against the
image vectors and the descriptions' text vectors, each with the filters inside the query, fused; the
first `recall_limit` are the candidates. Check: each candidate's stored snapshot, shrunk to
VLM_IMAGE_MAX_PX, goes to the VLM with the question and the verdict instructions, in batches, on a
thread of the asks' own; the answers are believed only after the schema check
(core.vlm.parse_verdict) and ranked by the model's score.
The model's words are untrusted text: bounded here, and shown by the page with `textContent`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from rtdetr_service.core.search import Embedder, SearchFilters
from rtdetr_service.core.slot import ModelSlot
from rtdetr_service.core.vlm import VERDICT_INSTRUCTIONS, VisionLanguageModel, VlmError, VlmRequest, parse_verdict
from rtdetr_service.outputs.store.event_store import EventStore
from rtdetr_service.outputs.store.vectors import FusedHit, VectorIndex, VectorsUnavailable
from rtdetr_service.web.auth import API_KEY_SCHEMES, PROTECTED_PREFIX
from rtdetr_service.web.deps import (
    Asks,
    AsksDep,
    EmbedderDep,
    HistoryReadsDep,
    SearchEmbedsDep,
    SettingsDep,
    StoreDep,
    VectorIndexDep,
    VlmDep,
)
from rtdetr_service.web.errors import ApiError
from rtdetr_service.web.routes.events import available_store
from rtdetr_service.web.routes.search import RANDOM_WEIGHTS, jpeg_size, matched, search_status, words_hits
from rtdetr_service.web.schemas import BODY, KEYED, NAME_WORDS, AskAnswer, Name, VlmAnswerOut, errors
from rtdetr_service.web.settings import Settings

router = APIRouter(prefix=PROTECTED_PREFIX, tags=["ask"], dependencies=API_KEY_SCHEMES, responses=errors(*KEYED))

MAX_QUESTION = 500  # characters: a question, not a document; the prompt adds the instructions
MAX_FILTER_VALUES = 20
SNAPSHOT_MAX_BYTES = 16 * 1024 * 1024  # our own files, but a damaged one is not read whole into memory
VLM_RANDOM_WEIGHTS = (
    "The vision-language model has random weights (no trained weights at VLM_MODEL; `make models` fetches "
    "them): its answers, scores and reasons mean nothing."
)


# -- the model's state ------------------------------------------------------------------------------


def vlm_status(settings: Settings, slot: ModelSlot[VisionLanguageModel]) -> dict:
    """Whether the VLM answers now, in a field of /ready, in GET /vlm and in the words of ask's 503s."""
    provider = settings.vlm_provider
    vlm = slot.get()
    if provider == "off":
        words = "The vision-language model is off (VLM_PROVIDER=off): no descriptions, rule answers or asks"
        return _state(False, "off", provider, None, None, words)
    if vlm is None:
        if slot.failed:
            return _state(True, "failed", provider, None, None, f"{_capital(slot.waiting_for() or '')}")
        words = f"The vision-language model ({provider}) is loading; asks answer once it has"
        return _state(True, "loading", provider, None, None, words)
    detail = f"{vlm.model_id} answers ({provider})" if vlm.trained else VLM_RANDOM_WEIGHTS
    return _state(True, "ready", provider, vlm.model_id, vlm.trained, detail)


def _state(enabled: bool, state: str, provider: str, model_id, trained, detail: str) -> dict:
    return {
        "enabled": enabled,
        "state": state,
        "provider": provider,
        "model_id": model_id,
        "trained": trained,
        "detail": detail,
    }


def _capital(words: str) -> str:
    return words[:1].upper() + words[1:]


def _secrets(settings: Settings) -> list[str]:
    """What must never leave in an answer or a metric: the pool's keys and the endpoint's URL (it may
    hold credentials). Short values are left out: they would match ordinary words, and no real key is."""
    values = [key.get_secret_value() for key in settings.vlm_api_keys]
    values.append(settings.vlm_base_url.get_secret_value())
    return [value for value in values if len(value) >= 8]


def scrubbed(value, secrets: list[str]):
    """`value` (the provider's status) with every string that holds a secret replaced. The provider
    promises none; this keeps a slip of one from reaching a status page or a metrics scrape."""
    if isinstance(value, str):
        return "[redacted]" if any(secret in value for secret in secrets) else value
    if isinstance(value, dict):
        return {scrubbed(str(k), secrets): scrubbed(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrubbed(v, secrets) for v in value]
    return value


def provider_status(settings: Settings, slot: ModelSlot[VisionLanguageModel]) -> dict | None:
    """The loaded provider's own status, scrubbed of secrets; None before it has loaded."""
    vlm = slot.get()
    if vlm is None:
        return None
    return scrubbed(vlm.status(), _secrets(settings))


def vlm_metrics(settings: Settings, slot: ModelSlot[VisionLanguageModel], asks: Asks) -> dict:
    """What /metrics reads of the VLM at scrape time (outputs/prometheus.py `watch_vlm`)."""
    state = vlm_status(settings, slot)
    return {
        "state": state["state"],
        "provider": state["provider"],
        "trained": state["trained"],
        "status": provider_status(settings, slot),
        "asks_running": asks.running,
        "asks_refused": asks.refused,
        "asks_finished": asks.finished,
    }


@router.get(
    "/vlm",
    summary="The vision-language model: provider, state in words, its keys by label with their state and counts",
    response_model=None,
    responses={200: {"model": VlmAnswerOut}},
)
async def vlm_state(settings: SettingsDep, slot: VlmDep, asks: AsksDep) -> dict:
    return {
        **vlm_status(settings, slot),
        "provider_status": provider_status(settings, slot),
        "asks": {"running": asks.running, "limit": asks.limit},
    }


# -- the question -----------------------------------------------------------------------------------


class AskIn(BaseModel):
    """A question over stored footage, and which events it may be about."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(
        ...,
        min_length=1,
        max_length=MAX_QUESTION,
        description="A yes/no question about one event: `is someone carrying a ladder?`",
        examples=["is someone carrying a ladder?"],
    )
    cameras: list[Name] | None = Field(None, max_length=MAX_FILTER_VALUES, description="Events of these cameras.")
    labels: list[Name] | None = Field(None, max_length=MAX_FILTER_VALUES, description="Events of these classes.")
    zones: list[Name] | None = Field(
        None, max_length=MAX_FILTER_VALUES, description="Events that entered any of these zones. " + NAME_WORDS
    )
    after: float | None = Field(None, ge=0, allow_inf_nan=False, description="Events that started at or after.")
    before: float | None = Field(None, ge=0, allow_inf_nan=False, description="Events that started before.")
    top_k: int = Field(5, ge=1, le=50, description="Most results answered.")
    recall_limit: int = Field(
        30, ge=1, le=200, description="Candidates recalled by the question's words, each checked by the model."
    )

    def words(self) -> str:
        text = self.question.strip()
        if not text or not text.isprintable():
            raise ApiError("invalid_request", "question: words without control characters, not only spaces")
        return text

    def filters(self) -> SearchFilters:
        if self.after is not None and self.before is not None and self.after > self.before:
            raise ApiError("invalid_request", "after must not be later than before")
        return SearchFilters(
            cameras=tuple(dict.fromkeys(self.cameras or ())),
            labels=tuple(dict.fromkeys(self.labels or ())),
            zones=tuple(dict.fromkeys(self.zones or ())),
            after=self.after,
            before=self.before,
        )


@dataclass(frozen=True)
class _Candidate:
    document: dict  # the event as the events API answers it
    hit: FusedHit  # where recall ranked it: the fused score and each side's cosine
    snapshot: Path | None


@dataclass(frozen=True)
class _Parts:
    store: EventStore
    index: VectorIndex
    embedder: Embedder
    vlm: VisionLanguageModel


def _parts(
    settings: Settings,
    store: EventStore | None,
    index: VectorIndex | None,
    embedder_slot,
    vlm_slot: ModelSlot[VisionLanguageModel],
) -> _Parts:
    """What an ask needs, or the 503 that says which part is missing: the model first (without it
    nothing is asked), then recall (the store, the vector index, the encoder)."""
    state = vlm_status(settings, vlm_slot)
    if state["state"] == "loading":
        raise ApiError("vlm_loading", state["detail"])
    if state["state"] != "ready":
        raise ApiError("vlm_unavailable", state["detail"])
    store = available_store(store, settings.events_enabled)
    search = search_status(settings, store, embedder_slot)
    recall = "Asking recalls events by the question's words, as search does: "
    if search["state"] in ("off", "unavailable") or index is None:
        raise ApiError("search_unavailable", recall + search["detail"])
    if search["state"] == "loading":
        raise ApiError("encoder_loading", recall + search["detail"])
    if search["state"] == "failed":
        raise ApiError("encoder_failed", recall + search["detail"])
    return _Parts(store, index, embedder_slot.get(), vlm_slot.get())


@router.post(
    "/ask",
    summary="A yes/no question over stored events: recalled by its words, each candidate's snapshot checked "
    "by the vision-language model, ranked by its score",
    response_model=None,
    responses={
        200: {"model": AskAnswer},
        **errors(
            *BODY,
            "too_many_asks",
            "too_many_searches",
            "events_unavailable",
            "search_unavailable",
            "encoder_loading",
            "encoder_failed",
            "vlm_loading",
            "vlm_unavailable",
        ),
    },
)
async def ask(
    body: AskIn,
    settings: SettingsDep,
    store: StoreDep,
    index: VectorIndexDep,
    embedder: EmbedderDep,
    vlm: VlmDep,
    reads: HistoryReadsDep,
    embeds: SearchEmbedsDep,
    asks: AsksDep,
) -> JSONResponse:
    started = time.monotonic()
    question = body.words()
    filters = body.filters()
    parts = _parts(settings, store, index, embedder, vlm)
    asks.enter()  # 429 at once past ASK_CONCURRENCY
    handed = False
    stop = threading.Event()
    try:
        vector = (await embeds.run(parts.embedder.embed_texts, [question]))[0]
        handed = True  # from here the ask's thread gives its place back when it is done
        return await asks.run(_answer, parts, settings, question, vector, filters, body, started, stop)
    finally:
        stop.set()  # a person who went away: the thread stops before its next batch
        if not handed:
            asks.leave()


def _answer(
    parts: _Parts,
    settings: Settings,
    question: str,
    vector: np.ndarray,
    filters: SearchFilters,
    body: AskIn,
    started: float,
    stop: threading.Event,
) -> JSONResponse:
    """Recall, check, rank: on an ask thread, JSON included."""
    candidates = _recall(parts, vector, filters, body.recall_limit)
    notices: list[str] = []
    if not parts.vlm.trained:
        notices.append(VLM_RANDOM_WEIGHTS)
    if not parts.embedder.trained:
        notices.append(RANDOM_WEIGHTS)
    if not candidates:
        notices.append("No stored event matches the filters (or none has been embedded yet): nothing to check")
    results, failures, unreadable = _check(parts.vlm, settings, question, candidates, stop)
    if unreadable:
        notices.append(f"{unreadable} candidate(s) had no readable snapshot and were not checked")
    if failures:
        reasons = sorted(set(failures))
        notices.append(f"The model could not answer {len(failures)} candidate(s): " + "; ".join(reasons[:3]))
    # The model's score first; a verdict that failed the schema check (score None) last; then recall.
    results.sort(key=lambda r: (r["score"] is None, -(r["score"] or 0.0), -r["recall_score"], r["event_id"]))
    return JSONResponse(
        {
            "question": question,
            "results": results[: body.top_k],
            "checked": len(results),
            "failed": len(failures),
            "took_s": round(time.monotonic() - started, 3),
            "model_id": parts.vlm.model_id,
            "trained": parts.vlm.trained,
            "notices": notices,
        }
    )


def _recall(parts: _Parts, vector: np.ndarray, filters: SearchFilters, limit: int) -> list[_Candidate]:
    """The events a search by the question's words ranks first, by what was seen and by what was said,
    with their documents and snapshot files."""
    try:
        hits, _ = words_hits(parts.index, parts.embedder.model_id, vector, filters, 0, limit)
    except VectorsUnavailable as exc:
        raise ApiError("search_unavailable", str(exc)) from exc
    documents = parts.store.documents([hit.event_id for hit in hits])
    # An event deleted between the search and this read is left out.
    return [
        _Candidate(documents[hit.event_id], hit, parts.store.snapshot_path(hit.event_id))
        for hit in hits
        if hit.event_id in documents
    ]


def _prompt(question: str, document: dict, max_chars: int) -> str:
    """The question about the object in the snapshot's box, then the verdict's form. The question is
    cut first, so the instructions always reach the model whole."""
    about = (
        f"This picture is a frame from a security camera; the {document.get('label') or 'object'} in the drawn "
        "box is what the question is about.\nQuestion: "
    )
    room = max(0, max_chars - len(about) - len(VERDICT_INSTRUCTIONS) - 2)
    return f"{about}{question[:room]}\n\n{VERDICT_INSTRUCTIONS}"


def _check(
    vlm: VisionLanguageModel,
    settings: Settings,
    question: str,
    candidates: list[_Candidate],
    stop: threading.Event,
) -> tuple[list[dict], list[str], int]:
    """Each candidate with a readable snapshot asked, in batches of VLM_BATCH (a hosted provider sends a
    batch at once within its keys' limits, a local one runs it as one pass). Returns the results, the
    words of each failure and how many had no snapshot to ask about."""
    max_chars = settings.vlm_answer_max_chars
    results: list[dict] = []
    failures: list[str] = []
    unreadable = 0
    batch: list[tuple[_Candidate, VlmRequest]] = []

    def flush() -> None:
        answers = vlm.generate([request for _, request in batch])
        for (candidate, _), said in zip(batch, answers, strict=True):
            if isinstance(said, VlmError):
                failures.append(said.words[:200])
                continue
            verdict = parse_verdict(said.text, max_chars)
            results.append(_result(candidate, verdict.answer, verdict.score, verdict.reason[:max_chars]))
        batch.clear()

    for candidate in candidates:
        if stop.is_set():
            break
        image = shrunk_snapshot(candidate.snapshot, settings.vlm_image_max_px, settings.search_image_max_pixels)
        if image is None:
            unreadable += 1
            continue
        prompt = _prompt(question, candidate.document, settings.vlm_prompt_max_chars)
        batch.append((candidate, VlmRequest(prompt, (image,), purpose="ask")))
        if len(batch) >= settings.vlm_batch:
            flush()
    if batch and not stop.is_set():
        flush()
    return results, failures, unreadable


def _result(candidate: _Candidate, answer, score: float | None, reason: str) -> dict:
    event = candidate.document
    return {
        "event_id": event["id"],
        "camera": event.get("camera"),
        "label": event.get("label"),
        "start": event.get("start_time"),
        "end": event.get("end_time"),
        "answer": answer,
        "score": None if score is None else round(score, 4),
        "reason": reason,
        "snapshot_url": event.get("snapshot_url"),
        "clip_url": event.get("clip_url") if event.get("has_clip") else None,
        "recall_score": round(candidate.hit.score, 4),
        "matched": matched(candidate.hit),
    }


def shrunk_snapshot(path: Path | None, max_px: int, max_pixels: int) -> bytes | None:
    """The snapshot as a JPEG whose long side is at most `max_px`: the file unchanged when it already
    is, else decoded (its size read from the header first, so a damaged file claiming gigapixels is
    never decoded), reduced by libjpeg while decoding where it can be, resized and encoded again.
    None when there is no readable JPEG."""
    if path is None:
        return None
    try:
        if path.stat().st_size > SNAPSHOT_MAX_BYTES:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    size = jpeg_size(data)
    if size is None or size[0] * size[1] > max_pixels:
        return None
    long_side = max(size)
    if long_side <= max_px:
        return data
    flags = cv2.IMREAD_COLOR
    for factor, reduced in (
        (8, cv2.IMREAD_REDUCED_COLOR_8),
        (4, cv2.IMREAD_REDUCED_COLOR_4),
        (2, cv2.IMREAD_REDUCED_COLOR_2),
    ):
        if long_side // factor >= max_px:
            flags = reduced
            break
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None:
        return None
    height, width = image.shape[:2]
    scale = max_px / max(height, width)
    if scale < 1.0:
        size_out = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = cv2.resize(image, size_out, interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return encoded.tobytes() if ok else None
