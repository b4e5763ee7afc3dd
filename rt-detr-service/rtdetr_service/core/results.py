"""What the results stage produces and every output reads: alerts, event records and changes,
the published step of a session, and a session's snapshot."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rtdetr_service.core.stats import SessionStats
from rtdetr_service.core.types import Detection, Frame, FrameResult
from rtdetr_service.core.vlm import DescribeOptions


@dataclass(frozen=True, slots=True)
class Alert:
    """An alert: the classic class/confidence rule (`kind` "detection", `rule` None) or a zone
    or line rule that fired for one tracked object."""

    class_name: str
    confidence: float
    bbox: tuple[float, float, float, float]
    frame_index: int
    timestamp: float
    track_id: int | None = None
    kind: str = "detection"  # detection | enter | dwell | cross | occupancy
    rule: str | None = None
    zone: str | None = None
    line: str | None = None
    direction: str | None = None
    count: int | None = None
    event_id: str | None = None
    ask: str | None = None  # the rule's question to the vision-language model, answered later

    def as_data(self) -> dict:
        return {
            "class_name": self.class_name,
            "confidence": round(self.confidence, 4),
            "bbox": [round(v, 1) for v in self.bbox],
            "frame_index": self.frame_index,
            "track_id": self.track_id,
            "kind": self.kind,
            "rule": self.rule,
            "zone": self.zone,
            "line": self.line,
            "direction": self.direction,
            "count": self.count,
            "event_id": self.event_id,
            "ask": self.ask,
        }


@dataclass(frozen=True, slots=True)
class RuleAnswer:
    """A vision-language model's answer to the question a rule asks when it fires (`ask:`), for the
    alert and its event. `text` is the model's untrusted words; `answer`/`score` are set only when
    they passed the schema check (core/vlm.parse_verdict); `error` says why there is no answer."""

    rule: str
    question: str
    time: float  # the alert's frame timestamp
    event_id: str | None
    session_id: str
    camera: str | None
    text: str = ""
    answer: Literal["yes", "no"] | None = None
    score: float | None = None
    model_id: str | None = None
    error: str | None = None

    def as_data(self) -> dict:
        return {
            "rule": self.rule,
            "question": self.question,
            "time": self.time,
            "event_id": self.event_id,
            "session_id": self.session_id,
            "camera": self.camera,
            "text": self.text,
            "answer": self.answer,
            "score": None if self.score is None else round(self.score, 4),
            "model_id": self.model_id,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class EventRecord:
    """What is known about one object's life; times are frame timestamps (Unix seconds)."""

    id: str
    session_id: str
    camera: str | None
    track_id: int
    label: str
    class_id: int
    start_time: float
    end_time: float | None
    last_seen: float
    best_confidence: float
    best_bbox: tuple[float, float, float, float]
    best_time: float
    frame_width: int
    frame_height: int
    zones: tuple[str, ...] = ()  # every zone entered during the life, in order of entry
    rules: tuple[str, ...] = ()  # every rule fired for it, in order of first firing
    has_snapshot: bool = False
    # Its track points are kept at most this many per second now: EVENT_TRACK_HZ, halved each time
    # the points reach EVENT_TRACK_MAX_POINTS (0: no track kept). Not part of the event document.
    track_hz: float = 0.0
    # The object's identity across cameras (Re-ID): set once its life has ended and been linked to an
    # earlier look of the same object, or given a new one; None before that (outputs/embeddings/).
    global_id: str | None = None
    # What a vision-language model said about it (outputs/vlm/): a description once its life ended
    # (or after the session's `describe.after_s` live), and the answers to the questions its rules asked.
    # Untrusted words, bounded.
    description: str | None = None
    description_model: str | None = None
    answers: tuple[RuleAnswer, ...] = ()

    @property
    def active(self) -> bool:
        return self.end_time is None

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "session_id": self.session_id,
            "camera": self.camera,
            "track_id": self.track_id,
            "label": self.label,
            "class_id": self.class_id,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "last_seen": self.last_seen,
            "best_confidence": round(self.best_confidence, 4),
            "best_bbox": [round(v, 1) for v in self.best_bbox],
            "best_time": self.best_time,
            "frame": {"width": self.frame_width, "height": self.frame_height},
            "zones": list(self.zones),
            "rules": list(self.rules),
            "has_snapshot": self.has_snapshot,
            "active": self.active,
            "global_id": self.global_id,
            "description": self.description,
            "description_model": self.description_model,
            "answers": [a.as_data() for a in self.answers],
        }


@dataclass(frozen=True, slots=True)
class TrackPoint:
    """Where the object was at one frame: its box in source pixels, its confidence, the zones it was in."""

    t: float  # frame timestamp, Unix seconds
    bbox: tuple[float, float, float, float]
    confidence: float
    zones: tuple[str, ...] = ()
    # Its place on the track's grid at EVENT_TRACK_HZ: a track thinned k times keeps the multiples of
    # 2**k (the store and the lifecycle agree on which, whenever each thins); -1: the last sighting, kept.
    seq: int = -1

    def as_dict(self) -> dict:
        return {
            "t": self.t,
            "bbox": [round(v, 1) for v in self.bbox],
            "confidence": round(self.confidence, 4),
            "zones": list(self.zones),
        }


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    """The frame at the object's best so far and its box there: what a snapshot is made from."""

    event_id: str
    frame: Frame
    detection: Detection


@dataclass(frozen=True, slots=True)
class Embedding:
    """An event's appearance vector (L2-normalised) and the model that made it; outputs send it only
    when OUTPUT_EMBEDDINGS is on (768 floats a message for a base model)."""

    model_id: str
    vector: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class EventChange:
    """One step of a life. `before` is the record as it was (None for "new"); an "end" carries
    `event.track_id`, which is how the zone engine and tracker learn to forget a track. `points`
    are the track points kept since the event's previous change, oldest first. An "update" may
    follow the "end": the ended record with the global_id Re-ID gave it (outputs/embeddings/), or with
    a description or a rule's answer (outputs/vlm/); those updates may come for a live event too."""

    kind: Literal["new", "update", "end"]
    event: EventRecord
    before: EventRecord | None
    snapshot: SnapshotRequest | None = None
    points: tuple[TrackPoint, ...] = ()
    embedding: Embedding | None = None  # on the update that brings an ended event's global_id


@dataclass(frozen=True, slots=True)
class SessionView:
    """What sinks may know of the session a result belongs to."""

    session_id: str
    camera: str | None
    enable_drawing: bool
    jpeg_quality: int
    records: bool = False  # its record mode is not off and recordings are available: its events get clips
    describe: DescribeOptions | None = None  # its events are described by the vision-language model


@dataclass(frozen=True, slots=True)
class Published:
    """One step of a session's results: a frame with its tracked detections (None when only
    time passed), the alerts it raised and the event changes it caused; or, from the VLM stage,
    the answers to the questions its alerts asked (`ask`), with the events they were attached to."""

    session: SessionView
    result: FrameResult | None
    alerts: tuple[Alert, ...] = ()
    events: tuple[EventChange, ...] = ()
    answers: tuple[RuleAnswer, ...] = ()


@dataclass(frozen=True, slots=True)
class SessionSnapshot:
    """A session's state and figures at one moment; every status document is made from one."""

    session_id: str
    state: str
    paused: bool
    last_error: str | None
    stats: SessionStats
    counts: dict
    recording: dict | None = None  # the recorder's figures and state (outputs/recordings), None when off
