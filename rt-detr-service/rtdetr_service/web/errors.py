"""One error shape for every HTTP answer: {"error": code, "detail": words}; one catalogue of codes.

The floors below raise a code (`SessionError("stream_timeout", words)`); which HTTP status it
answers is decided here, in ERRORS, read by the handlers and by the OpenAPI answers (schemas.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rtdetr_service.sessions.session import SessionError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ErrorCode:
    """How one error code is answered: its status, when it is given (for /openapi.json), fixed headers."""

    status: int
    when: str
    headers: dict[str, str] | None = None


# Every code the service answers with; docs/api.md's error table says the same in its own words.
ERRORS: dict[str, ErrorCode] = {
    "invalid_json": ErrorCode(400, "The body is not JSON (or not UTF-8, or nested too deeply)."),
    "invalid_image": ErrorCode(400, "A search image that is not a JPEG, or that cannot be decoded."),
    "unauthorized": ErrorCode(
        401, "No or a wrong API key in `apikey` / `X-API-Key`.", headers={"WWW-Authenticate": "ApiKey"}
    ),
    "destination_denied": ErrorCode(403, "stream_url names an address the destination policy denies."),
    "session_not_found": ErrorCode(404, "No such session (or it was stopped)."),
    "event_not_found": ErrorCode(404, "No such event (or it was deleted)."),
    "snapshot_not_found": ErrorCode(404, "The event has no snapshot (yet, or any more)."),
    "recording_not_found": ErrorCode(
        404, "Nothing was recorded for that event or range (recording off, not written yet, or deleted)."
    ),
    "identity_not_found": ErrorCode(404, "No event carries that global_id (none yet, or they were deleted)."),
    "not_found": ErrorCode(404, "No such route."),
    "method_not_allowed": ErrorCode(405, "The route exists, not with this method."),
    "session_not_ready": ErrorCode(409, "The session is still opening its stream."),
    "session_elsewhere": ErrorCode(409, "Another replica runs the session, and only it has this (words in `detail`)."),
    "event_not_embedded": ErrorCode(
        409, "The event has no vector of the current model (not embedded yet, or by another model: reindex)."
    ),
    "reindex_running": ErrorCode(409, "A reindex is running already; its progress is at GET /api/v1/events/reindex."),
    "body_too_large": ErrorCode(413, "The body is larger than MAX_BODY_KB (a search image: SEARCH_IMAGE_MAX_KB)."),
    "image_too_large": ErrorCode(413, "A search image of more pixels than SEARCH_IMAGE_MAX_PIXELS."),
    "invalid_request": ErrorCode(
        422,
        "A field or parameter is missing, of the wrong type, out of range or unknown; `detail` names it.",
    ),
    "invalid_zones": ErrorCode(422, "Zones, lines or rules wrong as a whole: names, references, coordinates."),
    "invalid_cursor": ErrorCode(422, "A `cursor` this service did not hand out."),
    "unsupported_url": ErrorCode(422, "A stream URL of a scheme not in ALLOWED_SCHEMES, or malformed."),
    "no_video_stream": ErrorCode(422, "The stream has no video track."),
    "too_many_sessions": ErrorCode(429, "MAX_SESSIONS sessions run already."),
    "too_many_opens": ErrorCode(429, "MAX_OPENS streams are being opened right now."),
    "too_many_clips": ErrorCode(429, "RECORD_CLIPS_MAX clips and exports are being streamed right now."),
    "too_many_searches": ErrorCode(429, "Searches by words or by a picture are waiting for the encoder already."),
    "too_many_asks": ErrorCode(429, "ASK_CONCURRENCY questions over stored footage are being answered right now."),
    "internal_error": ErrorCode(500, "A bug; the service log has the details."),
    "stream_unavailable": ErrorCode(
        502, "The stream could not be opened: refused, not found, bad data (words in `detail`)."
    ),
    "model_not_ready": ErrorCode(503, "The model is still loading."),
    "shutting_down": ErrorCode(503, "The replica is stopping; start the session elsewhere."),
    "store_unavailable": ErrorCode(503, "The session store (DATABASE_URL) cannot be reached (words in `detail`)."),
    "events_unavailable": ErrorCode(503, "Events are off (EVENTS_ENABLED=false) or the store could not be opened."),
    "search_unavailable": ErrorCode(
        503, "Search is off (EMBED_ENABLED), or the database cannot search vectors (words in `detail`)."
    ),
    "encoder_loading": ErrorCode(503, "The image–text encoder is still loading; search answers once it has."),
    "encoder_failed": ErrorCode(503, "The image–text encoder failed to load (why in `detail`); see the service log."),
    "vlm_unavailable": ErrorCode(
        503, "The vision-language model is off (VLM_PROVIDER=off) or failed to load (why in `detail`)."
    ),
    "vlm_loading": ErrorCode(503, "The vision-language model is still loading (or connecting); ask again shortly."),
    "recordings_unavailable": ErrorCode(503, "Recordings need the event store, which is off or could not be opened."),
    "stream_timeout": ErrorCode(504, "The stream did not open (or send a picture) within OPEN_TIMEOUT_S."),
}

# Starlette's own refusals by our code; any other keeps Starlette's status under `http_error`.
_FRAMEWORK_CODES = {ERRORS[code].status: code for code in ("not_found", "method_not_allowed")}
_INTERNAL_WORDS = "Internal error; the service log has the details"


class ApiError(Exception):
    """A refusal of the web floor itself; answered with its code's catalogued status."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _answer(status: int, code: str, detail: str, headers: dict[str, str] | None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def error_response(code: str, detail: str) -> JSONResponse:
    """The answer for a catalogued code; a code not in ERRORS is a bug, logged and answered 500."""
    known = ERRORS.get(code)
    if known is None:
        log.error("error code %r is not in the catalogue (web/errors.py); answering 500: %s", code, detail)
        return error_response("internal_error", _INTERNAL_WORDS)
    return _answer(known.status, code, detail, known.headers)


def _field(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    """Every error, whoever raised it, answered in the one shape with its catalogued status."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.code, exc.detail)

    @app.exception_handler(SessionError)
    async def _session_error(_: Request, exc: SessionError) -> JSONResponse:
        return error_response(exc.code, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response("invalid_json", "The request body is not valid JSON")
        words = "; ".join(f"{_field(tuple(e.get('loc', ())))}: {e.get('msg', 'invalid')}" for e in errors)
        return error_response("invalid_request", words or "Invalid request")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response("internal_error", _INTERNAL_WORDS)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and isinstance(exc.__cause__, (ValueError, RecursionError)):
            # FastAPI's answer to a body its JSON parser gave up on other than by a syntax
            # error: nested deeper than Python parses (RecursionError), or not UTF-8.
            return error_response("invalid_json", "The request body is not valid JSON (or is nested too deeply)")
        code = _FRAMEWORK_CODES.get(exc.status_code, "http_error")
        return _answer(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))
