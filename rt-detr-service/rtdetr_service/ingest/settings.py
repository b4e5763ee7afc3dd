"""What the stream reader and the URL checks read: timeouts, reconnects, schemes, networks."""

from __future__ import annotations

from pydantic import Field, IPvAnyNetwork, field_validator, model_validator

from rtdetr_service.core.config import CommaList, SettingsModel

# Where no stream may come from: link-local (cloud metadata at 169.254.169.254 among them), other
# metadata services, "this host", multicast and broadcast. Loopback and private networks stay
# allowed: cameras and MediaMTX live there.
DEFAULT_DENIED_NETWORKS = (
    "0.0.0.0/8",
    "169.254.0.0/16",
    "100.100.100.200/32",
    "224.0.0.0/4",
    "255.255.255.255/32",
    "::/128",
    "fe80::/10",
    "fd00:ec2::254/128",
    "ff00::/8",
)
_NETWORK_SCHEMES = {"rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "srt"}


class StreamSettings(SettingsModel):
    """How streams are opened and kept; environment variables use the upper-case field names."""

    open_timeout_s: float = Field(10.0, gt=0, le=120, description="Bound on opening a stream.")
    read_timeout_s: float = Field(5.0, gt=0, le=120, description="A stream silent this long is reconnected.")
    reconnect_min_s: float = Field(0.5, gt=0, le=60, description="First reconnect delay.")
    reconnect_max_s: float = Field(10.0, gt=0, le=600, description="Cap of the exponential reconnect delay.")
    allowed_schemes: CommaList[str] = Field(
        default_factory=lambda: ["rtsp", "rtsps"],
        description="Stream URL schemes accepted (comma-separated); FFmpeg gets a matching protocol whitelist.",
    )
    stream_allowed_networks: CommaList[IPvAnyNetwork] = Field(
        default_factory=list,
        description="Comma-separated networks stream hosts may resolve to (empty = any not denied).",
    )
    stream_denied_networks: CommaList[IPvAnyNetwork] = Field(
        default_factory=lambda: list(DEFAULT_DENIED_NETWORKS),
        description="Comma-separated networks no stream may be opened from (default: link-local, metadata, multicast).",
    )

    @field_validator("allowed_schemes")
    @classmethod
    def _only_network_schemes(cls, value: list[str]) -> list[str]:
        lowered = [s.lower() for s in value]
        bad = sorted(set(lowered) - _NETWORK_SCHEMES)
        if bad:
            raise ValueError(f"ALLOWED_SCHEMES may only name network protocols, not {', '.join(bad)}")
        if not lowered:
            raise ValueError("ALLOWED_SCHEMES must name at least one scheme")
        return lowered

    @model_validator(mode="after")
    def _reconnect_delays_are_ordered(self) -> StreamSettings:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("RECONNECT_MAX_S must be >= RECONNECT_MIN_S")
        return self
