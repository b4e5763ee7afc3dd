"""Search over the events' appearance vectors (by words, by an event, by a picture) and, by words, over
their descriptions' text vectors too, an identity's appearances across cameras, and reindexing the
stored events.

A search by words ranks by what was seen (the image vectors against the words' text vector) and by
what was said (the descriptions' text vectors against the same), each side's first offset + limit +
MARGIN hits, fused by reciprocal rank fusion (vectors.fuse says why not by score), then paged. By an
event or a picture it is the image vectors alone.

Searches read on the history-read threads (events.py: at most two at once, apart from the default
pool); the query's text or picture is embedded on one thread of its own (a model call: one at a
time, and never on the loop). Filters are applied inside the vector query (outputs/store/vectors.py),
so a page is never short because of them. A page's cursor is the offset of the next page bound to
its query: the same query asked again goes on from there; scores of events stored meanwhile may move
a hit across a page boundary (listed twice or not at all), which is why the depth is bounded (1000).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Annotated

import cv2
import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import AfterValidator

from rtdetr_service.core.search import Embedder, SearchFilters
from rtdetr_service.outputs.embeddings.crops import cut
from rtdetr_service.outputs.embeddings.stage import EmbedderSlot
from rtdetr_service.outputs.store.event_store import EventStore
from rtdetr_service.outputs.store.queries import InvalidCursor
from rtdetr_service.outputs.store.vectors import FusedHit, VectorIndex, VectorsUnavailable, fuse
from rtdetr_service.web.auth import API_KEY_SCHEMES, PROTECTED_PREFIX
from rtdetr_service.web.deps import (
    EmbedderDep,
    HistoryReadsDep,
    ReindexerDep,
    SearchEmbeds,
    SearchEmbedsDep,
    SettingsDep,
    StoreDep,
    VectorIndexDep,
)
from rtdetr_service.web.errors import ApiError
from rtdetr_service.web.routes.events import _printable, available_store, check_event_id
from rtdetr_service.web.schemas import (
    KEYED,
    NAME_WORDS,
    IdentityAnswer,
    Name,
    ReindexAnswer,
    SearchAnswer,
    errors,
)
from rtdetr_service.web.settings import Settings

router = APIRouter(prefix=PROTECTED_PREFIX, tags=["search"], dependencies=API_KEY_SCHEMES, responses=errors(*KEYED))

MAX_TEXT = 256  # characters of a text query; the encoder cuts its tokens far sooner (64 for SigLIP)
MAX_LIMIT = 100
MAX_DEPTH = 1000  # limit + offset, the vector index's bound
MAX_FILTER_VALUES = 20  # cameras or labels one search may name
# Hits each side of a search by words reads past the page: an event just below the page on one side
# may climb into it once the other side's list is read as deep, so both are read deeper than the page.
MARGIN = 50
SEARCH_ERRORS = ("search_unavailable", "encoder_loading", "encoder_failed", "events_unavailable", "too_many_searches")
RANDOM_WEIGHTS = (
    "The image–text encoder has random weights (no trained weights at EMBED_MODEL; `make models` fetches "
    "them): scores and order mean nothing."
)


def search_embeds_pool() -> SearchEmbeds:
    """The search queries' encoder thread and its bound (made and shut down by the app's lifespan)."""
    return SearchEmbeds()


# -- state ------------------------------------------------------------------------------------------


def search_status(settings: Settings, store: EventStore | None, slot: EmbedderSlot) -> dict:
    """Whether search works now, in a field of /ready and in the words of search's 503s."""
    if not settings.embeds():
        why = (
            "EMBED_ENABLED=false"
            if settings.embed_enabled == "false"
            else "EMBED_ENABLED=auto and no trained weights at EMBED_MODEL (make models fetches them)"
        )
        return _status(False, "off", None, None, f"Search is off: {why}")
    if store is None:
        return _status(False, "off", None, None, "Search is off: it needs the event store, which is off or not open")
    if (problem := store.vectors.problem()) is not None:
        return _status(True, "unavailable", None, None, f"Search is unavailable: {problem}")
    embedder = slot.get()
    if embedder is None:
        if slot.failed:
            return _status(True, "failed", None, None, f"Search is unavailable: {slot.waiting_for()}")
        return _status(True, "loading", None, None, "Search starts once the image–text encoder has loaded")
    ready_words = f"Search by words, by event or by picture ({embedder.model_id})"
    detail = RANDOM_WEIGHTS if not embedder.trained else ready_words
    return _status(True, "ready", embedder.model_id, embedder.trained, detail)


def _status(enabled: bool, state: str, model_id: str | None, trained: bool | None, detail: str) -> dict:
    return {"enabled": enabled, "state": state, "model_id": model_id, "trained": trained, "detail": detail}


@dataclass(frozen=True)
class _Ready:
    store: EventStore
    index: VectorIndex
    embedder: Embedder


def _ready(settings: Settings, store: EventStore | None, index: VectorIndex | None, slot: EmbedderSlot) -> _Ready:
    """The parts a search needs, or the 503 that says which is missing. Called in the route body, after
    the parameters were checked (a wrong one is named first)."""
    store = available_store(store, settings.events_enabled)
    status = search_status(settings, store, slot)
    if status["state"] in ("off", "unavailable") or index is None:
        raise ApiError("search_unavailable", status["detail"])
    if status["state"] == "loading":
        raise ApiError("encoder_loading", status["detail"])
    if status["state"] == "failed":
        raise ApiError("encoder_failed", status["detail"])
    return _Ready(store, index, slot.get())


# -- the cursor -------------------------------------------------------------------------------------


def _query_key(kind: str, value: str, filters: SearchFilters) -> str:
    """What a cursor is bound to: the query and its filters (a cursor of another query is refused)."""
    raw = json.dumps([kind, value, repr(filters)], separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def _encode_cursor(offset: int, key: str) -> str:
    raw = json.dumps([offset, key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str | None, key: str) -> int:
    if cursor is None:
        return 0
    words = "cursor is not valid: pass next_cursor from the previous page of the same search unchanged"
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ApiError("invalid_cursor", words) from exc
    if not (isinstance(value, list) and len(value) == 2 and type(value[0]) is int and isinstance(value[1], str)):
        raise ApiError("invalid_cursor", words)
    offset, bound_to = value
    if bound_to != key:
        raise ApiError("invalid_cursor", "cursor belongs to another search (other words, example or filters)")
    if not 0 < offset < MAX_DEPTH:
        raise ApiError("invalid_cursor", words)
    return offset


# -- the filters ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FilterParams:
    camera: list[str] | None
    label: list[str] | None
    zone: str | None
    session_id: str | None
    after: float | None
    before: float | None
    min_confidence: float | None

    def filters(self, exclude: tuple[str, ...] = ()) -> SearchFilters:
        if self.after is not None and self.before is not None and self.after > self.before:
            raise ApiError("invalid_request", "after must not be later than before")
        for name, values in (("camera", self.camera), ("label", self.label)):
            if values and len(values) > MAX_FILTER_VALUES:
                raise ApiError("invalid_request", f"{name}: at most {MAX_FILTER_VALUES} values")
        return SearchFilters(
            cameras=tuple(dict.fromkeys(self.camera or ())),
            labels=tuple(dict.fromkeys(self.label or ())),
            zones=(self.zone,) if self.zone is not None else (),
            session_id=self.session_id,
            after=self.after,
            before=self.before,
            min_confidence=self.min_confidence,
            exclude=exclude,
        )


def _filter_params(
    camera: Annotated[list[Name] | None, Query(description="Events of these cameras (repeat it). " + NAME_WORDS)] = (
        None
    ),
    label: Annotated[list[Name] | None, Query(description="Events of these classes (repeat it): `person`.")] = None,
    zone: Annotated[Name | None, Query(description="Events that entered this zone. " + NAME_WORDS)] = None,
    session_id: Annotated[str | None, Query(max_length=64), AfterValidator(_printable)] = None,
    after: float | None = Query(
        None, ge=0, allow_inf_nan=False, description="Events that started at or after (Unix seconds)."
    ),
    before: float | None = Query(
        None, ge=0, allow_inf_nan=False, description="Events that started before (Unix seconds)."
    ),
    min_confidence: float | None = Query(None, ge=0, le=1, description="The event's best confidence at least."),
) -> _FilterParams:
    return _FilterParams(camera, label, zone, session_id, after, before, min_confidence)


# -- the searches ---------------------------------------------------------------------------------

_SEARCH_ANSWERS = {200: {"model": SearchAnswer}}


@router.get(
    "/events/search",
    summary="Events that look like words (`q`) or like another event (`similar_to`), closest first, filtered",
    response_model=None,
    responses={
        **_SEARCH_ANSWERS,
        **errors("invalid_request", "invalid_cursor", "event_not_found", "event_not_embedded", *SEARCH_ERRORS),
    },
)
async def search(
    settings: SettingsDep,
    store: StoreDep,
    index: VectorIndexDep,
    slot: EmbedderDep,
    reads: HistoryReadsDep,
    embeds: SearchEmbedsDep,
    params: Annotated[_FilterParams, Depends(_filter_params)],
    q: str | None = Query(None, max_length=MAX_TEXT, description="Words: `a person in a red jacket`."),
    similar_to: str | None = Query(None, max_length=64, description="An event id: events that look like it."),
    limit: int = Query(20, ge=1, le=MAX_LIMIT),
    cursor: str | None = Query(None, max_length=512),
) -> JSONResponse:
    if (q is None) == (similar_to is None):
        raise ApiError("invalid_request", "give exactly one of q (words) and similar_to (an event id)")
    loop = asyncio.get_running_loop()
    if q is not None:
        text = q.strip()
        if not text or not text.isprintable():
            raise ApiError("invalid_request", "q: words to search for, without control characters, not only spaces")
        filters = params.filters()
        key = _query_key("q", text, filters)
        offset = _decode_cursor(cursor, key)
        ready = _ready(settings, store, index, slot)
        vector = (await embeds.run(ready.embedder.embed_texts, [text]))[0]
        return await loop.run_in_executor(reads, _answer, ready, vector, filters, _Page(limit, offset, key, True))
    else:
        check_event_id(similar_to)
        filters = params.filters(exclude=(similar_to,))
        key = _query_key("similar_to", similar_to, filters)
        offset = _decode_cursor(cursor, key)
        ready = _ready(settings, store, index, slot)
        vector = await loop.run_in_executor(reads, _example_vector, ready, similar_to)
    return await loop.run_in_executor(reads, _answer, ready, vector, filters, _Page(limit, offset, key))


def _example_vector(ready: _Ready, event_id: str) -> np.ndarray:
    """The stored vector of the example event, of the encoder's model."""
    stored = ready.index.get(event_id)
    model_id = ready.embedder.model_id
    if stored is None:
        if ready.store.get(event_id) is None:
            raise ApiError("event_not_found", f"No event with id {event_id!r}")
        raise ApiError(
            "event_not_embedded",
            f"Event {event_id!r} has no vector yet: live events are embedded EMBED_EARLY_S after they start "
            "and at their end; older ones by POST /api/v1/events/reindex",
        )
    vector, made_by = stored
    if made_by != model_id:
        raise ApiError(
            "event_not_embedded",
            f"Event {event_id!r} was embedded by {made_by!r}, not by the current encoder {model_id!r}: "
            "POST /api/v1/events/reindex embeds it again",
        )
    return vector


@dataclass(frozen=True)
class _Page:
    """Which page of a search: `words` also ranks by the descriptions and fuses the two rankings."""

    limit: int
    offset: int
    key: str
    words: bool = False


def _answer(ready: _Ready, vector: np.ndarray, filters: SearchFilters, page: _Page) -> JSONResponse:
    """One page of hits as event documents with their scores (on a history-read thread, JSON included)."""
    offset, key = page.offset, page.key
    limit = min(page.limit, MAX_DEPTH - offset)
    ranked = words_hits if page.words else _image_hits
    try:
        hits, more = ranked(ready.index, ready.embedder.model_id, vector, filters, offset, limit)
    except VectorsUnavailable as exc:
        raise ApiError("search_unavailable", str(exc)) from exc
    documents = ready.store.documents([hit.event_id for hit in hits])
    # An event deleted between the search and this read is left out of its page.
    events = [{**documents[hit.event_id], **_scores(hit)} for hit in hits if hit.event_id in documents]
    more = more and offset + limit < MAX_DEPTH
    model_id = ready.embedder.model_id
    return JSONResponse(
        {
            "events": events,
            "next_cursor": _encode_cursor(offset + limit, key) if more else None,
            "model_id": model_id,
            "trained": ready.embedder.trained,
            "notice": None if ready.embedder.trained else RANDOM_WEIGHTS,
        }
    )


def _image_hits(
    index: VectorIndex, model_id: str, vector: np.ndarray, filters: SearchFilters, offset: int, limit: int
) -> tuple[list[FusedHit], bool]:
    """A page of the image vectors alone (by an event, by a picture): its score is the cosine."""
    hits = index.search(vector, model_id, filters, limit, offset)
    return [FusedHit(hit.event_id, hit.score, hit.score, None) for hit in hits], len(hits) == limit


def words_hits(
    index: VectorIndex, model_id: str, vector: np.ndarray, filters: SearchFilters, offset: int, limit: int
) -> tuple[list[FusedHit], bool]:
    """A page of the fused ranking of what was seen and what was said, each side read MARGIN deeper, and
    whether more follow. The one recall by words: a search's pages and an ask's candidates alike."""
    depth = min(offset + limit + MARGIN, MAX_DEPTH)
    image = index.search(vector, model_id, filters, depth, 0)
    texts = index.texts
    said = [] if texts is None else texts.search(vector, model_id, filters, depth, 0)
    fused = fuse(image, said)
    return fused[offset : offset + limit], len(fused) > offset + limit


def matched(hit: FusedHit) -> list[str]:
    """Which rankings found the event: by what was seen (`image`), by what was said (`description`)."""
    return [side for side, score in (("image", hit.image_score), ("description", hit.text_score)) if score is not None]


def _scores(hit: FusedHit) -> dict:
    return {"score": hit.score, "image_score": hit.image_score, "text_score": hit.text_score, "matched": matched(hit)}


_JPEG_BODY = {
    "requestBody": {
        "required": True,
        "description": "A JPEG of the object to find (a crop is best), at most SEARCH_IMAGE_MAX_KB.",
        "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.post(
    "/events/search",
    summary='Events that look like the JPEG in the body ("find this"), closest first, filtered',
    response_model=None,
    openapi_extra=_JPEG_BODY,
    responses={
        **_SEARCH_ANSWERS,
        **errors(
            "invalid_image", "body_too_large", "image_too_large", "invalid_request", "invalid_cursor", *SEARCH_ERRORS
        ),
    },
)
async def search_by_image(
    request: Request,
    settings: SettingsDep,
    store: StoreDep,
    index: VectorIndexDep,
    slot: EmbedderDep,
    reads: HistoryReadsDep,
    embeds: SearchEmbedsDep,
    params: Annotated[_FilterParams, Depends(_filter_params)],
    limit: int = Query(20, ge=1, le=MAX_LIMIT),
    cursor: str | None = Query(None, max_length=512),
) -> JSONResponse:
    body = await request.body()  # bounded by the body limit: SEARCH_IMAGE_MAX_KB on this route
    filters = params.filters()
    key = _query_key("image", hashlib.sha256(body).hexdigest(), filters)
    offset = _decode_cursor(cursor, key)
    ready = _ready(settings, store, index, slot)
    loop = asyncio.get_running_loop()
    crop = await embeds.run(_decoded, body, settings)
    vector = (await embeds.run(ready.embedder.embed_images, [crop]))[0]
    return await loop.run_in_executor(reads, _answer, ready, vector, filters, _Page(limit, offset, key))


def _decoded(body: bytes, settings: Settings) -> np.ndarray:
    """The JPEG as an RGB crop of the encoder's size: its size read from the header first, so a small
    file that would decode into gigabytes (a decompression bomb) is refused before any decoding."""
    if not body:
        raise ApiError("invalid_image", "The body is empty: send the JPEG of the object to find")
    size = jpeg_size(body)
    if size is None:
        raise ApiError("invalid_image", "The body is not a JPEG (send image/jpeg: a crop of the object to find)")
    width, height = size
    if width * height > settings.search_image_max_pixels:
        raise ApiError(
            "image_too_large",
            f"The JPEG is {width}x{height} pixels, "
            f"more than SEARCH_IMAGE_MAX_PIXELS={settings.search_image_max_pixels}",
        )
    image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.shape[0] != height or image.shape[1] != width:
        raise ApiError("invalid_image", "The JPEG could not be decoded (damaged or cut short)")
    return cut(image, (0.0, 0.0, float(width), float(height)), settings.embed_crop_px, pad=0.0)


# SOF markers carry the picture's size; C4 (DHT), C8 (JPG) and CC (DAC) share their range and do not.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, without decoding; None if it is not a JPEG."""
    if not data.startswith(b"\xff\xd8"):
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, or the scan began before any frame header
            return None
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if length < 2:
            return None
        if marker in _SOF:
            if i + 9 > len(data):
                return None
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            return (width, height) if width and height else None
        i += 2 + length
    return None


# -- identities -----------------------------------------------------------------------------------


@router.get(
    "/identities/{global_id}",
    summary="One object's appearances (events) across cameras, oldest first: its journey",
    response_model=None,
    responses={
        200: {"model": IdentityAnswer},
        **errors("invalid_request", "invalid_cursor", "identity_not_found", "events_unavailable"),
    },
)
async def identity(
    global_id: str,
    store: StoreDep,
    settings: SettingsDep,
    reads: HistoryReadsDep,
    limit: int = Query(50, ge=1, le=500),
    cursor: str | None = Query(None, max_length=512),
) -> JSONResponse:
    store = available_store(store, settings.events_enabled)
    if not (0 < len(global_id) <= 64 and global_id.isprintable()):
        words = f"No identity {global_id[:64]!r}: a global_id is 1-64 printable characters"
        raise ApiError("identity_not_found", words)

    def read() -> JSONResponse:
        events, next_cursor = store.identity(global_id, limit=limit, cursor=cursor)
        if not events and cursor is None:
            raise ApiError("identity_not_found", f"No event carries global_id {global_id!r}")
        return JSONResponse({"global_id": global_id, "events": events, "next_cursor": next_cursor})

    try:
        return await asyncio.get_running_loop().run_in_executor(reads, read)
    except InvalidCursor as exc:
        raise ApiError("invalid_cursor", str(exc)) from exc


# -- reindex --------------------------------------------------------------------------------------


@router.post(
    "/events/reindex",
    summary="Embed the stored events that have no vector of the current encoder, in the background",
    response_model=None,
    status_code=202,
    responses={202: {"model": ReindexAnswer}, **errors("reindex_running", "search_unavailable", "events_unavailable")},
)
async def start_reindex(
    reindexer: ReindexerDep, settings: SettingsDep, store: StoreDep, slot: EmbedderDep
) -> JSONResponse:
    runner = _reindexer(reindexer, settings, store, slot)
    if not runner.start():
        raise ApiError("reindex_running", "A reindex is running already: GET /api/v1/events/reindex for its progress")
    return JSONResponse(runner.progress(), status_code=202)


@router.get(
    "/events/reindex",
    summary="The progress of the current (or last) reindex",
    response_model=None,
    responses={200: {"model": ReindexAnswer}, **errors("search_unavailable", "events_unavailable")},
)
async def reindex_progress(reindexer: ReindexerDep, settings: SettingsDep, store: StoreDep, slot: EmbedderDep) -> dict:
    return _reindexer(reindexer, settings, store, slot).progress()


def _reindexer(reindexer, settings: Settings, store: EventStore | None, slot: EmbedderSlot):
    store = available_store(store, settings.events_enabled)
    if reindexer is None:
        raise ApiError("search_unavailable", search_status(settings, store, slot)["detail"])
    return reindexer
