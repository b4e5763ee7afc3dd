"""Every message the service sends, in one place: the WebSocket formats of the system spec, and
the outputs' messages (webhook, MQTT, Kafka), each named by its `schema` (docs/schemas/).

Publishers, the hub, the sinks and the API build messages here and nowhere else, so a field is
added once and stays the same in JSON, in the binary variant's header, in the REST answers and
on every output.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from rtdetr_service.core.results import Alert, EventChange, Published, RuleAnswer, SessionSnapshot, SessionView
    from rtdetr_service.core.types import Detection, FrameResult, ModelInfo, StreamInfo

# The outputs' message formats; a change that could break a consumer gets a new name (v2).
EVENT_SCHEMA = "rtdetr.event.v1"
ALERT_SCHEMA = "rtdetr.alert.v1"
DETECTIONS_SCHEMA = "rtdetr.detections.v1"
ANSWER_SCHEMA = "rtdetr.answer.v1"


def dumps(message: dict) -> str:
    return json.dumps(message, separators=(",", ":"))


def frame_header(session_id: str, result: FrameResult, detections: Sequence[Detection]) -> dict:
    """The `frame_result` message without its picture."""
    return {
        "type": "frame_result",
        "session_id": session_id,
        "timestamp": result.timestamp,
        "frame_index": result.index,
        "detections": [d.as_dict() for d in detections],
    }


def frame_json(header: dict, jpeg: bytes | None) -> str:
    """The spec's JSON form: the JPEG base64-encoded in `annotated_frame` (null without drawing)."""
    return dumps(dict(header, annotated_frame=base64.b64encode(jpeg).decode() if jpeg else None))


def frame_binary(header: dict, jpeg: bytes | None) -> bytes:
    """4-byte big-endian header length, JSON header, then the JPEG bytes (see docs/api.md)."""
    head = dumps(header).encode()
    return struct.pack(">I", len(head)) + head + (jpeg or b"")


def split_frame_binary(data: bytes) -> tuple[dict, bytes | None]:
    """The header and the JPEG (None when drawing is off) of a `frame_binary` message."""
    if len(data) < 4:
        raise ValueError("a binary frame starts with a 4-byte header length")
    (length,) = struct.unpack(">I", data[:4])
    if 4 + length > len(data):
        raise ValueError("a binary frame's header runs past its end")
    return json.loads(data[4 : 4 + length]), data[4 + length :] or None


def alert_message(session_id: str, alert: Alert) -> dict:
    return {"type": "alert", "session_id": session_id, "timestamp": alert.timestamp, "data": alert.as_data()}


def answer_message(session_id: str, answer: RuleAnswer) -> dict:
    """A rule's question answered by the vision-language model, for the viewers (untrusted words:
    shown as text, never as markup)."""
    return {"type": "answer", "session_id": session_id, "timestamp": answer.time, "data": answer.as_data()}


def status_message(snapshot: SessionSnapshot) -> dict:
    return {
        "type": "status",
        "session_id": snapshot.session_id,
        "state": snapshot.state,
        "paused": snapshot.paused,
        "stats": snapshot.stats.as_dict(),
        "last_error": snapshot.last_error,
        "counts": snapshot.counts,
        "events_open": snapshot.stats.events_open,
    }


def zones_message(session_id: str, zones: dict) -> dict:
    return {"type": "zones", "session_id": session_id, "zones": zones}


def stopped_message(session_id: str, reason: str) -> dict:
    return {"type": "session_stopped", "session_id": session_id, "reason": reason}


def stream_info_message(
    snapshot: SessionSnapshot, stream: StreamInfo | None, model: ModelInfo, *, enable_drawing: bool, zones: dict
) -> dict:
    info = stream.as_dict() if stream else {"width": 0, "height": 0, "fps": 0.0, "codec": ""}
    return {
        "type": "stream_info",
        "session_id": snapshot.session_id,
        **info,
        "state": snapshot.state,
        "paused": snapshot.paused,
        "enable_drawing": enable_drawing,
        "class_names": list(model.class_names),
        "model": model.as_dict(),
        "warning": model.warning,
        "zones": zones,
    }


def recorded_stream_info(
    session_id: str, state: str, model: ModelInfo | None, *, enable_drawing: bool, zones: dict
) -> dict:
    """The `stream_info` of a session no replica describes right now (it is moving, or waits for a
    place): what the store knows, the stream's size unknown (0) until its `stream_info` comes."""
    return {
        "type": "stream_info",
        "session_id": session_id,
        "width": 0,
        "height": 0,
        "fps": 0.0,
        "codec": "",
        "state": state,
        "paused": False,
        "enable_drawing": enable_drawing,
        "class_names": list(model.class_names) if model is not None else [],
        "model": model.as_dict() if model is not None else None,
        "warning": model.warning if model is not None else None,
        "zones": zones,
    }


# -- the outputs (webhook, MQTT, Kafka) ---------------------------------------------------------


def clip_fields(event_id: str, has_clip: bool) -> dict:
    """`has_clip` and `clip_url` (relative to the API's base; null without a clip) of an event document."""
    return {"has_clip": has_clip, "clip_url": f"/api/v1/events/{event_id}/clip.mp4" if has_clip else None}


def output_event(view: SessionView, change: EventChange) -> dict:
    """`rtdetr.event.v1`: one event change, with the record before it (null when new) and after. An event
    of a session that records has a clip (its segments around it are kept while it lasts). The update
    that brings an ended event's `global_id` carries its appearance vector when OUTPUT_EMBEDDINGS is on."""
    before = change.before
    message = {
        "schema": EVENT_SCHEMA,
        "type": change.kind,
        "session_id": view.session_id,
        "camera": view.camera,
        "before": before.as_dict() | clip_fields(before.id, view.records) if before is not None else None,
        "after": change.event.as_dict() | clip_fields(change.event.id, view.records),
    }
    if change.embedding is not None:
        message["embedding"] = {"model_id": change.embedding.model_id, "vector": list(change.embedding.vector)}
    return message


def output_alert(view: SessionView, alert: Alert) -> dict:
    """`rtdetr.alert.v1`: one alert."""
    return {
        "schema": ALERT_SCHEMA,
        "session_id": view.session_id,
        "camera": view.camera,
        "timestamp": alert.timestamp,
        "alert": alert.as_data(),
    }


def output_answer(view: SessionView, answer: RuleAnswer) -> dict:
    """`rtdetr.answer.v1`: the answer to the question a rule asked when it fired (`ask`)."""
    return {
        "schema": ANSWER_SCHEMA,
        "session_id": view.session_id,
        "camera": view.camera,
        "timestamp": answer.time,
        "answer": answer.as_data(),
    }


def output_detections(view: SessionView, result: FrameResult) -> dict:
    """`rtdetr.detections.v1`: one frame's detections, boxes in source pixels, with track ids
    (null until the tracker has confirmed one)."""
    width, height = result.size
    return {
        "schema": DETECTIONS_SCHEMA,
        "session_id": view.session_id,
        "camera": view.camera,
        "frame_index": result.index,
        "timestamp": result.timestamp,
        "width": width,
        "height": height,
        "detections": [d.as_dict() for d in result.detections],
    }


def output_messages(item: Published) -> list[dict]:
    """The event, alert and answer messages of one published step: its event changes, its alerts,
    then the answers to its rules' questions."""
    view = item.session
    return (
        [output_event(view, c) for c in item.events]
        + [output_alert(view, a) for a in item.alerts]
        + [output_answer(view, a) for a in item.answers]
    )


# -- the bus between replicas (outputs/bus/) ----------------------------------------------------


def presence_message(replica: str, viewers: dict[str, int], ttl_s: float) -> dict:
    """A replica's remote viewers: every session it relays, with its local viewer count. The whole
    set each time, so a session missing from it has no viewer there any more."""
    return {"type": "presence", "replica": replica, "ttl_s": ttl_s, "sessions": dict(viewers)}


def control_request(action: str) -> dict:
    """A viewer's control message (`pause`, `resume`, `stop`), on its way to the session's owner."""
    return {"type": "control", "action": action}


def control_reply(error: str | None) -> dict:
    """The owner's answer to a control request: `ok`, or the error in words."""
    return {"type": "control_reply", "ok": error is None, "detail": error}


def moving_message(session_id: str, detail: str) -> dict:
    """A `status` for the viewers of a session that changes replica: they stay connected, and frames
    resume once the replica that takes it over runs it (its own `status` messages say `running`)."""
    return {
        "type": "status",
        "session_id": session_id,
        "state": "moving",
        "paused": False,
        "stats": None,
        "last_error": detail,
        "counts": None,
        "events_open": None,
    }


def error_message(detail: str) -> dict:
    """An error a viewer is told in words (shown by the viewer page)."""
    return {"type": "error", "detail": detail}
