"""Service settings: one pydantic-settings class, read from the environment and `.env`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, IPvAnyNetwork, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[3]  # rt-detr-service/rtdetr_service/core/config.py
DEFAULT_MODEL = "models/rtdetr_v2_r18vd"
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
_KAFKA_TOPIC = r"^[A-Za-z0-9._-]{0,249}$"  # Kafka's legal topic names; empty = that topic is off


class Settings(BaseSettings):
    """Every knob of the service; environment variables use the upper-case field names."""

    # `.env` is shared with docker compose (MEDIAMTX_*, KONG_*, RTSP_BIND): like the environment,
    # it is read for this class's names only. Unknown keyword arguments are still refused.
    model_config = SettingsConfigDict(
        env_file=".env", dotenv_filtering="only_existing", extra="forbid", validate_default=True
    )

    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated API keys for the control routes (`apikey` / `X-API-Key` header).",
    )
    auth_disabled: bool = Field(
        False,
        description="Accept control calls without a key. Only behind a gateway that authenticates (Kong).",
    )
    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0 in containers).")
    port: int = Field(8080, ge=1, le=65535, description="HTTP port.")
    model: str = Field(
        DEFAULT_MODEL,
        description="Weights directory, hub id such as PekingU/rtdetr_v2_r18vd, or an ultralytics .pt file.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Inference device.")
    half: bool = Field(True, description="fp16 inference on CUDA (ignored on the CPU).")
    compile: bool = Field(False, description="torch.compile the model on CUDA (slow start, faster batches).")
    input_size: int = Field(640, ge=320, le=1280, multiple_of=32, description="Square model input size.")
    backend: Literal["auto", "torch", "openvino", "onnxruntime", "tensorrt"] = Field(
        "auto",
        description="Where the network runs; auto = TensorRT on NVIDIA (if installed, else torch), OpenVINO on a CPU.",
    )
    cpu_precision: Literal["fp32", "bf16", "auto"] = Field(
        "auto",
        description="CPU arithmetic: auto = bf16 (OpenVINO) where the CPU has it, else fp32; fp32 matches torch.",
    )
    model_cache_dir: Path = Field(
        REPO_ROOT / "models" / ".cache",
        description="Where exported models (ONNX, OpenVINO IR, TensorRT engines) are kept.",
    )
    max_sessions: int = Field(16, ge=1, le=256, description="Concurrent sessions; more is refused with 429.")
    max_batch: int = Field(32, ge=1, le=256, description="Most frames in one forward pass.")
    batch_wait_ms: float = Field(
        2.0, ge=0.0, le=50.0, description="How long the worker waits for more sessions' frames to fill a batch."
    )
    cpu_threads: int = Field(
        0,
        ge=0,
        le=256,
        description="CPU inference threads (0 = auto: all usable cores for OpenVINO/ONNX Runtime, one less for torch).",
    )
    open_timeout_s: float = Field(10.0, gt=0, le=120, description="Bound on opening a stream.")
    read_timeout_s: float = Field(5.0, gt=0, le=120, description="A stream silent this long is reconnected.")
    reconnect_min_s: float = Field(0.5, gt=0, le=60, description="First reconnect delay.")
    reconnect_max_s: float = Field(10.0, gt=0, le=600, description="Cap of the exponential reconnect delay.")
    default_confidence: float = Field(
        0.5, ge=0.0, le=1.0, description="Detection threshold when a start call sets none."
    )
    jpeg_quality: int = Field(75, ge=1, le=100, description="Default JPEG quality of annotated frames.")
    max_viewers: int = Field(16, ge=1, le=1000, description="WebSocket viewers per session.")
    allowed_schemes: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["rtsp", "rtsps"],
        description="Stream URL schemes accepted (comma-separated); FFmpeg gets a matching protocol whitelist.",
    )
    frontend_dir: Path = Field(REPO_ROOT / "frontend", description="Viewer page directory served at `/`.")
    max_body_kb: int = Field(
        256, ge=4, le=16384, description="Largest control request body (KiB); larger is refused before parsing."
    )
    track_min_hits: int = Field(2, ge=2, le=30, description="Default frames a track needs before it gets an id.")
    track_keep_s: float = Field(
        1.0, ge=0.0, le=60.0, description="Default time a lost track is kept, by frame timestamps."
    )
    track_iou: float = Field(0.1, ge=0.01, le=0.99, description="Default least IoU to match a box to a track.")
    events_enabled: bool = Field(True, description="Keep an event history (SQLite under DATA_DIR, or DATABASE_URL).")
    data_dir: Path = Field(REPO_ROOT / "data", description="Where the event database and snapshots live.")
    database_url: SecretStr = Field(
        SecretStr(""),
        description="SQLAlchemy URL of the event store, e.g. postgresql+psycopg://user:pw@host/db; empty = SQLite.",
    )
    event_end_after_s: float = Field(
        5.0, ge=0.5, le=600.0, description="An object unseen this long has left: its event ends."
    )
    event_retention_days: float = Field(30.0, gt=0, le=3650, description="Events older than this are deleted.")
    snapshot_max_mb: int = Field(
        2048, ge=1, le=10_000_000, description="Snapshots beyond this total are deleted, oldest first."
    )
    event_queue_size: int = Field(
        1024, ge=16, le=1_000_000, description="Event changes waiting for the store; beyond it they are dropped."
    )
    alert_log: bool = Field(True, description="Log every alert (one line each, written off the pipeline).")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    webhook_urls: SecretStr = Field(
        SecretStr(""),
        description="Comma-separated URLs that get every event change and alert as signed JSON; empty = off.",
    )
    webhook_secret: SecretStr = Field(
        SecretStr(""),
        description="HMAC-SHA256 key of the X-Rtdetr-Signature header; required when WEBHOOK_URLS is set.",
    )
    webhook_timeout_s: float = Field(5.0, gt=0, le=60, description="Bound on one webhook request.")
    webhook_max_retries: int = Field(
        3, ge=0, le=10, description="Retries of a 5xx, connection error or timeout (capped backoff); 4xx never."
    )
    webhook_queue_size: int = Field(
        1024, ge=1, le=1_000_000, description="Messages waiting per webhook URL; beyond it they are dropped."
    )
    mqtt_url: SecretStr = Field(
        SecretStr(""),
        description="MQTT broker, e.g. mqtt://user:password@host:1883 (mqtts:// for TLS); empty = off.",
    )
    mqtt_client_id: str = Field("", max_length=128, description="MQTT client id; empty = one chosen by the broker.")
    mqtt_topic_prefix: str = Field(
        "rtdetr", min_length=1, max_length=128, pattern=r"^[^#+\s]+$", description="First level of every MQTT topic."
    )
    mqtt_queue_size: int = Field(
        1024, ge=1, le=1_000_000, description="MQTT messages waiting to be sent; beyond it they are dropped."
    )
    mqtt_detections_max_fps: float = Field(
        0.0,
        ge=0.0,
        le=60.0,
        description="Per-frame detections on <prefix>/<camera>/detections, at most this many a second; 0 = off.",
    )
    kafka_bootstrap_servers: str = Field(
        "", max_length=2048, description="Kafka brokers to start from, e.g. kafka1:9092,kafka2:9092; empty = off."
    )
    kafka_detections_topic: str = Field(
        "detection-results",
        pattern=_KAFKA_TOPIC,
        description="Topic of every frame's detections (rtdetr.detections.v1); empty = not sent.",
    )
    kafka_events_topic: str = Field(
        "rtdetr-events", pattern=_KAFKA_TOPIC, description="Topic of event changes (rtdetr.event.v1); empty = not sent."
    )
    kafka_alerts_topic: str = Field(
        "rtdetr-alerts", pattern=_KAFKA_TOPIC, description="Topic of alerts (rtdetr.alert.v1); empty = not sent."
    )
    kafka_client_id: str = Field(
        "rtdetr-service", min_length=1, max_length=128, description="Kafka client.id (broker logs, quotas)."
    )
    kafka_linger_ms: int = Field(
        20, ge=0, le=5000, description="How long the Kafka producer waits to fill a batch (linger.ms)."
    )
    kafka_queue_size: int = Field(
        10_000,
        ge=1,
        le=1_000_000,
        description="Kafka messages waiting, in the sink's queue and again in the producer's; beyond it, dropped.",
    )
    kafka_delivery_timeout_s: float = Field(
        30.0, ge=1, le=3600, description="A Kafka message not acknowledged within this is counted failed."
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security.protocol."
    )
    kafka_sasl_mechanism: Literal["", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "", description="Kafka sasl.mechanism; required with a SASL_* protocol."
    )
    kafka_sasl_username: str = Field("", max_length=256, description="Kafka sasl.username.")
    kafka_sasl_password: SecretStr = Field(SecretStr(""), description="Kafka sasl.password.")
    kafka_ssl_ca_location: str = Field(
        "", max_length=4096, description="CA certificate file for Kafka TLS (ssl.ca.location); empty = system CAs."
    )
    viewer_stall_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="A viewer that has not taken a message for this long is closed (4408) and its slot freed.",
    )
    max_opens: int = Field(
        8, ge=1, le=256, description="Streams opened at once (start calls waiting on a camera); more get 429."
    )
    stream_allowed_networks: Annotated[list[IPvAnyNetwork], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated networks stream hosts may resolve to (empty = any not denied).",
    )
    stream_denied_networks: Annotated[list[IPvAnyNetwork], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_DENIED_NETWORKS),
        description="Comma-separated networks no stream may be opened from (default: link-local, metadata, multicast).",
    )
    metrics_require_key: bool = Field(
        True, description="/metrics needs an API key (it lists session ids); ignored with AUTH_DISABLED=true."
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("api_keys")
    @classmethod
    def _keys_fit_a_header(cls, value: list[SecretStr]) -> list[SecretStr]:
        # HTTP headers carry visible ASCII; any other key could never match. Which key is bad is
        # not said: that would print it.
        for key in value:
            if not all("!" <= c <= "~" for c in key.get_secret_value()):
                raise ValueError("API_KEYS: keys must be visible ASCII characters without spaces")
        return value

    @field_validator("stream_allowed_networks", "stream_denied_networks", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        if isinstance(value, str):
            return [n.strip() for n in value.split(",") if n.strip()]
        return value

    @field_validator("allowed_schemes", mode="before")
    @classmethod
    def _split_schemes(cls, value: object) -> object:
        if isinstance(value, str):
            value = [s.strip() for s in value.split(",") if s.strip()]
        return value

    @field_validator("allowed_schemes")
    @classmethod
    def _only_network_schemes(cls, value: list[str]) -> list[str]:
        lowered = [s.lower() for s in value]
        bad = sorted(set(lowered) - {"rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "srt"})
        if bad:
            raise ValueError(f"ALLOWED_SCHEMES may only name network protocols, not {', '.join(bad)}")
        if not lowered:
            raise ValueError("ALLOWED_SCHEMES must name at least one scheme")
        return lowered

    @model_validator(mode="after")
    def _auth_is_deliberate(self) -> Settings:
        if not self.api_keys and not self.auth_disabled:
            raise ValueError(
                "API_KEYS is empty: set API_KEYS=key1,key2, or AUTH_DISABLED=true only behind a gateway "
                "that checks keys itself"
            )
        if self.api_keys and self.auth_disabled:
            raise ValueError(
                "API_KEYS and AUTH_DISABLED=true are both set: keys would be silently ignored; set only one"
            )
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("RECONNECT_MAX_S must be >= RECONNECT_MIN_S")
        if self.webhook_urls.get_secret_value().strip() and not self.webhook_secret.get_secret_value():
            raise ValueError("WEBHOOK_SECRET is required when WEBHOOK_URLS is set: receivers verify the signature")
        self._kafka_is_consistent()
        return self

    def _kafka_is_consistent(self) -> None:
        # Settings the chosen protocol would ignore are refused: a password that is never sent
        # looks like security that is not there.
        sasl = self.kafka_security_protocol.startswith("SASL_")
        if sasl and not (self.kafka_sasl_mechanism and self.kafka_sasl_username):
            raise ValueError(
                f"KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs KAFKA_SASL_MECHANISM and "
                "KAFKA_SASL_USERNAME (and KAFKA_SASL_PASSWORD)"
            )
        if not sasl and (
            self.kafka_sasl_mechanism or self.kafka_sasl_username or self.kafka_sasl_password.get_secret_value()
        ):
            raise ValueError(
                "KAFKA_SASL_* is set but KAFKA_SECURITY_PROTOCOL is not SASL_PLAINTEXT or SASL_SSL: it would be ignored"
            )
        if self.kafka_ssl_ca_location and not self.kafka_security_protocol.endswith("SSL"):
            raise ValueError(
                "KAFKA_SSL_CA_LOCATION is set but KAFKA_SECURITY_PROTOCOL is not SSL or SASL_SSL: it would be ignored"
            )
        topics = (self.kafka_detections_topic, self.kafka_events_topic, self.kafka_alerts_topic)
        if self.kafka_bootstrap_servers.strip() and not any(topics):
            raise ValueError("KAFKA_BOOTSTRAP_SERVERS is set but every KAFKA_*_TOPIC is empty: nothing would be sent")

    def resolved_model(self) -> str:
        """MODEL as a local path when it names one (relative to the working directory, then to
        the repository), else as given (a hub id, or a path that does not exist yet)."""
        path = Path(self.model)
        if path.is_absolute() or path.exists():
            return str(path)
        if (REPO_ROOT / path).exists():
            return str(REPO_ROOT / path)
        return self.model


# Keys of the shared `.env` that belong to docker compose, MediaMTX or Kong, not to this service.
_OTHERS_KEYS = ("MEDIAMTX_", "MTX_", "KONG_", "COMPOSE_", "PUSH_", "RTSP_BIND", "CLIP", "URL")


def unknown_env_file_keys(path: Path | str = ".env") -> list[str]:
    """Keys of an env file that neither this service nor the stack around it reads: most likely
    typos of a setting, which the service would otherwise ignore in silence."""
    from dotenv import dotenv_values

    path = Path(path)
    if not path.is_file():
        return []
    ours = {name.upper() for name in Settings.model_fields}
    return sorted(
        key for key in dotenv_values(path) if key.upper() not in ours and not key.upper().startswith(_OTHERS_KEYS)
    )
