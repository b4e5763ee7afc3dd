"""ASGI middleware of the service: request-body limit, cancelling starts whose caller went away."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import FastAPI

from rtdetr_service.web.errors import error_response

log = logging.getLogger(__name__)

# Start calls wait on a camera for up to OPEN_TIMEOUT_S; these are cancelled when their caller
# goes away, so that no session runs that nobody holds the viewer token of.
CANCEL_ON_DISCONNECT = frozenset({"/api/v1/video/start"})


def install_cancel_on_disconnect(app: FastAPI, paths: frozenset[str] = CANCEL_ON_DISCONNECT) -> None:
    """Cancel the handling of a request on `paths` when its client disconnects before the
    answer has started. Starlette does not (the handler would run to its end, for nobody)."""

    class CancelOnDisconnect:
        def __init__(self, inner) -> None:
            self.inner = inner

        async def __call__(self, scope, receive, send) -> None:
            if scope["type"] != "http" or scope["path"] not in paths:
                await self.inner(scope, receive, send)
                return
            body_read = asyncio.Event()
            gone = asyncio.Event()
            answered = False

            async def app_receive():
                if body_read.is_set():
                    # After the body, only the disconnect is left to hear; the watcher hears it.
                    await gone.wait()
                    return {"type": "http.disconnect"}
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone.set()
                elif not message.get("more_body", False):
                    body_read.set()
                return message

            async def app_send(message) -> None:
                nonlocal answered
                answered = True
                await send(message)

            async def watch() -> None:
                await body_read.wait()
                if (await receive())["type"] == "http.disconnect":
                    gone.set()

            handler = asyncio.create_task(self.inner(scope, app_receive, app_send))
            watcher = asyncio.create_task(watch())
            disconnected = asyncio.create_task(gone.wait())
            try:
                await asyncio.wait({handler, disconnected}, return_when=asyncio.FIRST_COMPLETED)
                if not handler.done() and not answered:
                    log.info("%s %s: the client went away; cancelled", scope["method"], scope["path"])
                    handler.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await handler
                    return  # nobody to answer
                await handler
            finally:
                watcher.cancel()
                disconnected.cancel()

    app.add_middleware(CancelOnDisconnect)


def install_body_limit(app: FastAPI, max_bytes: int, larger: dict[tuple[str, str], int] | None = None) -> None:
    """Refuse request bodies over `max_bytes` with 413 before they are read at length, so no
    caller can make the event loop parse megabytes of JSON (16 zones of 100k points stalled it
    for seconds). Declared lengths are refused at once; chunked bodies when they pass the limit:
    the app is then told the client went away, and whatever it answers is discarded. `larger` gives
    (method, path) routes a bound of their own (a search picture)."""

    words = f"The request body is larger than MAX_BODY_KB={max_bytes // 1024}"
    larger = larger or {}

    class BodyLimit:
        def __init__(self, inner) -> None:
            self.inner = inner

        async def __call__(self, scope, receive, send) -> None:
            if scope["type"] != "http":
                await self.inner(scope, receive, send)
                return
            limit, said = max_bytes, words
            own = larger.get((scope.get("method"), scope.get("path")))
            if own is not None:
                limit, said = own, f"The request body is larger than SEARCH_IMAGE_MAX_KB={own // 1024}"
            declared = dict(scope.get("headers") or ()).get(b"content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > limit):
                await error_response("body_too_large", said)(scope, receive, send)
                return
            seen = 0
            refused = False
            started = False

            async def counted_receive():
                nonlocal seen, refused
                message = await receive()
                if message["type"] == "http.request":
                    seen += len(message.get("body", b""))
                    if seen > limit and not refused:
                        refused = True
                        if not started:
                            await error_response("body_too_large", said)(scope, receive, send)
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
