"""What the HTTP API answers, as models for /openapi.json: the answers of every route and the one
error shape, with the codes each status carries.

The routes declare these with `responses=` and return plain dicts: the models document, they are
not run on every answer (a document that fell behind must not turn a good answer into a 500).
tests/integration/test_openapi_contract.py holds the real answers to them. Answer objects forbid
keys they do not name, so a key added to an answer and not here fails that test.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from pydantic_core import PydanticCustomError

from rtdetr_service.core.names import MAX_NAME, checked_name
from rtdetr_service.sessions.session import SessionState
from rtdetr_service.web.errors import ERRORS


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- names (asked for, not answered: every name a request gives or filters by) ------------------


def _valid_name(raw: str) -> str:
    try:
        return checked_name(raw)
    except ValueError as exc:
        # pydantic's own ValueError words start "Value error, "; these are the whole answer.
        raise PydanticCustomError("invalid_name", "{words}", {"words": str(exc)}) from None


NAME_WORDS = "1–64 letters, digits and ' ._:-' after NFC; no invisible characters, no leading or trailing space."
# The 64 count after NFC (checked_name); as sent, a name of decomposed accents may be longer.
Name = Annotated[str, StringConstraints(min_length=1, max_length=4 * MAX_NAME), AfterValidator(_valid_name)]


# -- errors ---------------------------------------------------------------------------------------


class ErrorAnswer(BaseModel):
    """Every error of the service (never FastAPI's own validation shape)."""

    error: str = Field(..., description="A machine code, e.g. `session_not_found`.", examples=["session_not_found"])
    detail: str = Field(..., description="Words a user can act on.", examples=["No session with id 'abc'"])


# What /docs says of each header an error answer carries (ERRORS names the headers, by code).
_HEADER_DOCS = {
    "WWW-Authenticate": {
        "description": "`ApiKey`: the key goes in the `apikey` (or `X-API-Key`) header.",
        "required": True,
        "schema": {"type": "string"},
    }
}


def errors(*codes: str) -> dict[int | str, dict]:
    """The `responses=` entries for these error codes, grouped by their status (web/errors.py's ERRORS)."""
    by_status: dict[int, list[str]] = {}
    for code in codes:
        if code not in ERRORS:
            raise ValueError(f"unknown error code {code!r}")
        by_status.setdefault(ERRORS[code].status, []).append(code)
    responses: dict[int | str, dict] = {status: _error_answer(named) for status, named in sorted(by_status.items())}
    return responses


def _error_answer(codes: list[str]) -> dict:
    """One status's OpenAPI answer: every code it carries, its words, an example each, its headers."""
    headers = {name: _HEADER_DOCS[name] for code in codes for name in ERRORS[code].headers or {}}
    return {
        "model": ErrorAnswer,
        "description": " ".join(f"`{code}`: {ERRORS[code].when}" for code in codes),
        "content": {
            "application/json": {
                "examples": {code: {"value": {"error": code, "detail": ERRORS[code].when}} for code in codes}
            }
        },
        **({"headers": headers} if headers else {}),
    }


# Every route under /api/v1 needs a key: checked before routing and before the body is read.
KEYED = ("unauthorized",)
# Every route with a JSON body: refused before it is parsed, or when it does not parse.
BODY = ("invalid_json", "body_too_large", "invalid_request")


# -- sessions -------------------------------------------------------------------------------------


class StreamInfoOut(_Answer):
    width: int
    height: int
    fps: float
    codec: str


class ModelInfoOut(_Answer):
    name: str
    backend: str
    device: str
    dtype: str
    backend_reason: str = Field(..., description="Why this backend and precision.")
    cpu_threads: int | None = Field(..., description="Inference threads on the CPU; null on a GPU.")
    trained: bool
    warning: str | None = Field(..., description="Set when the weights are not trained (detections are random).")


class LatencyOut(_Answer):
    p50: float | None
    p99: float | None


class StatsOut(_Answer):
    source_fps: float
    inference_fps: float
    published_fps: float
    frames_decoded: int
    frames_inferred: int
    frames_published: int
    dropped_frames: int
    latency_ms: LatencyOut = Field(..., description="Decode to published; null before the first frame.")
    viewers: int
    reconnects: int
    decode_errors: int
    publish_errors: int
    alerts: int
    events_open: int


class ZoneCountsOut(_Answer):
    current: dict[str, int] = Field(..., description="Objects inside now, by class name.")
    entered: dict[str, int] = Field(..., description="Objects that entered since the session started, by class.")


class LineCountsOut(_Answer):
    in_: dict[str, int] = Field(..., alias="in", description="Crossings in, by class name.")
    out: dict[str, int] = Field(..., description="Crossings out, by class name.")


class CountsOut(_Answer):
    zones: dict[str, ZoneCountsOut] = Field(..., description="By zone name.")
    lines: dict[str, LineCountsOut] = Field(..., description="By line name.")
    rules: dict[str, int] = Field(..., description="Times each rule fired, by rule name.")


class TrackingOut(_Answer):
    min_hits: int
    keep_s: float
    iou_threshold: float


class RecordingOut(_Answer):
    mode: Literal["events", "continuous"]
    state: Literal["recording", "waiting", "failing", "unavailable"] = Field(
        ..., description="`waiting`: for the stream's next keyframe to start a segment on."
    )
    segments: int = Field(..., description="Segments written and indexed since the session started here.")
    bytes: int
    dropped_segments: int = Field(..., description="Pieces of video lost: the disk could not keep up, or failed.")
    dropped_packets: int
    skipped_packets: int = Field(..., description="Packets before a keyframe to start on, or without timestamps.")
    queued: int
    failing: bool
    last_error: str | None = Field(..., description="Why segments are not written now, in words.")


class DescribeOut(_Answer):
    labels: list[str] | None = Field(..., description="Only events of these classes; null = every event.")
    prompt: str | None = Field(..., description="Its own prompt; null = VLM_DESCRIBE_DEFAULT_PROMPT.")
    after_s: float | None = Field(..., description="Described once this long live; null = at its end.")


class StatusAnswer(_Answer):
    session_id: str
    state: SessionState | Literal["pending", "opening", "moving"] = Field(
        ...,
        description="Of a session on another replica, as the store has it: `pending` (no replica has a place), "
        "`opening`, `moving` (its replica died or drained; another takes it), or the states of a running one.",
    )
    replica: str | None = Field(..., description="The replica that runs it (REPLICA_ID); null while none does.")
    paused: bool
    camera: str | None
    stream_url: str = Field(..., description="Credentials redacted.")
    stream: StreamInfoOut | None = Field(..., description="null until the stream has opened.")
    enable_drawing: bool
    confidence_threshold: float
    classes: list[str] | None = Field(..., description="The class filter (sorted); null for every class.")
    tracking: TrackingOut
    record: Literal["off", "events", "continuous"]
    describe: DescribeOut | None = Field(..., description="Its events described by the VLM; null: never.")
    recording: RecordingOut | None = Field(
        ..., description="The recorder's figures; null when the session does not record here."
    )
    stats: StatsOut | None = Field(..., description="null for a session another replica runs (ask it: see `replica`).")
    counts: CountsOut | None = Field(..., description="null for a session another replica runs.")
    last_error: str | None
    started_at: float = Field(..., description="Unix seconds.")
    model: ModelInfoOut | None = Field(..., description="null for a session another replica runs.")
    warnings: list[str] = Field(..., description="Outputs that fail or drop, in words.")


class SessionItem(StatusAnswer):
    websocket_path: str


class SessionsAnswer(_Answer):
    sessions: list[SessionItem]


class StartAnswer(_Answer):
    session_id: str
    status: SessionState
    message: str
    websocket_path: str = Field(..., description="The viewer's WebSocket path, viewer token included.")
    viewer_token: str
    stream: StreamInfoOut
    model: ModelInfoOut


class PendingAnswer(_Answer):
    session_id: str
    status: Literal["pending"]
    message: str
    websocket_path: str = Field(..., description="Viewers may connect now; frames come once a replica runs it.")
    viewer_token: str


class StopAnswer(_Answer):
    session_id: str
    status: Literal["stopped"]
    message: str


# -- zones ----------------------------------------------------------------------------------------

Point = tuple[float, float]


class ZoneOut(_Answer):
    name: str
    points: list[Point]


class LineOut(_Answer):
    name: str
    a: Point
    b: Point


class RuleOut(_Answer):
    name: str
    kind: Literal["enter", "dwell", "cross", "occupancy"]
    zone: str | None
    line: str | None
    classes: list[str]
    min_confidence: float
    dwell_s: float
    direction: Literal["in", "out", "any"]
    min_count: int
    ask: str | None = Field(
        ..., description="The question the vision-language model answers about the frame that fired it; null: none."
    )


class ZoneConfigOut(_Answer):
    units: Literal["normalized"]
    zones: list[ZoneOut]
    lines: list[LineOut]
    rules: list[RuleOut]


class RecordAnswer(_Answer):
    session_id: str
    record: Literal["off", "events", "continuous"]
    recording: RecordingOut | None = Field(
        ..., description="Its recorder now (as in the status); null when off or when another replica runs it."
    )
    message: str


class ZonesAnswer(_Answer):
    session_id: str
    zones: ZoneConfigOut


class CountsAnswer(_Answer):
    session_id: str
    counts: CountsOut


# -- events ---------------------------------------------------------------------------------------


class FrameSizeOut(_Answer):
    width: int
    height: int


class RuleAnswerOut(_Answer):
    rule: str
    question: str
    time: float = Field(..., description="Unix seconds of the frame that fired the rule.")
    event_id: str | None
    session_id: str
    camera: str | None
    text: str = Field(..., description="The model's words (untrusted, bounded).")
    answer: Literal["yes", "no"] | None = Field(..., description="Only when the words held a valid verdict.")
    score: float | None = Field(..., description="0..1, how sure the model is of yes; null without a verdict.")
    model_id: str | None
    error: str | None = Field(..., description="Why there is no answer, in words; null when answered.")


class EventOut(_Answer):
    id: str
    session_id: str
    camera: str | None
    track_id: int
    label: str
    class_id: int
    start_time: float
    end_time: float | None = Field(..., description="null while the event is active.")
    last_seen: float
    best_confidence: float
    best_bbox: tuple[float, float, float, float] = Field(..., description="x1, y1, x2, y2 in source pixels.")
    best_time: float
    frame: FrameSizeOut
    zones: list[str] = Field(..., description="Zones entered, in order of entry.")
    rules: list[str] = Field(..., description="Rules fired, in order of first firing.")
    has_snapshot: bool
    active: bool
    snapshot_url: str | None
    has_clip: bool = Field(
        ...,
        description="A kept recording overlaps the event widened by RECORD_PRE_S / RECORD_POST_S: its clip plays.",
    )
    clip_url: str | None = Field(..., description="GET it for the event's MP4 clip; null without one.")
    global_id: str | None = Field(
        ...,
        description="The object's identity across cameras (Re-ID): the same on every event of the same object; "
        "null until the event has ended and been linked.",
    )
    description: str | None = Field(
        ...,
        description="What the vision-language model said it saw (untrusted words, at most VLM_ANSWER_MAX_CHARS); "
        "null until its session's `describe` has had it described.",
    )
    description_model: str | None = Field(..., description="The model that wrote the description.")
    answers: list[RuleAnswerOut] = Field(..., description="Its rules' questions (`ask`), answered, in order.")


class EventsAnswer(_Answer):
    events: list[EventOut]
    next_cursor: str | None = Field(..., description="Pass as `cursor` for the next page; null on the last.")


class SearchHitOut(EventOut):
    score: float = Field(
        ...,
        description="Higher is closer. By words: the fused rank score, 0..1 (1: first by what was seen and by "
        "what was said; 0.5: first by one of them). By an event or a picture: the cosine similarity, -1..1.",
    )
    image_score: float | None = Field(
        ..., description="The cosine similarity of the event's image vector to the query; null: not in that list."
    )
    text_score: float | None = Field(
        ...,
        description="By words: the cosine similarity of the event's description to the words; null: not in that "
        "list (no description, or not among the closest).",
    )
    matched: list[Literal["image", "description"]] = Field(
        ..., description="Which rankings found it: by what was seen (`image`), by what was said (`description`)."
    )


class SearchAnswer(_Answer):
    events: list[SearchHitOut] = Field(..., description="Closest first (ties by event id).")
    next_cursor: str | None = Field(
        ..., description="Pass as `cursor` with the same query for the next page; null on the last (at most 1000 deep)."
    )
    model_id: str = Field(..., description="The encoder the query was embedded with; only its vectors are searched.")
    trained: bool = Field(..., description="False: the encoder has random weights and the scores mean nothing.")
    notice: str | None = Field(..., description="Words to show beside the results (random weights), or null.")


class IdentityAnswer(_Answer):
    global_id: str
    events: list[EventOut] = Field(..., description="The object's appearances, oldest first, across cameras.")
    next_cursor: str | None = Field(..., description="Pass as `cursor` for the next page; null on the last.")


class ReindexAnswer(_Answer):
    state: Literal["idle", "waiting", "running", "done", "stopped", "failed"]
    detail: str = Field(..., description="The state in words.")
    model_id: str | None = Field(..., description="The encoder whose vectors the run makes; null until it has loaded.")
    done: int = Field(..., description="Vectors made by this run: events' from their snapshots, and descriptions'.")
    texts_done: int = Field(..., description="Of `done`, the descriptions embedded (their text vectors).")
    skipped: int = Field(
        ...,
        description="Events without a readable snapshot, or no longer described (or deleted meanwhile): left missing.",
    )
    failed: int = Field(..., description="Events whose batch failed (last_error says why).")
    remaining: int | None = Field(
        ..., description="Vectors still missing (events' and descriptions'): counted at the start, then down."
    )
    total_estimate: int | None = Field(..., description="done + skipped + failed + remaining.")
    estimate_capped: bool = Field(
        ..., description="True: more than 10 000 were missing at the start; `remaining` is a floor."
    )
    rate_per_s: float | None = Field(..., description="Events embedded per second of the run (sleep included).")
    duty: float = Field(..., description="REINDEX_DUTY: the share of its thread's time the run works.")
    started_at: float | None
    finished_at: float | None
    runs: int = Field(..., description="Runs started since the service started.")
    last_error: str | None


class SearchStatusOut(_Answer):
    enabled: bool = Field(..., description="Events are embedded and can be searched (EMBED_ENABLED, and a store).")
    state: Literal["off", "loading", "failed", "unavailable", "ready"] = Field(
        ...,
        description="unavailable: the database cannot search vectors (PostgreSQL without pgvector); detail says so.",
    )
    model_id: str | None
    trained: bool | None = Field(..., description="False: random weights; similarities and Re-ID mean nothing.")
    detail: str = Field(..., description="The state in words, to show a user.")


# -- the vision-language model and /ask ------------------------------------------------------------


class VlmStateOut(_Answer):
    enabled: bool = Field(..., description="VLM_PROVIDER names a provider (not `off`).")
    state: Literal["off", "loading", "failed", "ready"]
    provider: Literal["off", "openai", "transformers"]
    model_id: str | None = Field(..., description="What answers; null until it has loaded.")
    trained: bool | None = Field(..., description="False: random weights; its words mean nothing.")
    detail: str = Field(..., description="The state in words, to show a user.")


class AsksOut(_Answer):
    running: int = Field(..., description="POST /api/v1/ask being answered now.")
    limit: int = Field(..., description="ASK_CONCURRENCY: one more is answered 429 too_many_asks.")


class VlmAnswerOut(VlmStateOut):
    provider_status: dict | None = Field(
        ...,
        description="The provider's own figures (keys by label with their state and counts, the local "
        "model's queue and counts); never a key. null until it has loaded.",
    )
    asks: AsksOut


class AskResultOut(_Answer):
    event_id: str
    camera: str | None
    label: str
    start: float = Field(..., description="The event's start (Unix seconds).")
    end: float | None = Field(..., description="null while the event is active.")
    answer: Literal["yes", "no"] | None = Field(
        ..., description="The model's verdict; null when its words did not pass the schema check."
    )
    score: float | None = Field(
        ..., description="How sure the model is that the answer is yes, 0..1; null when unchecked (ranked last)."
    )
    reason: str = Field(..., description="The model's words (untrusted text: show it as text), bounded.")
    snapshot_url: str | None
    clip_url: str | None = Field(..., description="The event's MP4 clip, when recordings hold it; else null.")
    recall_score: float = Field(
        ...,
        description="Where recall ranked it, as a search by the question's words scores it: the fused rank "
        "score, 0..1 (1: first by what was seen and by what was said; 0.5: first by one of them).",
    )
    matched: list[Literal["image", "description"]] = Field(
        ..., description="Which rankings recalled it: by what was seen (`image`), by what was said (`description`)."
    )


class AskAnswer(_Answer):
    question: str
    results: list[AskResultOut] = Field(
        ..., description="Highest score first (ties by recall), at most top_k; unchecked verdicts last."
    )
    checked: int = Field(..., description="Candidates the model answered.")
    failed: int = Field(..., description="Candidates the model could not answer (notices say why).")
    took_s: float
    model_id: str = Field(..., description="The vision-language model that answered.")
    trained: bool = Field(..., description="False: the model has random weights; its answers mean nothing.")
    notices: list[str] = Field(..., description="Words to show beside the results (random weights, failures).")


class TrackPointOut(_Answer):
    t: float = Field(..., description="Frame timestamp (Unix seconds).")
    bbox: tuple[float, float, float, float] = Field(..., description="x1, y1, x2, y2 in source pixels.")
    confidence: float
    zones: list[str] = Field(..., description="The zones the object was in at that frame.")


class TrackAnswer(_Answer):
    event_id: str
    hz: float = Field(..., description="At most this many points per second (EVENT_TRACK_HZ, halved per thinning).")
    truncated: bool = Field(..., description="True when the track was thinned to stay within EVENT_TRACK_MAX_POINTS.")
    points: list[TrackPointOut] = Field(..., description="Oldest first; the first and last sightings included.")


class SegmentOut(BaseModel):
    id: str
    session_id: str
    camera: str | None
    start_time: float = Field(..., description="Wall clock (Unix s) of its first packet.")
    end_time: float = Field(..., description="Wall clock (Unix s) of its last packet.")
    bytes: int
    codec: str = Field(..., description="As the camera sent it: h264 or hevc (never re-encoded).")
    width: int
    height: int
    mode: Literal["events", "continuous"] = Field(..., description="The session's `record` mode when it was written.")


class RecordingsAnswer(_Answer):
    segments: list[SegmentOut] = Field(..., description="Oldest first.")


class EventDeletedAnswer(_Answer):
    event_id: str
    status: Literal["deleted"]


class OutputOut(BaseModel):
    """One output's counters; an output may add keys of its own (the event store: `backend`, `detail`)."""

    model_config = ConfigDict(extra="allow")

    name: str
    state: Literal["ok", "degraded", "failing"]
    handled: int
    sent: int
    failed: int
    dropped: int
    queued: int
    queue_size: int
    last_error: str | None
    restarts: int = Field(..., description="Times its writer loop crashed (a bug, not a failed write), then restarted.")


class OutputsAnswer(_Answer):
    outputs: list[OutputOut]


# -- health (for api/health.py: /ready answers 200 or 503) ------------------------------------------


class HealthAnswer(_Answer):
    status: Literal["ok"]


class ReadyAnswer(_Answer):
    ready: Literal[True]
    warnings: list[str] = Field(..., description="An output that fails or drops, or an event store that is not open.")
    outputs: list[OutputOut]
    model: ModelInfoOut
    jpeg_encoder: str
    sessions: int
    batches: int
    inference_errors: int
    last_inference_error: str | None
    max_sessions: int
    search: SearchStatusOut
    vlm: VlmStateOut


class NotReadyAnswer(_Answer):
    ready: Literal[False]
    detail: str = Field(..., description="Loading, failed to load (why), or the inference worker stopped (why).")
    model: ModelInfoOut | None


READY_RESPONSES: dict[int | str, dict] = {
    200: {"model": ReadyAnswer},
    503: {"model": NotReadyAnswer, "description": "The model is loading, failed to load, or its worker stopped."},
}
