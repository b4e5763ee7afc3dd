"""Real examples for docs/api.md and docs/websocket.md: run the service, tour its API, write what came back.

The service runs in this process the way the integration tests run it: a real uvicorn on a free
port, the GStreamer RTSP test camera, and `tests/scripted_detector.WalkingPeople` in place of the
model (two people walk left to right every 5 s), so that tracking, zones, rules, alerts, events,
snapshots and counts have something real to say. Everything after the detector is the production
code.

    PYTHONPATH=rt-detr-service:tests .venv/bin/python scripts/api_examples.py --out /tmp/api-examples.json

The output maps an example name to {"kind", "request", "status", "body"} (or, for WebSocket
messages, the message as "body"); docs/api.md and docs/websocket.md mark each response example with
`<!-- example: NAME -->`, and tests/integration/test_api_examples.py runs `tour()` and checks
every such example against the real answer, key by key.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT / "rt-detr-service", ROOT / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import httpx  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

CAMERA = "front-door"
ZONES = {
    "units": "normalized",
    "zones": [{"name": "right-half", "points": [[0.5, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 1.0]]}],
    # Drawn bottom to top: walking left to right crosses it "in".
    "lines": [{"name": "middle", "a": [0.5, 1.0], "b": [0.5, 0.0]}],
    "rules": [
        {"name": "someone-right", "kind": "enter", "zone": "right-half", "classes": ["person"], "min_confidence": 0.5},
        {"name": "lingering", "kind": "dwell", "zone": "right-half", "dwell_s": 1.0},
        {"name": "passing", "kind": "cross", "line": "middle", "direction": "in"},
        {"name": "crowd", "kind": "occupancy", "zone": "right-half", "min_count": 2},
    ],
}
# The same zones in pixels of the 320x240 test camera, plus a line drawn left to right (moving
# down the picture crosses it "in") and a rule on it.
ZONES_PIXELS = {
    "units": "pixels",
    "zones": [{"name": "right-half", "points": [[160, 0], [320, 0], [320, 240], [160, 240]]}],
    "lines": [{"name": "middle", "a": [160, 240], "b": [160, 0]}, {"name": "kerb", "a": [0, 200], "b": [320, 200]}],
    "rules": [
        {"name": "someone-right", "kind": "enter", "zone": "right-half", "classes": ["person"], "min_confidence": 0.5},
        {"name": "passing", "kind": "cross", "line": "middle", "direction": "in"},
        {"name": "onto-the-road", "kind": "cross", "line": "kerb", "direction": "in", "classes": ["person"]},
    ],
}
ALERT_KINDS = ("detection", "enter", "dwell", "cross", "occupancy")
# What the tour's service runs with beyond the tests' defaults: events end a second after the walker
# left, and segments are short, so an event's clip is on record (has_clip) by the time it ends.
SETTINGS = {"event_end_after_s": 1.0, "record_segment_s": 1.0}


def _shorten(message: dict) -> dict:
    """A frame_result with its base64 JPEG cut to a few characters."""
    frame = message.get("annotated_frame")
    if isinstance(frame, str) and len(frame) > 24:
        message = dict(message, annotated_frame=frame[:16] + f"…({len(frame)} chars)")
    return message


class Tour:
    """Performs requests and keeps each answer under a name."""

    def __init__(self, service) -> None:
        self.service = service
        self.records: dict[str, dict] = {}
        self.client = httpx.Client(base_url=service.base_url, timeout=30)
        self.key = {"apikey": service.api_key}

    def http(self, name: str | None, method: str, path: str, *, auth: bool = True, **kwargs) -> httpx.Response:
        headers = dict(self.key if auth else {}, **kwargs.pop("headers", {}))
        response = self.client.request(method, path, headers=headers, **kwargs)
        if name is not None:
            request = {"method": method, "path": path}
            for field in ("params", "json"):
                if kwargs.get(field) is not None:
                    request[field] = kwargs[field]
            is_json = response.headers.get("content-type", "").startswith("application/json")
            body = response.json() if is_json else None
            kind = "error" if response.status_code >= 400 else "http"
            self.records[name] = {"kind": kind, "request": request, "status": response.status_code, "body": body}
        return response

    def ws_message(self, name: str, path: str, message: dict) -> None:
        self.records[name] = {"kind": "ws", "request": {"websocket": path}, "body": message}

    def ws_close(self, name: str, path: str) -> None:
        """Connect and record how the server closes (code and reason)."""
        with connect(self.service.ws_base + path, open_timeout=10) as ws:
            try:
                while True:
                    ws.recv(timeout=10)
            except ConnectionClosed as closed:
                code, reason = closed.rcvd.code, closed.rcvd.reason
        self.records[name] = {
            "kind": "ws_close",
            "request": {"websocket": path},
            "body": {"code": code, "reason": reason},
        }

    def close(self) -> None:
        self.client.close()


def _ws_messages(ws, seconds: float):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        raw = ws.recv(timeout=max(0.1, min(5.0, deadline - time.monotonic())))
        yield raw if isinstance(raw, bytes) else json.loads(raw)


def _until(ws, kind: str, seconds: float) -> dict | None:
    for message in _ws_messages(ws, seconds):
        if isinstance(message, dict) and message["type"] == kind:
            return message
    return None


def _wait(condition, seconds: float, step: float = 0.25):
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(step)


def tour(service, stream_url: str, *, watch_s: float = 20.0) -> dict[str, dict]:
    """Take the tour against a running service whose detector is WalkingPeople(rows=2); return the
    records by name. Bounded: about 15 s on a CPU, `watch_s` at most for the WebSocket part."""
    t = Tour(service)
    try:
        return _tour(t, stream_url, watch_s)
    finally:
        t.close()


def _tour(t: Tour, stream_url: str, watch_s: float) -> dict[str, dict]:
    from support import free_port

    t.http("health", "GET", "/health", auth=False)

    start_body = {
        "stream_url": stream_url,
        "camera": CAMERA,
        "enable_drawing": True,
        "confidence_threshold": 0.5,
        "classes": ["person", "car"],
        "alert": {"classes": ["person"], "min_confidence": 0.5, "cooldown_s": 10.0},
        "jpeg_quality": 75,
        "zones": ZONES,
        "tracking": {"min_hits": 2, "keep_s": 0.5, "iou_threshold": 0.1},
        "record": "events",
    }
    started = t.http("start", "POST", "/api/v1/video/start", json=start_body)
    started.raise_for_status()
    session_id = started.json()["session_id"]
    ws_path = started.json()["websocket_path"]
    base = f"/api/v1/video/sessions/{session_id}"
    t.http("zones_get", "GET", f"{base}/zones")

    # -- one JSON viewer: stream info, frames with tracked objects, every kind of alert, status ----------
    with connect(t.service.ws_base + ws_path, open_timeout=10) as ws:
        t.ws_message("ws_stream_info", ws_path, json.loads(ws.recv(timeout=10)))
        alerts: dict[str, dict] = {}
        frame = status = None
        for message in _ws_messages(ws, watch_s):
            kind = message["type"]
            if kind == "frame_result" and frame is None:
                if any(d["track_id"] is not None for d in message["detections"]):
                    frame = _shorten(message)
            elif kind == "alert":
                alerts.setdefault(message["data"]["kind"], message)
            elif kind == "status" and message["events_open"] and message["counts"]["rules"].get("passing"):
                status = message
            if frame and status and all(k in alerts for k in ALERT_KINDS):
                break
        if frame:
            t.ws_message("ws_frame_result", ws_path, frame)
        if status:
            t.ws_message("ws_status", ws_path, status)
        for kind, message in alerts.items():
            t.ws_message(f"ws_alert_{kind}", ws_path, message)

        # the REST views while someone watches and the walkers are counted
        t.http("status", "GET", f"/api/v1/video/status/{session_id}")
        t.http("sessions", "GET", "/api/v1/video/sessions")
        t.http("counts", "GET", f"{base}/counts")

        # a control message the server does not understand
        ws.send(json.dumps({"type": "control", "action": "rewind"}))
        error = _until(ws, "error", 10)
        if error:
            t.ws_message("ws_error", ws_path, error)

        # replacing the zones: the answer, and the `zones` message every viewer gets
        t.http("zones_put", "PUT", f"{base}/zones", json=ZONES_PIXELS)
        zones = _until(ws, "zones", 10)
        if zones:
            t.ws_message("ws_zones", ws_path, zones)

    # -- a binary viewer: one frame_result as header + JPEG ---------------------------------------------
    with connect(t.service.ws_base + ws_path + "&format=binary", open_timeout=10) as ws:
        for message in _ws_messages(ws, 10):
            if isinstance(message, bytes):
                (n,) = struct.unpack(">I", message[:4])
                header = json.loads(message[4 : 4 + n])
                jpeg = message[4 + n :]
                body = {"header_length": n, "header": header, "jpeg_bytes": len(jpeg), "jpeg_starts": jpeg[:3].hex()}
                t.ws_message("ws_frame_binary", ws_path + "&format=binary", body)
                break

    # -- refused viewers ------------------------------------------------------------------------------
    t.ws_close("ws_close_bad_token", f"/ws/stream/{session_id}?token=wrong")
    t.ws_close("ws_close_unknown_session", "/ws/stream/no-such-session?token=x")
    t.ws_close("ws_close_bad_format", ws_path + "&format=xml")

    # -- events -----------------------------------------------------------------------------------------
    def ended_with_snapshot():
        events = t.http(None, "GET", "/api/v1/events", params={"session_id": session_id, "limit": 500}).json()
        done = [e for e in events["events"] if not e["active"] and e["has_snapshot"] and e["has_clip"]]
        return done[0] if done and len(events["events"]) >= 2 else None

    ended = _wait(ended_with_snapshot, 20)
    listed = t.http("events_list", "GET", "/api/v1/events", params={"session_id": session_id, "limit": 1})
    cursor = listed.json()["next_cursor"]
    if cursor:
        t.http("events_next", "GET", "/api/v1/events", params={"session_id": session_id, "limit": 1, "cursor": cursor})
    if ended:
        event_id = ended["id"]
        t.http(
            "events_filtered",
            "GET",
            "/api/v1/events",
            params={
                "camera": CAMERA,
                "zone": "right-half",
                "label": "person",
                "after": int(ended["start_time"]),
                "before": int(ended["start_time"]) + 60,
                "limit": 10,
            },
        )
        t.http("event_get", "GET", f"/api/v1/events/{event_id}")
        t.http("event_track", "GET", f"/api/v1/events/{event_id}/track")
        snap = t.http(None, "GET", f"/api/v1/events/{event_id}/snapshot.jpg")
        t.records["snapshot"] = {
            "kind": "headers",
            "request": {"method": "GET", "path": f"/api/v1/events/{event_id}/snapshot.jpg"},
            "status": snap.status_code,
            "body": {
                "content-type": snap.headers.get("content-type"),
                "content-length": snap.headers.get("content-length"),
                "cache-control": snap.headers.get("cache-control"),
                "jpeg_starts": snap.content[:3].hex(),
            },
        }
        # A snapshot file removed from disk (retention does that) answers snapshot_not_found.
        path = t.service.app.state.event_store.snapshot_path(event_id)
        if path is not None:
            path.unlink()
            t.http("error_snapshot_not_found", "GET", f"/api/v1/events/{event_id}/snapshot.jpg")
        t.http("event_delete", "DELETE", f"/api/v1/events/{event_id}")
        t.http("error_event_not_found", "GET", f"/api/v1/events/{event_id}")
    t.http("error_invalid_cursor", "GET", "/api/v1/events", params={"cursor": "not-a-cursor"})
    t.http("error_after_before", "GET", "/api/v1/events", params={"after": 1763900100, "before": 1763900000})
    t.http("error_limit", "GET", "/api/v1/events", params={"limit": 0})

    # -- recording, changed while the session runs ----------------------------------------------------------
    t.http("record_put", "PUT", f"{base}/record", json={"record": "continuous"})

    # -- outputs, readiness, metrics --------------------------------------------------------------------
    t.http("outputs", "GET", "/api/v1/outputs")
    t.http("ready", "GET", "/ready", auth=False)
    metrics = t.http(None, "GET", "/metrics", auth=False).text
    names = sorted({line.split()[2] for line in metrics.splitlines() if line.startswith("# TYPE rtdetr_")})
    t.records["metrics"] = {"kind": "metrics", "request": {"method": "GET", "path": "/metrics"}, "body": names}

    # -- errors -----------------------------------------------------------------------------------------
    t.http("error_unauthorized", "GET", "/api/v1/video/sessions", auth=False)
    t.http("error_session_not_found", "GET", "/api/v1/video/status/no-such-session")
    t.http("error_not_found", "GET", "/api/v1/nothing-here")
    t.http("error_unsupported_url", "POST", "/api/v1/video/start", json={"stream_url": "http://example.com/cam"})
    t.http(
        "error_invalid_request",
        "POST",
        "/api/v1/video/start",
        json={"stream_url": stream_url, "confidence_threshold": 2, "tracking": {"min_hits": 1}},
    )
    t.http(
        "error_unknown_class", "POST", "/api/v1/video/start", json={"stream_url": stream_url, "classes": ["unicorn"]}
    )
    t.http(
        "error_invalid_json",
        "POST",
        "/api/v1/video/start",
        content=b'{"stream_url": ',
        headers={"content-type": "application/json"},
    )
    bad_zones = {"zones": ZONES["zones"], "rules": [{"name": "r", "kind": "enter", "zone": "left-half"}]}
    t.http("error_invalid_zones", "PUT", f"{base}/zones", json=bad_zones)
    t.http(
        "error_invalid_zones_pixels",
        "POST",
        "/api/v1/video/start",
        json={
            "stream_url": stream_url,
            "zones": {"units": "pixels", "zones": [{"name": "z", "points": [[0, 0], [640, 0], [0, 480]]}]},
        },
    )
    t.http("error_body_too_large", "POST", "/api/v1/video/start", json={"stream_url": "rtsp://h/" + "a" * 300_000})
    t.records["error_body_too_large"]["request"]["json"] = {"stream_url": "rtsp://h/aaaa…(300000 characters)"}
    port = free_port()  # nothing listens there
    t.http("error_stream_unavailable", "POST", "/api/v1/video/start", json={"stream_url": f"rtsp://127.0.0.1:{port}/x"})

    # -- stop, with a viewer watching -------------------------------------------------------------------
    with connect(t.service.ws_base + ws_path, open_timeout=10) as ws:
        ws.recv(timeout=10)  # stream_info
        t.http("stop", "POST", "/api/v1/video/stop", json={"session_id": session_id})
        try:
            stopped = _until(ws, "session_stopped", 10)
            if stopped:
                t.ws_message("ws_session_stopped", ws_path, stopped)
            ws.recv(timeout=10)
        except ConnectionClosed as closed:
            t.records["ws_close_stopped"] = {
                "kind": "ws_close",
                "request": {"websocket": ws_path},
                "body": {"code": closed.rcvd.code, "reason": closed.rcvd.reason},
            }
    t.http("error_stop_again", "DELETE", f"/api/v1/video/sessions/{session_id}")
    return t.records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the JSON here (default: stdout)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    from scripted_detector import WalkingPeople
    from support import RtspCamera, free_port, make_settings, run_service
    from tiny_model import build as build_tiny_model

    with tempfile.TemporaryDirectory(prefix="api-examples-") as tmp:
        model_dir = build_tiny_model(Path(tmp) / "tiny-rtdetr-v2")
        camera = RtspCamera(free_port())
        camera.start()
        try:
            settings = make_settings(model_dir, data_dir=Path(tmp) / "data", **SETTINGS)
            detector = WalkingPeople(rows=2)
            service = run_service(settings, detector_factory=lambda _settings: detector)
            try:
                records = tour(service, camera.url)
            finally:
                service.stop()
        finally:
            camera.stop()
    text = json.dumps(records, indent=2, ensure_ascii=False)
    if args.out:
        Path(args.out).write_text(text + "\n")
        print(f"{len(records)} examples written to {args.out}", file=sys.stderr)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
