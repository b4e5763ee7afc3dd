"""Recordings: the segments kept of a camera or a session, an event's clip, and an export of a time
range. Clips and exports are MP4 cut from the camera's own packets (outputs/recordings/clips.py),
never re-encoded, streamed as they are muxed; at most RECORD_CLIPS_MAX stream at once."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from rtdetr_service.outputs.recordings.clips import (
    ClipStream,
    NothingRecorded,
    SegmentFile,
    clip_chunks,
    clip_range,
    export_range_problem,
)
from rtdetr_service.outputs.recordings.index import Segment
from rtdetr_service.outputs.recordings.recordings import Recordings
from rtdetr_service.web.auth import API_KEY_SCHEMES, PROTECTED_PREFIX
from rtdetr_service.web.deps import RecordingsDep, SettingsDep, StoreDep
from rtdetr_service.web.errors import ApiError
from rtdetr_service.web.routes.events import available_store, check_event_id, found_event
from rtdetr_service.web.schemas import KEYED, RecordingsAnswer, errors

router = APIRouter(prefix=PROTECTED_PREFIX, tags=["recordings"], dependencies=API_KEY_SCHEMES, responses=errors(*KEYED))

MP4 = {200: {"content": {"video/mp4": {"schema": {"type": "string", "format": "binary"}}}}}
_LIST_MAX = 1000
_EXPORT_SEGMENTS_MAX = 100_000  # an export of RECORD_EXPORT_MAX_S at the shortest segments (0.5 s) and more
Seconds = Annotated[float, Query(description="Unix seconds, as the events API")]


def _recordings(recordings: Recordings | None) -> Recordings:
    if recordings is None:
        raise ApiError("recordings_unavailable", "Recordings are kept in the event store, which is off or not open")
    return recordings


@router.get(
    "/recordings",
    summary="Recorded segments of a camera or a session that overlap a time range, oldest first",
    response_model=None,
    responses={200: {"model": RecordingsAnswer}, **errors("invalid_request", "recordings_unavailable")},
)
async def list_recordings(
    recordings: RecordingsDep,
    camera: str | None = None,
    session_id: str | None = None,
    after: Seconds | None = None,
    before: Seconds | None = None,
    limit: Annotated[int, Query(ge=1, le=_LIST_MAX)] = 100,
) -> dict:
    recordings = _recordings(recordings)
    for name, value in (("after", after), ("before", before)):
        if value is not None and not math.isfinite(value):
            raise ApiError("invalid_request", f"{name} must be a finite Unix time in seconds")
    if after is not None and before is not None and before <= after:
        raise ApiError("invalid_request", f"before ({before}) must be later than after ({after})")
    segments = await asyncio.to_thread(
        recordings.index.list, camera=camera, session_id=session_id, after=after, before=before, limit=limit
    )
    return {"segments": [_public(s) for s in segments]}


def _public(segment: Segment) -> dict:
    """A segment as the API shows it: without its file's path, which is the server's business."""
    shown = segment.as_dict()
    del shown["path"]
    return shown


@router.get(
    "/recordings/export.mp4",
    summary="One MP4 of a camera's (or a session's) recordings over a time range, cut at keyframes",
    response_class=StreamingResponse,
    responses={**MP4, **errors("invalid_request", "recording_not_found", "too_many_clips", "recordings_unavailable")},
)
async def export(
    recordings: RecordingsDep,
    settings: SettingsDep,
    after: Seconds,
    before: Seconds,
    camera: str | None = None,
    session_id: str | None = None,
) -> StreamingResponse:
    recordings = _recordings(recordings)
    if (camera is None) == (session_id is None):
        raise ApiError("invalid_request", "name exactly one of camera and session_id")
    if problem := export_range_problem(after, before, settings.record_export_max_s, time.time()):
        raise ApiError("invalid_request", problem)
    segments = await asyncio.to_thread(
        recordings.index.list,
        camera=camera,
        session_id=session_id,
        after=after,
        before=before,
        limit=_EXPORT_SEGMENTS_MAX,
    )
    what = f"camera {camera!r}" if camera is not None else f"session {session_id}"
    name = f"export-{camera or session_id}-{after:.0f}-{before:.0f}.mp4"
    return await _streamed(recordings, segments, after, before, name, f"Nothing was recorded of {what}")


@router.get(
    "/events/{event_id}/clip.mp4",
    summary="The event's video: from the keyframe before its start minus the pre-roll to its end plus the post-roll",
    response_class=StreamingResponse,
    responses={
        **MP4,
        **errors(
            "invalid_request",
            "event_not_found",
            "recording_not_found",
            "too_many_clips",
            "events_unavailable",
            "recordings_unavailable",
        ),
    },
)
async def event_clip(
    event_id: str,
    store: StoreDep,
    recordings: RecordingsDep,
    settings: SettingsDep,
    padding: Annotated[
        float | None, Query(ge=0, le=300, description="Seconds before and after, instead of RECORD_PRE_S/_POST_S")
    ] = None,
) -> StreamingResponse:
    store = available_store(store, settings.events_enabled)
    check_event_id(event_id)
    event = found_event(event_id, await asyncio.to_thread(store.get, event_id))
    recordings = _recordings(recordings)
    pre = settings.record_pre_s if padding is None else padding
    post = settings.record_post_s if padding is None else padding
    last = event["end_time"] if event["end_time"] is not None else time.time()
    segments = await asyncio.to_thread(
        recordings.index.list,
        session_id=event["session_id"],
        after=event["start_time"] - pre,
        before=last + post,
        limit=_EXPORT_SEGMENTS_MAX,
    )
    newest = max((s.end_time for s in segments), default=event["start_time"])
    start, end = clip_range(event["start_time"], event["end_time"], newest, pre, post)
    nothing = f"Nothing was recorded of event {event_id}"
    return await _streamed(recordings, segments, start, end, f"event-{event_id}.mp4", nothing)


async def _streamed(
    recordings: Recordings, segments: list[Segment], start: float, end: float, name: str, nothing: str
) -> StreamingResponse:
    """The clip of [start, end] from these segments, streamed; 404 in words before any byte when they
    hold nothing of it, 429 when RECORD_CLIPS_MAX clips stream already."""
    if not segments:
        raise ApiError("recording_not_found", f"{nothing}: no segment is kept between {start:.3f} and {end:.3f}")
    if not recordings.clip_slot():
        limit = recordings.settings.record_clips_max
        raise ApiError("too_many_clips", f"RECORD_CLIPS_MAX={limit} clips and exports are streaming; retry shortly")
    files = [SegmentFile(recordings.index.file(s), s.start_time, s.end_time) for s in segments]
    try:
        clip = await asyncio.to_thread(clip_chunks, files, start, end)
    except NothingRecorded as exc:
        recordings.clip_done()
        raise ApiError("recording_not_found", f"{nothing}: {exc}") from None
    except BaseException:
        recordings.clip_done()
        raise
    headers = {
        "Content-Disposition": f'inline; filename="{name}"',
        "Cache-Control": "no-store",
        # The wall time (Unix s) of the clip's time 0: a player draws the event's track at
        # point.t - X-Clip-Start on the video's clock.
        "X-Clip-Start": f"{clip.start_time:.6f}",
    }
    return StreamingResponse(_chunks(clip, recordings), media_type="video/mp4", headers=headers)


def _chunks(clip: ClipStream, recordings: Recordings) -> Iterator[bytes]:
    """The clip's bytes (iterated on a worker thread by Starlette); its files closed and its place
    given back however the stream ends, the client going away included."""
    try:
        yield from clip
    finally:
        clip.close()
        recordings.clip_done()
