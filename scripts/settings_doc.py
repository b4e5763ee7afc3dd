"""docs/settings.md, written from the Settings class: every field's env name, type, default, bounds and description.

The descriptions live on the fields (`Field(description=...)`); this script only arranges them in
groups and adds each group's notes. A field whose annotation is a pydantic model is a group of
its own, read from `<FIELD>_<SUBFIELD>` variables (`KAFKA_BOOTSTRAP_SERVERS` →
`settings.kafka.bootstrap_servers`). Secrets' defaults are never shown.

    PYTHONPATH=rt-detr-service .venv/bin/python scripts/settings_doc.py          # = make settings-doc
    PYTHONPATH=rt-detr-service .venv/bin/python scripts/settings_doc.py --check  # exit 1 when it drifted

tests/unit/test_settings_doc.py fails when docs/settings.md differs from what this writes.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "rt-detr-service") not in sys.path:
    sys.path.insert(0, str(ROOT / "rt-detr-service"))

DOC = ROOT / "docs" / "settings.md"
SECRET = "(secret)"

HEADER = """\
# Settings

<!-- Written by scripts/settings_doc.py from the Settings class (`make settings-doc`): edit the
     fields' descriptions, or the group notes in that script, and run it again. -->

Environment variables (or a `.env` file in the working directory), read by one
pydantic-settings class, `web/settings.py`, composed of the settings each floor declares beside
its code (`ingest/settings.py`, `inference/settings.py`, `outputs/settings.py`,
`sessions/settings.py`); a bad value stops the service with the key's name. `make run` and
`make serve` honour them, e.g. `DEVICE=cpu MAX_SESSIONS=4 make serve`. The `.env` may also hold
the compose stack's keys (`MEDIAMTX_*`, `MTX_*`, `KONG_*`, `COMPOSE_*`, `PUSH_*`, `RTSP_BIND`,
`CLIP`, `URL`); any other key the service does not know is named in a warning at start, since
it is most likely a typo.

Lists are comma-separated (`API_KEYS=key1,key2`). Paths are relative to the repository unless
absolute. A secret's default is shown as `(secret)`: empty until you set it, and its value is
never logged or shown. Per session, `POST /api/v1/video/start` also takes
`confidence_threshold`, `classes`, `alert`, `jpeg_quality`, `camera`, `zones` and `tracking`:
see [api.md](api.md).
"""


@dataclass(frozen=True)
class Group:
    """A section of the page: its title, its notes, and the settings it holds."""

    key: str  # a nested model's field name, or the prefix its flat fields share
    title: str
    intro: str
    names: tuple[str, ...] = ()  # flat fields that belong here besides those under `key_`


GROUPS = (
    Group(
        "access",
        "Access and the HTTP server",
        "`API_KEYS` is required unless `AUTH_DISABLED=true`; keys are visible ASCII without spaces, and "
        "`make run` generates one. `AUTH_DISABLED=true` is refused together with `API_KEYS`, and is only "
        "safe behind a gateway that authenticates (Kong). `/metrics` takes the key in the `apikey` / "
        "`X-API-Key` header, or as `Authorization: Bearer <key>` as Prometheus sends it. A body larger than "
        "`MAX_BODY_KB` gets `413` before it is parsed; a search picture (`POST /api/v1/events/search`) may be up "
        "to `SEARCH_IMAGE_MAX_KB`, and its pixel count is read from its header and bounded before it is decoded. "
        "See [security.md](security.md).",
        (
            "api_keys",
            "auth_disabled",
            "host",
            "port",
            "max_body_kb",
            "search_image_max_kb",
            "search_image_max_pixels",
            "metrics_require_key",
            "frontend_dir",
            "log_level",
            "log_format",
        ),
    ),
    Group(
        "model",
        "Model and inference",
        "`COMPILE=true` needs a C compiler (gcc) for Triton. `BACKEND=auto` runs TensorRT on an NVIDIA GPU "
        "when the `tensorrt` package is installed (else torch fp16), OpenVINO on a CPU (else torch); the "
        "choice and why are logged and in `/ready` (`model.backend`, `model.backend_reason`). "
        "`CPU_PRECISION=auto` is bf16 where the CPU has bf16 instructions (AVX512-BF16 or AMX; OpenVINO only, "
        "as OpenVINO itself defaults), else fp32; bf16 is ~1.7x faster than fp32 here and moves random-weight "
        "scores by up to 0.07. `CPU_THREADS=0` gives OpenVINO and ONNX Runtime every core the process may "
        "use, torch eager one less (its thread pool stalls when a decoder takes a core); the count is in "
        "`/ready` (`model.cpu_threads`) and on the viewer page. `MODEL_CACHE_DIR` keeps the exports keyed "
        "by weights, input size, backend, precision and versions. See [backends.md](backends.md).",
        (
            "model",
            "device",
            "half",
            "compile",
            "input_size",
            "backend",
            "cpu_precision",
            "model_cache_dir",
            "max_batch",
            "batch_wait_ms",
            "cpu_threads",
        ),
    ),
    Group(
        "embed",
        "Image–text embeddings (search)",
        "The encoder events are embedded with for search by words or by example, and for linking the same "
        "object across cameras. `EMBED_MODEL` is a folder saved with `save_pretrained` or a hub id already in "
        "the local cache (a start never downloads; `make models MODEL_VARIANT=siglip2-base` fetches the "
        "default). Without its weights the default runs on random weights, marked untrained and said loudly "
        "in the log; `EMBED_ENABLED=auto` then embeds nothing. `EMBED_DEVICE` unset follows `DEVICE`; "
        "`HALF`, `CPU_PRECISION` and `MODEL_CACHE_DIR` apply as for the detector. `EMBED_THREADS=0` gives "
        "OpenVINO and ONNX Runtime every core, torch one less. See [backends.md](backends.md#image-text-encoder).",
    ),
    Group(
        "vlm",
        "Vision-language model",
        "`VLM_PROVIDER=openai` speaks to any OpenAI-compatible chat-completions endpoint that takes images "
        "(Ollama, vLLM, llama.cpp's server, LM Studio, hosted APIs), images sent as base64 JPEG; "
        "`VLM_PROVIDER=transformers` runs `VLM_MODEL` on `VLM_DEVICE` (unset = `DEVICE`), a start never "
        "downloads (`make models` fetches the default). The keys in `VLM_API_KEYS` are a pool: each has its "
        "own QPS, RPM and in-flight limits, rests after a 429 (its `Retry-After`, else `VLM_COOLDOWN_S`), is "
        "disabled after a 401/403 (said in words in the status, never the key). Only 5xx, broken connections "
        "and timeouts are retried. A provider down at start stops nothing; the model's words are untrusted "
        "text, cut to `VLM_ANSWER_MAX_CHARS`. `POST /api/v1/ask` runs at most `ASK_CONCURRENCY` at once "
        "(more get `429 too_many_asks`), and holds at most `VLM_ASK_SHARE` of the provider's capacity.",
        ("ask_concurrency",),
    ),
    Group(
        "streams",
        "Streams",
        "The start call waits for the stream to open, at most `OPEN_TIMEOUT_S`. Opens run on at most "
        "`MAX_OPENS` threads of their own, apart from the pool that stop uses; more at once get "
        "`429 too_many_opens`. `RECONNECT_MAX_S` must be at least `RECONNECT_MIN_S`. "
        "`STREAM_ALLOWED_NETWORKS` takes e.g. `10.0.0.0/8,192.168.1.0/24`; setting `STREAM_DENIED_NETWORKS` "
        "replaces the whole default list. How the destination policy works: [security.md](security.md).",
        (
            "open_timeout_s",
            "read_timeout_s",
            "reconnect_min_s",
            "reconnect_max_s",
            "allowed_schemes",
            "stream_allowed_networks",
            "stream_denied_networks",
            "max_opens",
        ),
    ),
    Group(
        "sessions",
        "Sessions, viewers and tracking",
        "More than `MAX_SESSIONS` sessions is refused with `429`. A start call may set its own "
        "`confidence_threshold`, `jpeg_quality` and `tracking` (`min_hits`, `keep_s`, `iou_threshold`): "
        'these are the defaults. A viewer closed for stalling gets close code `4408` ("viewer stalled") '
        "and its slot is freed at once; one that does not take even the close frame within 5 s more is "
        "cut off.",
        (
            "max_sessions",
            "default_confidence",
            "jpeg_quality",
            "max_viewers",
            "viewer_stall_s",
            "track_min_hits",
            "track_keep_s",
            "track_iou",
        ),
    ),
    Group(
        "cluster",
        "Replicas",
        "What names this process among several replicas of the service. `REPLICA_ID` is in every JSON log "
        "line (`LOG_FORMAT=json`, see [deploy.md](deploy.md#logs)); left unset, each start makes a new one "
        "from the host name (a pod's name on Kubernetes). `SESSION_LEASE_S` and `BUS_URL` are read and "
        "checked, for the replicas that share sessions (issue 17); nothing uses them yet. `BUS_URL` "
        "takes `nats://` or `tls://` only, and its credentials are never logged or shown.",
        ("replica_id", "session_lease_s", "bus_url"),
    ),
    Group(
        "events",
        "Events and the alert log",
        "Events are kept in SQLite (`events.db`, WAL) under `DATA_DIR`, with their snapshots, or on a "
        "database server with `DATABASE_URL` (e.g. `postgresql+psycopg://user:pw@db/events`, never "
        "logged). Events older than `EVENT_RETENTION_DAYS` are deleted with their snapshots; snapshots "
        "beyond `SNAPSHOT_MAX_MB` are deleted oldest first (the events stay). Event changes beyond "
        "`EVENT_QUEUE_SIZE` are dropped and counted. Each event keeps its track (the object's boxes) at "
        "most `EVENT_TRACK_HZ` times a second; past `EVENT_TRACK_MAX_POINTS` it is thinned evenly and its "
        "rate halved. The alert log writes from a thread of its own. See [api.md](api.md#events).",
        (
            "events_enabled",
            "data_dir",
            "database_url",
            "event_end_after_s",
            "event_track_hz",
            "event_track_max_points",
            "event_retention_days",
            "snapshot_max_mb",
            "event_queue_size",
            "alert_log",
        ),
    ),
    Group(
        "record",
        "Recordings",
        "Sessions record the camera's own compressed packets (never re-encoded) into MP4 segments under "
        "`DATA_DIR/recordings/<camera>/<date>/`, indexed in the event store's database (recording needs "
        "`EVENTS_ENABLED`). A segment ends at the first keyframe after `RECORD_SEGMENT_S`, at a reconnect, "
        "or at `RECORD_SEGMENT_MAX_S` when the camera sends no keyframe (the video up to its next keyframe "
        "is then not recorded); `RECORD_SEGMENT_MAX_S` must be at least `RECORD_SEGMENT_S`. A start call's "
        "`record` overrides `RECORD`. In `events` mode a segment no event (widened by `RECORD_PRE_S` and "
        "`RECORD_POST_S`) overlaps is deleted once it ended `RECORD_PRE_S` ago and no event of its session "
        "is open. Every `RECORD_SWEEP_S`, segments past their age and the oldest beyond `RECORD_MAX_GB` go.",
        (),
    ),
    Group(
        "reid",
        "Embedding events and Re-ID",
        "With a vector index in the event store and an image encoder, every event is embedded on a thread of "
        "its own (`sink-embeddings`), never on the inference worker's: its best view and up to "
        "`EMBED_CROPS_PER_EVENT` more crops over its life, once early (after `EMBED_EARLY_S`, so live objects "
        "can be found) and again at its end (the crops averaged and normalised). Requests wait in a bounded "
        "queue, fair between sessions, while the encoder loads; past `EMBED_QUEUE_SIZE` the oldest of the "
        "busiest session is dropped, counted in `/metrics` (`sink` `embeddings`). At an end, Re-ID links the "
        "event to an earlier look of the same label (another camera, or the same one after a gap) started "
        "within `REID_WINDOW_S` before it, when the cosine similarity reaches `REID_THRESHOLD`; the event's "
        "`global_id` then follows its end as one more `update`. See [outputs.md](outputs.md#re-id-and-global_id). "
        "`POST /api/v1/events/reindex` embeds stored events that have no vector of the current encoder from "
        "their snapshots, `REINDEX_BATCH` at a time, on one thread that works `REINDEX_DUTY` of its time.",
        (
            "embed_crops_per_event",
            "embed_early_s",
            "embed_crop_px",
            "embed_queue_size",
            "output_embeddings",
            "reindex_batch",
            "reindex_duty",
        ),
    ),
    Group(
        "webhook",
        "Webhook output",
        "Every event change (`rtdetr.event.v1`: `type` new/update/end, `before`, `after`) and alert "
        "(`rtdetr.alert.v1`) is POSTed to each URL, signed: `X-Rtdetr-Signature: t=<unix>,v1=<hex "
        'HMAC-SHA256(secret, "<t>.<body>")>`; check it, and refuse an old `t` (a replay). '
        "`X-Rtdetr-Delivery` is the same on every retry of one message. Redirects are not followed, only "
        "the host is ever logged, and a 4xx is never retried. Drops are counted in `/metrics` and "
        "`/api/v1/outputs`. See [outputs.md](outputs.md#webhook).",
    ),
    Group(
        "mqtt",
        "MQTT output",
        "Topics: `<prefix>/events` (QoS 1), `<prefix>/<camera>/<label>` (tracked objects in view, "
        "retained), `<prefix>/<camera>/alerts` (QoS 1), `<prefix>/available` (`online` / `offline`, "
        "retained, also the last will), and `<prefix>/<camera>/detections` (`rtdetr.detections.v1`, QoS 0) "
        "when `MQTT_DETECTIONS_MAX_FPS` is above 0. `<camera>` is the session id when the session has no "
        "camera name. Give each instance its own `MQTT_CLIENT_ID`. While the broker is unreachable, "
        "messages are dropped (counted). See [outputs.md](outputs.md#mqtt).",
    ),
    Group(
        "kafka",
        "Kafka output",
        "A broker down at start does not stop the service: the output says `failing` in words until it "
        "can deliver. `KAFKA_QUEUE_SIZE` bounds the sink's queue and again the producer's "
        "(`queue.buffering.max.messages`), so memory stays bounded; `KAFKA_DELIVERY_TIMEOUT_S` is "
        "`message.timeout.ms`. `KAFKA_SASL_MECHANISM` is required with a `SASL_*` protocol and refused "
        "without one; `KAFKA_SASL_PASSWORD` is never logged or shown. See [outputs.md](outputs.md#kafka).",
    ),
)


@dataclass(frozen=True)
class Row:
    """One setting as the page shows it."""

    env: str
    info: FieldInfo


# -- reading the class ------------------------------------------------------------------------------------


def load_settings_class() -> type:
    """The service's Settings class (the top floor composes every floor's settings)."""
    from rtdetr_service.web.settings import Settings

    return Settings


def _model_of(info: FieldInfo) -> type[BaseModel] | None:
    """The pydantic model a field holds, when it is a nested group of settings."""
    annotation = info.annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _group_of(name: str) -> Group:
    """The group that names the setting, else the first whose key is its prefix."""
    for group in GROUPS:
        if name == group.key or name in group.names:
            return group
    for group in GROUPS:
        if name.startswith(f"{group.key}_"):
            return group
    raise ValueError(f"setting {name!r} is in no group: add it to GROUPS in scripts/settings_doc.py")


def grouped_rows(settings_cls: type[BaseModel]) -> list[tuple[Group, list[Row]]]:
    """Every setting with its env name, by group, in the order of GROUPS and then of the fields."""
    prefix = settings_cls.model_config.get("env_prefix", "")
    rows: dict[str, list[Row]] = {}
    for name, info in settings_cls.model_fields.items():
        group = _group_of(name)
        nested = _model_of(info)
        if nested is None:
            rows.setdefault(group.key, []).append(Row(f"{prefix}{name}".upper(), info))
            continue
        for sub, sub_info in nested.model_fields.items():
            rows.setdefault(group.key, []).append(Row(f"{prefix}{name}_{sub}".upper(), sub_info))
    return [(group, rows[group.key]) for group in GROUPS if group.key in rows]


# -- showing one field --------------------------------------------------------------------------------


def _is_secret(annotation: object) -> bool:
    if annotation is SecretStr:
        return True
    return any(_is_secret(arg) for arg in typing.get_args(annotation))


def type_words(annotation: object, plural: bool = False) -> str:
    """The type in words: `integer`, `one of a, b`, `list of networks`, ..."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_words(args[0], plural)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" if a != "" else '`""`' for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_words(a) for a in args if a is not type(None)) + " (optional)"
    if origin in (list, tuple, set, frozenset):
        return f"list of {type_words(args[0], plural=True)}" if args else "list"
    names = {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "text",
        Path: "path",
        SecretStr: "secret",
    }
    if annotation in names:
        word = names[annotation]
    else:
        name = getattr(annotation, "__name__", str(annotation))
        word = "network" if "Network" in name else name
    return f"{word}s" if plural and word not in ("text", "boolean") else word


def _value(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Path):
        return value.relative_to(ROOT).as_posix() if value.is_relative_to(ROOT) else value.as_posix()
    if isinstance(value, (list, tuple, set, frozenset)):
        return ",".join(_value(v) for v in value)
    return str(value)


def default_words(info: FieldInfo) -> str:
    """The default as a user would type it; a secret's never; one made at start in words."""
    if _is_secret(info.annotation):
        return SECRET
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if "shown_default" in extra:
        return f"({extra['shown_default']})"
    if info.default is not PydanticUndefined:
        value = info.default
    elif info.default_factory is not None:
        value = info.default_factory()
    else:
        return "(required)"
    shown = _value(value)
    return f"`{shown}`" if shown else "(empty)"


def bounds_words(info: FieldInfo) -> str:
    """The field's bounds: `1–65535`, `> 0, ≤ 120`, `multiple of 32`, `length ≤ 128`, a pattern."""
    found: dict[str, object] = {}
    for item in info.metadata:
        for attr in ("ge", "gt", "le", "lt", "multiple_of", "min_length", "max_length", "pattern"):
            value = getattr(item, attr, None)
            if value is not None and not isinstance(item, type):
                found[attr] = value
    words = []
    low = ("≥", found["ge"]) if "ge" in found else (">", found["gt"]) if "gt" in found else None
    high = ("≤", found["le"]) if "le" in found else ("<", found["lt"]) if "lt" in found else None
    if low and high and low[0] == "≥" and high[0] == "≤":
        words.append(f"{low[1]}–{high[1]}")
    else:
        words += [f"{bound[0]} {bound[1]}" for bound in (low, high) if bound]
    if "multiple_of" in found:
        words.append(f"multiple of {found['multiple_of']}")
    lengths = [found.get("min_length"), found.get("max_length")]
    if lengths[0] is not None and lengths[1] is not None:
        words.append(f"length {lengths[0]}–{lengths[1]}")
    elif lengths[1] is not None:
        words.append(f"length ≤ {lengths[1]}")
    elif lengths[0] is not None:
        words.append(f"length ≥ {lengths[0]}")
    if "pattern" in found:
        words.append(f"matches `{found['pattern']}`")
    return ", ".join(words)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def row_line(row: Row) -> str:
    info = row.info
    cells = (
        f"`{row.env}`",
        default_words(info),
        bounds_words(info),
        type_words(info.annotation),
        info.description or "",
    )
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


# -- the page -------------------------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    """Words of `text`, a code span with spaces kept as one (a line break inside it reads badly)."""
    words: list[str] = []
    for word in text.split():
        if words and words[-1].count("`") % 2:
            words[-1] += f" {word}"
        else:
            words.append(word)
    return words


def _wrap(text: str, width: int = 100) -> list[str]:
    lines, line = [], ""
    for word in _words(text):
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return [*lines, line] if line else lines


def render(settings_cls: type[BaseModel] | None = None) -> str:
    """The whole of docs/settings.md for `settings_cls` (the service's own by default)."""
    settings_cls = settings_cls or load_settings_class()
    out = [HEADER]
    for group, rows in grouped_rows(settings_cls):
        out += [f"## {group.title}", "", *_wrap(group.intro), ""]
        out += ["| variable | default | bounds | type | meaning |", "| --- | --- | --- | --- | --- |"]
        out += [row_line(row) for row in rows]
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say whether docs/settings.md is up to date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if DOC.read_text() != text:
            print(f"{DOC.relative_to(ROOT)} is out of date: run `make settings-doc`", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
