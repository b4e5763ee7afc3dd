"""One error shape for every HTTP answer: {"error": code, "detail": words}."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .session import SessionError

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers


def error_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def _field(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.detail, exc.headers)

    @app.exception_handler(SessionError)
    async def _session_error(_: Request, exc: SessionError) -> JSONResponse:
        return error_response(exc.status, exc.code, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "invalid_json", "The request body is not valid JSON")
        words = "; ".join(f"{_field(tuple(e.get('loc', ())))}: {e.get('msg', 'invalid')}" for e in errors)
        return error_response(422, "invalid_request", words or "Invalid request")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "Internal error; the service log has the details")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and isinstance(exc.__cause__, (ValueError, RecursionError)):
            # FastAPI's answer to a body its JSON parser gave up on other than by a syntax
            # error: nested deeper than Python parses (RecursionError), or not UTF-8.
            return error_response(400, "invalid_json", "The request body is not valid JSON (or is nested too deeply)")
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))


def install_body_limit(app: FastAPI, max_bytes: int) -> None:
    """Refuse request bodies over `max_bytes` with 413 before they are read at length, so no
    caller can make the event loop parse megabytes of JSON (16 zones of 100k points stalled it
    for seconds). Declared lengths are refused at once; chunked bodies when they pass the limit:
    the app is then told the client went away, and whatever it answers is discarded."""

    words = f"The request body is larger than MAX_BODY_KB={max_bytes // 1024}"

    class BodyLimit:
        def __init__(self, inner) -> None:
            self.inner = inner

        async def __call__(self, scope, receive, send) -> None:
            if scope["type"] != "http":
                await self.inner(scope, receive, send)
                return
            declared = dict(scope.get("headers") or ()).get(b"content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > max_bytes):
                await error_response(413, "body_too_large", words)(scope, receive, send)
                return
            seen = 0
            refused = False
            started = False

            async def counted_receive():
                nonlocal seen, refused
                message = await receive()
                if message["type"] == "http.request":
                    seen += len(message.get("body", b""))
                    if seen > max_bytes and not refused:
                        refused = True
                        if not started:
                            await error_response(413, "body_too_large", words)(scope, receive, send)
                        return {"type": "http.disconnect"}
                return message

            async def guarded_send(message):
                nonlocal started
                if refused:
                    return  # the 413 has been sent; the app's own answer goes nowhere
                if message["type"] == "http.response.start":
                    started = True
                await send(message)

            await self.inner(scope, counted_receive, guarded_send)

    app.add_middleware(BodyLimit)
