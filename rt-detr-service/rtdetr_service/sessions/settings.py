"""What sessions and their manager read: limits, per-session defaults, the stream settings, and
how this replica names itself among others."""

from __future__ import annotations

import functools
import re
import secrets
import socket
from urllib.parse import urlsplit

from pydantic import ConfigDict, Field, SecretStr, field_validator

from rtdetr_service.core.config import SettingsModel
from rtdetr_service.ingest.settings import StreamSettings


class SessionSettings(StreamSettings):
    """How many sessions, and what a start call gets when it says nothing; upper-case in the environment."""

    max_sessions: int = Field(16, ge=1, le=256, description="Concurrent sessions; more is refused with 429.")
    max_opens: int = Field(
        8, ge=1, le=256, description="Streams opened at once (start calls waiting on a camera); more get 429."
    )
    default_confidence: float = Field(
        0.5, ge=0.0, le=1.0, description="Detection threshold when a start call sets none."
    )
    jpeg_quality: int = Field(75, ge=1, le=100, description="Default JPEG quality of annotated frames.")
    track_min_hits: int = Field(2, ge=2, le=30, description="Default frames a track needs before it gets an id.")
    track_keep_s: float = Field(
        1.0, ge=0.0, le=60.0, description="Default time a lost track is kept, by frame timestamps."
    )
    track_iou: float = Field(0.1, ge=0.01, le=0.99, description="Default least IoU to match a box to a track.")
    event_end_after_s: float = Field(
        5.0, ge=0.5, le=600.0, description="An object unseen this long has left: its event ends."
    )
    event_track_hz: float = Field(
        5.0,
        ge=0.0,
        le=30.0,
        description="Track points (box, confidence, zones) kept per second of an event's life; 0 = no track.",
    )
    event_track_max_points: int = Field(
        3000,
        ge=10,
        le=100_000,
        description="Track points kept per event; past it the track is thinned evenly and its rate halved.",
    )


_REPLICA_ID = re.compile(r"[A-Za-z0-9._-]{1,63}")
_BUS_SCHEMES = ("nats", "tls")


@functools.cache
def default_replica_id() -> str:
    """This process's replica id, made once: the host name (odd characters as '-', cut to fit) and 24
    random bits, so that two replicas on one host, or a pod and its restart, are told apart."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:56] or "replica"
    return f"{host}-{secrets.token_hex(3)}"


class ClusterSettings(SettingsModel):
    """How this replica names itself and shares sessions with others; upper-case in the environment."""

    # A refused BUS_URL may hold a password: errors say why, never what was given.
    model_config = ConfigDict(hide_input_in_errors=True)

    replica_id: str = Field(
        default_factory=default_replica_id,
        description="This replica's name (1-63 letters, digits, `-`, `.`, `_`) in logs, and as a session's owner.",
        json_schema_extra={"shown_default": "the host name + `-` + 6 random hex digits"},
    )
    session_lease_s: float = Field(
        10.0,
        ge=3,
        le=300,
        description="How long a replica owns a session without renewing; another takes it over after that.",
    )
    bus_url: SecretStr = Field(
        SecretStr(""),
        description="NATS server replicas relay viewers through, nats:// or tls:// (never logged); empty = none.",
    )

    @field_validator("replica_id")
    @classmethod
    def _replica_id_fits(cls, value: str) -> str:
        if not _REPLICA_ID.fullmatch(value):
            raise ValueError("REPLICA_ID must be 1 to 63 letters, digits, '-', '.' or '_'")
        return value

    @field_validator("bus_url")
    @classmethod
    def _nats_url(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        if not url:
            return value
        # Only the scheme is ever repeated: the rest may hold credentials.
        scheme, sep, _ = url.partition("://")
        if not sep or scheme.lower() not in _BUS_SCHEMES:
            given = f", not {scheme}://" if sep and len(scheme) <= 16 and scheme.isalnum() else ""
            raise ValueError(f"BUS_URL must start with nats:// or tls:// (a NATS server){given}")
        try:
            host = urlsplit(url).hostname
        except ValueError:
            host = None
        if not host:
            raise ValueError("BUS_URL names no host: write it as nats://host:4222")
        return value
