"""Event history: list with filters and a cursor, one event, its snapshot and track, delete; the outputs."""

from __future__ import annotations

import asyncio
import functools
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, JSONResponse
from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

from rtdetr_service.outputs.store.event_store import EventStore
from rtdetr_service.outputs.store.queries import InvalidCursor
from rtdetr_service.web.auth import API_KEY_SCHEMES, PROTECTED_PREFIX
from rtdetr_service.web.deps import HistoryReadsDep, ManagerDep, SettingsDep, StoreDep
from rtdetr_service.web.errors import ApiError
from rtdetr_service.web.schemas import (
    KEYED,
    NAME_WORDS,
    EventDeletedAnswer,
    EventOut,
    EventsAnswer,
    Name,
    OutputsAnswer,
    TrackAnswer,
    errors,
)

# Answers are declared with `responses=` (api/schemas.py) and response_model=None: the models document
# them and are not run on each answer.
router = APIRouter(prefix=PROTECTED_PREFIX, tags=["events"], dependencies=API_KEY_SCHEMES, responses=errors(*KEYED))

# History lists are the heavy reads: at most this many run at once, on threads of their own, and the
# others wait their turn there, so a burst neither takes the default pool (stop, …) nor the loop.
HISTORY_READ_THREADS = 2


def history_reads_pool() -> ThreadPoolExecutor:
    """The threads history lists run on (made and shut down by the app's lifespan)."""
    return ThreadPoolExecutor(HISTORY_READ_THREADS, thread_name_prefix="history-read")


# Event ids are ours (uuid4 hex): any other text names no event and is not sent to the database,
# where PostgreSQL would answer a NUL in it with an error rather than "no such row".
_EVENT_ID = re.compile(r"[0-9a-f]{32}")


def _printable(value: str | None) -> str | None:
    """A filter without control characters: PostgreSQL refuses NUL in any text, and no id has one."""
    if value is not None and not value.isprintable():
        bad = next(ch for ch in value if not ch.isprintable())
        raise PydanticCustomError("not_printable", "{words}", {"words": f"U+{ord(bad):04X} is not allowed here"})
    return value


def available_store(store: EventStore | None, events_enabled: bool) -> EventStore:
    """The store, or events_unavailable saying why. Called in the route body: a dependency that
    raised would be heard before a wrong parameter, which must be named first."""
    if store is None:
        words = (
            "Events are off (EVENTS_ENABLED=false)"
            if not events_enabled
            else "The event store could not be opened; the service log says why"
        )
        raise ApiError("events_unavailable", words)
    return store


@router.get(
    "/events",
    summary="Events, newest first, filtered; `next_cursor` fetches the next page",
    response_model=None,
    responses={200: {"model": EventsAnswer}, **errors("invalid_request", "invalid_cursor", "events_unavailable")},
)
async def list_events(
    store: StoreDep,
    settings: SettingsDep,
    pool: HistoryReadsDep,
    session_id: Annotated[str | None, Query(max_length=64), AfterValidator(_printable)] = None,
    # Names are stored in NFC: the filters are checked and spelled the same way, or they would miss.
    camera: Annotated[Name | None, Query(description=NAME_WORDS)] = None,
    label: Annotated[Name | None, Query(description="A class name (`person`): " + NAME_WORDS)] = None,
    zone: Annotated[Name | None, Query(description=NAME_WORDS)] = None,
    # 1e400 parses as infinity: a time that no event has is refused, not compared with.
    after: float | None = Query(
        None, ge=0, allow_inf_nan=False, description="Events that started at or after (Unix seconds)."
    ),
    before: float | None = Query(
        None, ge=0, allow_inf_nan=False, description="Events that started before (Unix seconds)."
    ),
    limit: int = Query(50, ge=1, le=500),
    cursor: str | None = Query(None, max_length=512),
) -> JSONResponse:
    if after is not None and before is not None and after > before:
        raise ApiError("invalid_request", "after must not be later than before")
    read = functools.partial(
        _events_answer,
        available_store(store, settings.events_enabled),
        session_id=session_id,
        camera=camera,
        label=label,
        zone=zone,
        after=after,
        before=before,
        limit=limit,
        cursor=cursor,
    )
    try:
        return await asyncio.get_running_loop().run_in_executor(pool, read)
    except InvalidCursor as exc:
        raise ApiError("invalid_cursor", str(exc)) from exc


def _events_answer(store: EventStore, **filters) -> JSONResponse:
    """The list's answer, its JSON bytes built here on a history-read thread: encoding 500 events
    on the loop held back /health and every live viewer. The rows are plain JSON types, so these are
    the bytes FastAPI made from the returned dict, without its slower pure-Python encoder pass."""
    events, next_cursor = store.query(**filters)
    return JSONResponse({"events": events, "next_cursor": next_cursor})


def check_event_id(event_id: str) -> None:
    """event_not_found, without a query, for an id that no event of ours can have."""
    if not _EVENT_ID.fullmatch(event_id):
        raise ApiError("event_not_found", f"No event with id {event_id[:64]!r}: event ids are 32 hex digits")


def found_event(event_id: str, event):
    if event is None:
        raise ApiError("event_not_found", f"No event with id {event_id!r}")
    return event


@router.get(
    "/events/{event_id}",
    summary="One event",
    response_model=None,
    responses={200: {"model": EventOut}, **errors("invalid_request", "event_not_found", "events_unavailable")},
)
async def get_event(event_id: str, store: StoreDep, settings: SettingsDep) -> dict:
    store = available_store(store, settings.events_enabled)
    check_event_id(event_id)
    return found_event(event_id, await asyncio.to_thread(store.get, event_id))


@router.get(
    "/events/{event_id}/snapshot.jpg",
    summary="The event's best snapshot: the frame with the object's box",
    response_class=FileResponse,
    responses={
        200: {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}},
        **errors("invalid_request", "event_not_found", "snapshot_not_found", "events_unavailable"),
    },
)
async def snapshot(event_id: str, store: StoreDep, settings: SettingsDep) -> FileResponse:
    store = available_store(store, settings.events_enabled)
    check_event_id(event_id)
    found_event(event_id, await asyncio.to_thread(store.get, event_id))
    path = await asyncio.to_thread(store.snapshot_path, event_id)
    if path is None:
        raise ApiError("snapshot_not_found", f"Event {event_id!r} has no snapshot (yet, or any more)")
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=60"})


@router.get(
    "/events/{event_id}/track",
    summary="The object's boxes over its life (time, box, confidence, zones), to draw over its clip",
    response_model=None,
    responses={200: {"model": TrackAnswer}, **errors("invalid_request", "event_not_found", "events_unavailable")},
)
async def track(event_id: str, store: StoreDep, settings: SettingsDep) -> dict:
    store = available_store(store, settings.events_enabled)
    check_event_id(event_id)
    return found_event(event_id, await asyncio.to_thread(store.track, event_id))


@router.delete(
    "/events/{event_id}",
    summary="Delete an event, its track and its snapshot",
    response_model=None,
    responses={
        200: {"model": EventDeletedAnswer},
        **errors("invalid_request", "event_not_found", "events_unavailable"),
    },
)
async def delete_event(event_id: str, store: StoreDep, settings: SettingsDep) -> dict:
    store = available_store(store, settings.events_enabled)
    check_event_id(event_id)
    if not await asyncio.to_thread(store.delete, event_id):
        raise ApiError("event_not_found", f"No event with id {event_id!r}")
    return {"event_id": event_id, "status": "deleted"}


@router.get(
    "/outputs",
    summary="Every output (sink): state, counters and last error in words",
    response_model=None,
    responses={200: {"model": OutputsAnswer}},
)
async def outputs(manager: ManagerDep) -> dict:
    return {"outputs": [sink.stats().as_dict() for sink in manager.sinks]}
