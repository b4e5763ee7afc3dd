"""A session's options as a plain JSON document, and back: what the shared store keeps of a
session so that any replica can run it again (after a restart, a failover or a drain).

The document holds the options as they were resolved at start (defaults filled in from that
replica's settings), so a session resumed elsewhere runs as it was asked to run, whatever the
other replica's defaults. The stream URL is kept as given, credentials included: the store is as
secret as the settings; it is never logged or returned from here (see `redact_url`). The viewer
token is kept beside the document, as is (not a hash): any replica must be able to give an
API-key holder a session's viewer path, as the session list does, and a store that leaks holds
the cameras' own credentials, which are worth more than a view of their pictures.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from rtdetr_service.analytics.alerts import AlertRule
from rtdetr_service.analytics.tracking import TrackerOptions
from rtdetr_service.core.vlm import DescribeOptions
from rtdetr_service.outputs.recordings.settings import RECORD_MODES
from rtdetr_service.sessions.session import SessionOptions

VERSION = 1  # of the document; a newer one is refused in words, not half read


def options_to_record(options: SessionOptions) -> dict[str, Any]:
    """The options as a JSON-ready dict."""
    rule = options.alert_rule
    return {
        "version": VERSION,
        "stream_url": options.stream_url,
        "enable_drawing": options.enable_drawing,
        "confidence_threshold": options.confidence_threshold,
        "classes": sorted(options.classes) if options.classes is not None else None,
        "alert": None
        if rule is None
        else {
            "classes": sorted(rule.classes),
            "min_confidence": rule.min_confidence,
            "cooldown_s": rule.cooldown_s,
            "zones": [np.asarray(zone, dtype=np.float64).tolist() for zone in rule.zones],
        },
        "jpeg_quality": options.jpeg_quality,
        "camera": options.camera,
        "zones": options.zones,
        "tracking": dataclasses.asdict(options.tracking),
        "record": options.record,
        "describe": _describe_to_record(options.describe),
    }


def _describe_to_record(describe: DescribeOptions | None) -> dict | None:
    if describe is None:
        return None
    labels = sorted(describe.labels) if describe.labels is not None else None
    return {"labels": labels, "prompt": describe.prompt, "after_s": describe.after_s}


def _describe_from_record(value: Any) -> DescribeOptions | None:
    """Recorded before sessions could be described (no key): they were not, and go on so."""
    if value is None:
        return None
    labels, after_s = value["labels"], value["after_s"]
    return DescribeOptions(
        labels=frozenset(str(label) for label in labels) if labels is not None else None,
        prompt=str(value["prompt"]) if value["prompt"] is not None else None,
        after_s=float(after_s) if after_s is not None else None,
    )


def record_mode(value: Any) -> str:
    """A record mode as the store keeps it; ValueError in words for any other value."""
    if value not in RECORD_MODES:
        raise ValueError(f"session record's record mode {value!r} is not one of {', '.join(RECORD_MODES)}")
    return value


def options_from_record(record: dict[str, Any]) -> SessionOptions:
    """The options a record holds; ValueError in words for a document this code cannot read."""
    if not isinstance(record, dict):
        raise ValueError("a session record must be a JSON object")
    version = record.get("version")
    if version != VERSION:
        raise ValueError(f"session record version {version!r} is not {VERSION}: written by another version")
    try:
        alert = record["alert"]
        rule = (
            None
            if alert is None
            else AlertRule(
                classes=frozenset(alert["classes"]),
                min_confidence=float(alert["min_confidence"]),
                cooldown_s=float(alert["cooldown_s"]),
                zones=tuple(np.asarray(zone, dtype=np.float64) for zone in alert["zones"]),
            )
        )
        classes = record["classes"]
        return SessionOptions(
            stream_url=str(record["stream_url"]),
            enable_drawing=bool(record["enable_drawing"]),
            confidence_threshold=float(record["confidence_threshold"]),
            classes=frozenset(classes) if classes is not None else None,
            alert_rule=rule,
            jpeg_quality=int(record["jpeg_quality"]),
            camera=record["camera"],
            zones=record["zones"],
            tracking=TrackerOptions(**record["tracking"]),
            # Recorded before sessions could record: they did not, and go on so.
            record=record_mode(record.get("record", "off")),
            describe=_describe_from_record(record.get("describe")),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"session record is missing or mistypes {exc}") from None
