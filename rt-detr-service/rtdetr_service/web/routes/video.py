"""Control API: start, stop, status and list sessions (API key required)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from rtdetr_service.analytics.alerts import AlertRule
from rtdetr_service.analytics.tracking import TrackerOptions
from rtdetr_service.analytics.zones import MAX_LINES, MAX_POINTS, MAX_RULES, MAX_ZONES, ZoneConfig
from rtdetr_service.core.vlm import ASK_MAX_CHARS, DESCRIBE_AFTER_S_MAX, DESCRIBE_PROMPT_MAX_CHARS, DescribeOptions
from rtdetr_service.ingest.urls import redact_url
from rtdetr_service.outputs.recordings.settings import RecordMode
from rtdetr_service.outputs.registry import output_warnings
from rtdetr_service.sessions.desired import options_from_record
from rtdetr_service.sessions.manager import SessionManager
from rtdetr_service.sessions.records import SessionRecord
from rtdetr_service.sessions.session import Session, SessionError, SessionOptions
from rtdetr_service.web.auth import API_KEY_SCHEMES, PROTECTED_PREFIX
from rtdetr_service.web.deps import ManagerDep
from rtdetr_service.web.errors import ApiError
from rtdetr_service.web.routes.ws import viewer_path, viewer_path_of
from rtdetr_service.web.schemas import (
    BODY,
    KEYED,
    NAME_WORDS,
    CountsAnswer,
    Name,
    PendingAnswer,
    RecordAnswer,
    SessionsAnswer,
    StartAnswer,
    StatusAnswer,
    StopAnswer,
    ZonesAnswer,
    errors,
)

log = logging.getLogger(__name__)

# The key is checked by auth.install_api_key_check; the schemes here document it for /docs.
# Answers are declared with `responses=` (api/schemas.py) and response_model=None: the models document
# them and are not run on each answer.
router = APIRouter(
    prefix=PROTECTED_PREFIX + "/video", tags=["video"], dependencies=API_KEY_SCHEMES, responses=errors(*KEYED)
)


class AlertRuleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    classes: list[str] = Field(["person"], max_length=80, description="Class names that alert; [] = every class.")
    min_confidence: float = Field(0.5, ge=0.0, le=1.0, description="Lowest confidence that alerts.")
    cooldown_s: float = Field(10.0, ge=0.0, le=86400.0, description="Quiet time per class after an alert.")
    zones: list[Annotated[list[tuple[float, float]], Field(max_length=MAX_POINTS)]] | None = Field(
        None,
        max_length=MAX_ZONES,
        description="Polygons in 0..1 image coordinates; objects must stand inside one to alert.",
    )

    @field_validator("zones")
    @classmethod
    def _zones_are_polygons(cls, zones):
        for zone in zones or ():
            if len(zone) < 3:
                raise ValueError("each zone needs at least 3 points")
            if any(not (0.0 <= v <= 1.0) for point in zone for v in point):
                raise ValueError("zone coordinates must be between 0 and 1")
        return zones


Point = tuple[float, float]


def _name():
    return Field(..., description=NAME_WORDS)


class ZoneIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name = _name()
    points: list[Point] = Field(..., min_length=3, max_length=MAX_POINTS, description="Polygon corners.")


class LineIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name = _name()
    a: Point
    b: Point


class RuleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name = _name()
    kind: Literal["enter", "dwell", "cross", "occupancy"]
    zone: Name | None = Field(None, description="The zone of enter, dwell and occupancy rules.")
    line: Name | None = Field(None, description="The line of cross rules.")
    classes: list[str] = Field([], max_length=80, description="Class names the rule applies to; [] = every class.")
    min_confidence: float = Field(0.0, ge=0.0, le=1.0)
    dwell_s: float = Field(10.0, gt=0.0, le=86400.0, description="dwell: seconds inside before it fires.")
    direction: Literal["in", "out", "any"] = Field("any", description="cross: which way counts.")
    min_count: int = Field(1, ge=1, le=1000, description="occupancy: objects at once before it fires.")
    ask: str | None = Field(
        None,
        max_length=ASK_MAX_CHARS,
        description="A question the vision-language model answers about the frame that fired the rule (the "
        "object boxed); the answer comes as an `answer` message and on the event's `answers`.",
    )


class ZonesIn(BaseModel):
    """Zones (polygons), lines and the rules on them; coordinates normalised 0..1 or in pixels."""

    model_config = ConfigDict(extra="forbid")

    units: Literal["normalized", "pixels"] = "normalized"
    zones: list[ZoneIn] = Field([], max_length=MAX_ZONES)
    lines: list[LineIn] = Field([], max_length=MAX_LINES)
    rules: list[RuleIn] = Field([], max_length=MAX_RULES)


class TrackingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_hits: int | None = Field(None, ge=2, le=30, description="Frames before a track gets an id.")
    keep_s: float | None = Field(None, ge=0.0, le=60.0, description="How long a lost track is kept.")
    iou_threshold: float | None = Field(None, ge=0.01, le=0.99, description="Least IoU to match a track.")


class DescribeIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    labels: list[str] | None = Field(
        None, max_length=80, description="Describe only events of these class names; null = every event."
    )
    prompt: str | None = Field(
        None,
        max_length=DESCRIBE_PROMPT_MAX_CHARS,
        description="What to ask the model about each event; null = VLM_DESCRIBE_DEFAULT_PROMPT.",
    )
    after_s: float | None = Field(
        None,
        ge=0.0,
        le=DESCRIBE_AFTER_S_MAX,
        description="Describe an event once it has lived this long (live); null = once it has ended.",
    )


class StartRequest(BaseModel):
    # strict: "yes" is no boolean, "0.5" and true are no confidence (lax pydantic took them all).
    model_config = ConfigDict(extra="forbid", strict=True)

    stream_url: str = Field(..., min_length=1, max_length=2048, examples=["rtsp://127.0.0.1:8554/camera"])
    enable_drawing: bool = Field(True, description="Send annotated JPEG frames to viewers.")
    confidence_threshold: float | None = Field(None, ge=0.0, le=1.0, description="Default: DEFAULT_CONFIDENCE.")
    classes: list[str] | None = Field(None, max_length=80, description="Only these class names; null = all.")
    alert: AlertRuleIn | None = Field(default_factory=AlertRuleIn, description="null turns alerts off.")
    jpeg_quality: int | None = Field(None, ge=1, le=100, description="Default: JPEG_QUALITY.")
    camera: Name | None = Field(None, description="A human name: " + NAME_WORDS)
    zones: ZonesIn | None = Field(None, description="Zones, lines and rules (replaceable later with PUT .../zones).")
    tracking: TrackingIn | None = Field(None, description="Tracker settings; defaults from TRACK_* settings.")
    record: RecordMode | None = Field(
        None,
        description="What of the camera's video is kept: off, events (segments around events), continuous. "
        "Default: RECORD.",
    )
    describe: DescribeIn | bool | None = Field(
        None,
        description="Have the vision-language model describe this session's events (VLM_PROVIDER): true = every "
        "event at its end with the default prompt, or the options; false or null = never.",
    )


class StopRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    session_id: str = Field(..., min_length=1, max_length=64)


def _check_classes(names: list[str] | None, known: tuple[str, ...], field: str) -> frozenset[str] | None:
    if names is None:
        return None
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ApiError("invalid_request", f"{field}: unknown class name(s) {', '.join(unknown)}")
    return frozenset(names)


def _options(body: StartRequest, manager: SessionManager) -> SessionOptions:
    """What a start call asks for, its class names checked against the model's; settings fill the rest."""
    settings = manager.settings
    known = manager.model().class_names
    classes = _check_classes(body.classes, known, "classes")
    rule = _alert_rule(body, known)
    zones = _checked_zones(body.zones, known) if body.zones is not None else None
    tracking = body.tracking or TrackingIn()
    return SessionOptions(
        camera=body.camera,
        zones=zones,
        tracking=TrackerOptions(
            min_hits=tracking.min_hits if tracking.min_hits is not None else settings.track_min_hits,
            keep_s=tracking.keep_s if tracking.keep_s is not None else settings.track_keep_s,
            iou_threshold=tracking.iou_threshold if tracking.iou_threshold is not None else settings.track_iou,
        ),
        stream_url=body.stream_url,
        enable_drawing=body.enable_drawing,
        confidence_threshold=(
            body.confidence_threshold if body.confidence_threshold is not None else settings.default_confidence
        ),
        classes=classes,
        alert_rule=rule,
        jpeg_quality=body.jpeg_quality or settings.jpeg_quality,
        record=body.record or settings.record,
        describe=_describe(body.describe, known),
    )


def _describe(body: DescribeIn | bool | None, known: tuple[str, ...]) -> DescribeOptions | None:
    """The session's wish for descriptions, its labels checked against the model's; a blank prompt is none."""
    if body is None or body is False:
        return None
    if body is True:
        body = DescribeIn()
    prompt = (body.prompt or "").strip() or None
    if prompt is not None and not all(c.isprintable() or c in "\n\t" for c in prompt):
        raise ApiError("invalid_request", "describe.prompt: holds a control character")
    labels = _check_classes(body.labels, known, "describe.labels")
    return DescribeOptions(labels=labels, prompt=prompt, after_s=body.after_s)


def _alert_rule(body: StartRequest, known: tuple[str, ...]) -> AlertRule | None:
    """The alert rule asked for; none when turned off, or when left to the default and the model
    has no class the default alerts on."""
    default_alert_fits = "alert" in body.model_fields_set or set(AlertRuleIn().classes) <= set(known)
    if body.alert is None or not default_alert_fits:
        return None
    return AlertRule(
        classes=_check_classes(body.alert.classes, known, "alert.classes") or frozenset(),
        min_confidence=body.alert.min_confidence,
        cooldown_s=body.alert.cooldown_s,
        zones=tuple(np.asarray(z, dtype=np.float64) for z in body.alert.zones or ()),
    )


@router.post(
    "/start",
    summary="Open a stream and start analysing it",
    response_model=None,
    responses={
        200: {"model": StartAnswer},
        202: {
            "model": PendingAnswer,
            "description": "No place on this replica, and replicas share the session store: recorded, "
            "and the first replica with room runs it (its status says which).",
        },
        **errors(
            *BODY,
            "invalid_zones",
            "unsupported_url",
            "no_video_stream",
            "destination_denied",
            "too_many_sessions",
            "too_many_opens",
            "stream_unavailable",
            "model_not_ready",
            "shutting_down",
            "stream_timeout",
        ),
    },
)
async def start(body: StartRequest, manager: ManagerDep) -> dict | JSONResponse:
    options = _options(body, manager)
    try:
        session = await manager.start(options)
    except SessionError as exc:
        cluster = manager.cluster
        if exc.code != "too_many_sessions" or cluster is None or not cluster.shared:
            raise
        session_id, token = await asyncio.to_thread(cluster.record_pending, options)
        message = f"{exc}; recorded as pending: the first replica with room runs it"
        path = viewer_path_of(session_id, token)
        answer = {"session_id": session_id, "status": "pending", "message": message, "websocket_path": path}
        return JSONResponse(dict(answer, viewer_token=token), status_code=202)
    info = session.stream
    message = f"Session started: {info.width}x{info.height} {info.codec} at {info.fps:g} fps"
    if session.model.warning:
        message += f". WARNING: {session.model.warning}"
    return {
        "session_id": session.id,
        "status": session.state.value,
        "message": message,
        "websocket_path": viewer_path(session),
        "viewer_token": session.viewer_token,
        "stream": info.as_dict(),
        "model": session.model.as_dict(),
    }


def _status(session: Session, replica: str) -> dict:
    """The status document of one session of this replica: what it was asked for, its state and figures now."""
    options, snap = session.options, session.snapshot()
    return {
        "session_id": session.id,
        "state": snap.state,
        "replica": replica,
        "paused": snap.paused,
        "camera": options.camera,
        "stream_url": redact_url(options.stream_url),
        "stream": session.stream.as_dict() if session.stream else None,
        "enable_drawing": options.enable_drawing,
        "confidence_threshold": options.confidence_threshold,
        "classes": sorted(options.classes) if options.classes is not None else None,
        "tracking": dataclasses.asdict(options.tracking),
        "record": options.record,
        "describe": _describe_dict(options.describe),
        "recording": snap.recording,
        "stats": snap.stats.as_dict(),
        "counts": snap.counts,
        "last_error": snap.last_error,
        "started_at": session.started_at,
        "model": session.model.as_dict(),
    }


def _describe_dict(describe: DescribeOptions | None) -> dict | None:
    if describe is None:
        return None
    labels = sorted(describe.labels) if describe.labels is not None else None
    return {"labels": labels, "prompt": describe.prompt, "after_s": describe.after_s}


def _moving_words(record: SessionRecord) -> str | None:
    if record.shown_state == "moving" and record.lease_expired:
        return f"replica {record.owner} stopped renewing its lease: the first replica with room takes the session over"
    return None


def _recorded_status(record: SessionRecord) -> dict:
    """The status document of a session another replica runs (or none does yet), from the store."""
    options = options_from_record(record.options)
    return {
        "session_id": record.id,
        "state": record.shown_state,
        "replica": record.owner,
        "paused": False,
        "camera": options.camera,
        "stream_url": redact_url(options.stream_url),
        "stream": None,
        "enable_drawing": options.enable_drawing,
        "confidence_threshold": options.confidence_threshold,
        "classes": sorted(options.classes) if options.classes is not None else None,
        "tracking": dataclasses.asdict(options.tracking),
        "record": options.record,
        "describe": _describe_dict(options.describe),
        "recording": None,
        "stats": None,
        "counts": None,
        "last_error": _moving_words(record) or record.last_error,
        "started_at": record.created_at,
        "model": None,
    }


def _elsewhere(manager: SessionManager, session_id: str) -> SessionRecord:
    """A session recorded in the store and wanted, that this replica does not run; 404 otherwise."""
    record = manager.cluster.find(session_id) if manager.cluster is not None else None
    if record is None or record.desired != "run":
        raise SessionError("session_not_found", f"No session with id {session_id!r}")
    return record


async def _stop(manager: SessionManager, session_id: str) -> dict:
    if manager.find(session_id) is None and manager.cluster is not None:
        record = await asyncio.to_thread(_elsewhere, manager, session_id)
        await asyncio.to_thread(manager.cluster.request_stop, session_id)
        where = f"replica {record.owner} stops it" if record.owner else "no replica runs it"
        within = manager.cluster.interval_s
        return {"session_id": session_id, "status": "stopped", "message": f"Stop recorded; {where} within {within:g} s"}
    session = await asyncio.to_thread(manager.stop, session_id)
    stats = session.snapshot().stats
    return {
        "session_id": session.id,
        "status": "stopped",
        "message": f"Session stopped after {stats.frames_decoded} frames ({stats.frames_inferred} analysed)",
    }


@router.post(
    "/stop",
    summary="Stop a session",
    response_model=None,
    responses={200: {"model": StopAnswer}, **errors(*BODY, "session_not_found")},
)
async def stop(body: StopRequest, manager: ManagerDep) -> dict:
    return await _stop(manager, body.session_id)


@router.delete(
    "/sessions/{session_id}",
    summary="Stop a session (REST form of /stop)",
    response_model=None,
    responses={200: {"model": StopAnswer}, **errors("invalid_request", "session_not_found")},
)
async def delete_session(session_id: str, manager: ManagerDep) -> dict:
    return await _stop(manager, session_id)


@router.get(
    "/status/{session_id}",
    summary="State, stream and statistics of one session",
    response_model=None,
    responses={200: {"model": StatusAnswer}, **errors("invalid_request", "session_not_found")},
)
async def status(session_id: str, manager: ManagerDep) -> dict:
    # The outputs are shared: a store that drops events drops this session's too.
    warnings = output_warnings(manager.sinks)
    session = manager.find(session_id)
    if session is None:
        record = await asyncio.to_thread(_elsewhere, manager, session_id)
        return dict(_recorded_status(record), warnings=warnings)
    return dict(_status(session, manager.settings.replica_id), warnings=warnings)


@router.get(
    "/sessions",
    summary="Every session of this replica",
    response_model=None,
    responses={200: {"model": SessionsAnswer}},
)
async def sessions(manager: ManagerDep) -> dict:
    warnings, replica = output_warnings(manager.sinks), manager.settings.replica_id
    local = manager.list()
    answer = [dict(_status(s, replica), warnings=warnings, websocket_path=viewer_path(s)) for s in local]
    if manager.cluster is not None:
        here = {s.id for s in local}
        recorded = await asyncio.to_thread(manager.cluster.list)
        answer += [
            dict(_recorded_status(r), warnings=warnings, websocket_path=viewer_path_of(r.id, r.viewer_token))
            for r in recorded
            if r.desired == "run" and r.id not in here
        ]
    return {"sessions": answer}


def _checked_zones(body: ZonesIn, known: tuple[str, ...]) -> dict:
    """The zones as a plain spec; semantic errors (names, references, coordinates) as 422 in words.
    Pixel coordinates are checked against the picture once the stream's size is known."""
    spec = body.model_dump()
    try:
        # Pixels are checked against the real picture size after the stream opens; here, against
        # an unbounded one, so that names, references and point counts fail fast, before the open.
        unbounded = 1 << 30 if body.units == "pixels" else None
        config = ZoneConfig.from_dict(spec, width=unbounded, height=unbounded)
    except ValueError as exc:
        raise ApiError("invalid_zones", str(exc)) from exc
    _check_classes(sorted(config.rule_classes()), known, "rules.classes")
    return spec


@router.get(
    "/sessions/{session_id}/zones",
    summary="The session's zones, lines and rules (normalised)",
    response_model=None,
    responses={200: {"model": ZonesAnswer}, **errors("invalid_request", "session_not_found", "session_not_ready")},
)
async def get_zones(session_id: str, manager: ManagerDep) -> dict:
    session = manager.find(session_id)
    if session is None:  # another replica runs it: the zones it was last given, from the store
        record = await asyncio.to_thread(_elsewhere, manager, session_id)
        spec = options_from_record(record.options).zones or {}
        return {"session_id": session_id, "zones": _normalised(spec, record.owner)}
    return {"session_id": session_id, "zones": session.zones()}


def _normalised(spec: dict, owner: str | None) -> dict:
    if spec.get("units") == "pixels":
        raise ApiError(
            "invalid_zones",
            f"this session runs on {f'replica {owner}' if owner else 'no replica yet'}, which alone knows its "
            "picture size: send normalized coordinates (0..1)",
        )
    try:
        return ZoneConfig.from_dict(spec).as_dict()
    except ValueError as exc:
        raise ApiError("invalid_zones", str(exc)) from exc


@router.put(
    "/sessions/{session_id}/zones",
    summary="Replace the session's zones, lines and rules",
    response_model=None,
    responses={
        200: {"model": ZonesAnswer},
        **errors(*BODY, "invalid_zones", "session_not_found", "session_not_ready"),
    },
)
async def put_zones(session_id: str, body: ZonesIn, manager: ManagerDep) -> dict:
    session = manager.find(session_id)
    spec = _checked_zones(body, manager.model().class_names)
    if session is None:  # another replica runs it: recorded, and its replica applies it at its next renewal
        record = await asyncio.to_thread(_elsewhere, manager, session_id)
        zones = _normalised(spec, record.owner)
        options = dict(record.options, zones=spec)
        await asyncio.to_thread(manager.cluster.update_options, session_id, options)
        return {"session_id": session_id, "zones": zones}
    try:
        zones = session.set_zones(spec)
    except ValueError as exc:
        raise ApiError("invalid_zones", str(exc)) from exc
    if manager.cluster is not None:
        try:
            await asyncio.to_thread(manager.cluster.options_changed_here, session_id, {"zones": spec})
        except Exception as exc:  # noqa: BLE001 - applied here; only a move or restart would lose them
            log.warning("session %s: new zones applied but not recorded in the store: %s", session_id, exc)
    return {"session_id": session_id, "zones": zones}


class RecordIn(BaseModel):
    """A session's new record mode."""

    model_config = ConfigDict(extra="forbid")

    record: RecordMode = Field(
        ..., description="What of the video is kept from now on: off, events (segments around events), continuous."
    )


@router.put(
    "/sessions/{session_id}/record",
    summary="Start, change or stop the session's recording",
    response_model=None,
    responses={200: {"model": RecordAnswer}, **errors(*BODY, "session_not_found", "store_unavailable")},
)
async def put_record(session_id: str, body: RecordIn, manager: ManagerDep) -> dict:
    session = manager.find(session_id)
    if session is None:  # another replica runs it: recorded, and its replica applies it at its next renewal
        record = await asyncio.to_thread(_elsewhere, manager, session_id)
        await asyncio.to_thread(manager.cluster.update_options, session_id, dict(record.options, record=body.record))
        where = f"replica {record.owner} applies it" if record.owner else "the replica that runs it applies it"
        message = f"Recorded; {where} within {manager.cluster.interval_s:g} s"
        return {"session_id": session_id, "record": body.record, "recording": None, "message": message}
    await asyncio.to_thread(session.set_record, body.record)
    if manager.cluster is not None:
        try:
            await asyncio.to_thread(manager.cluster.options_changed_here, session_id, {"record": body.record})
        except Exception as exc:  # noqa: BLE001 - applied here; only a move or restart would lose it
            log.warning("session %s: new record mode applied but not recorded in the store: %s", session_id, exc)
    recording = session.snapshot().recording
    message = f"Recording {body.record}" if body.record != "off" else "Not recording"
    if recording is not None and recording["state"] == "unavailable":
        message = recording["last_error"]
    return {"session_id": session_id, "record": body.record, "recording": recording, "message": message}


@router.get(
    "/sessions/{session_id}/counts",
    summary="Zone occupancy, line crossings and rule hits",
    response_model=None,
    responses={200: {"model": CountsAnswer}, **errors("invalid_request", "session_not_found", "session_elsewhere")},
)
async def counts(session_id: str, manager: ManagerDep) -> dict:
    session = manager.find(session_id)
    if session is None:
        record = await asyncio.to_thread(_elsewhere, manager, session_id)
        where = f"replica {record.owner}" if record.owner else "no replica yet"
        raise ApiError(
            "session_elsewhere",
            f"session {session_id} runs on {where}: its live counts are there, and reach its viewers on "
            "every replica (WebSocket status messages)",
        )
    return {"session_id": session_id, "counts": session.counts()}
