"""What the outputs read: the event store, the alert log, viewers, and one model per remote output.

`WebhookSettings`, `MqttSettings` and `KafkaSettings` are handed whole to their sinks; they live
here rather than in the sinks' modules, which import their optional clients. In the environment
each of their fields is spelled with the output's prefix: `KafkaSettings.bootstrap_servers` is
`KAFKA_BOOTSTRAP_SERVERS`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator

from rtdetr_service.core.config import REPO_ROOT, CommaList, SettingsModel

_KAFKA_TOPIC = r"^[A-Za-z0-9._-]{0,249}$"  # Kafka's legal topic names; empty = that topic is off


class WebhookSettings(SettingsModel):
    """WEBHOOK_*: where event changes and alerts are POSTed, signed."""

    urls: CommaList[SecretStr] = Field(
        default_factory=list,
        description="Comma-separated URLs that get every event change and alert as signed JSON; empty = off.",
    )
    secret: SecretStr = Field(
        SecretStr(""),
        description="HMAC-SHA256 key of the X-Rtdetr-Signature header; required when WEBHOOK_URLS is set.",
    )
    timeout_s: float = Field(
        5.0, gt=0, le=60, description="Bound on one webhook request in all: connect, send and the whole answer."
    )
    max_retries: int = Field(
        3, ge=0, le=10, description="Retries of a 5xx, connection error or timeout (capped backoff); 4xx never."
    )
    queue_size: int = Field(
        1024, ge=1, le=1_000_000, description="Messages waiting per webhook URL; beyond it they are dropped."
    )

    @model_validator(mode="after")
    def _signed_or_off(self) -> WebhookSettings:
        if self.urls and not self.secret.get_secret_value():
            raise ValueError("WEBHOOK_SECRET is required when WEBHOOK_URLS is set: receivers verify the signature")
        return self


class MqttSettings(SettingsModel):
    """MQTT_*: the broker events, counts and alerts are published to."""

    url: SecretStr = Field(
        SecretStr(""),
        description="MQTT broker, e.g. mqtt://user:password@host:1883 (mqtts:// for TLS); empty = off.",
    )
    client_id: str = Field("", max_length=128, description="MQTT client id; empty = one chosen by the broker.")
    topic_prefix: str = Field(
        "rtdetr", min_length=1, max_length=128, pattern=r"^[^#+\s]+$", description="First level of every MQTT topic."
    )
    queue_size: int = Field(
        1024, ge=1, le=1_000_000, description="MQTT messages waiting to be sent; beyond it they are dropped."
    )
    detections_max_fps: float = Field(
        0.0,
        ge=0.0,
        le=60.0,
        description="Per-frame detections on <prefix>/<camera>/detections, at most this many a second; 0 = off.",
    )


class KafkaSettings(SettingsModel):
    """KAFKA_*: the brokers and topics of detections, event changes and alerts."""

    bootstrap_servers: str = Field(
        "", max_length=2048, description="Kafka brokers to start from, e.g. kafka1:9092,kafka2:9092; empty = off."
    )
    detections_topic: str = Field(
        "detection-results",
        pattern=_KAFKA_TOPIC,
        description="Topic of every frame's detections (rtdetr.detections.v1); empty = not sent.",
    )
    events_topic: str = Field(
        "rtdetr-events", pattern=_KAFKA_TOPIC, description="Topic of event changes (rtdetr.event.v1); empty = not sent."
    )
    alerts_topic: str = Field(
        "rtdetr-alerts", pattern=_KAFKA_TOPIC, description="Topic of alerts (rtdetr.alert.v1); empty = not sent."
    )
    answers_topic: str = Field(
        "rtdetr-answers",
        pattern=_KAFKA_TOPIC,
        description="Topic of the VLM's answers to rules' questions (rtdetr.answer.v1); empty = not sent.",
    )
    client_id: str = Field(
        "rtdetr-service", min_length=1, max_length=128, description="Kafka client.id (broker logs, quotas)."
    )
    linger_ms: int = Field(
        20, ge=0, le=5000, description="How long the Kafka producer waits to fill a batch (linger.ms)."
    )
    queue_size: int = Field(
        10_000,
        ge=1,
        le=1_000_000,
        description="Kafka messages waiting, in the sink's queue and again in the producer's; beyond it, dropped.",
    )
    delivery_timeout_s: float = Field(
        30.0, ge=1, le=3600, description="A Kafka message not acknowledged within this is counted failed."
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security.protocol."
    )
    sasl_mechanism: Literal["", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "", description="Kafka sasl.mechanism; required with a SASL_* protocol."
    )
    sasl_username: str = Field("", max_length=256, description="Kafka sasl.username.")
    sasl_password: SecretStr = Field(SecretStr(""), description="Kafka sasl.password.")
    ssl_ca_location: str = Field(
        "", max_length=4096, description="CA certificate file for Kafka TLS (ssl.ca.location); empty = system CAs."
    )

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSettings:
        # Settings the chosen protocol would ignore are refused: a password that is never sent
        # looks like security that is not there.
        sasl = self.security_protocol.startswith("SASL_")
        if sasl and not (self.sasl_mechanism and self.sasl_username):
            raise ValueError(
                f"KAFKA_SECURITY_PROTOCOL={self.security_protocol} needs KAFKA_SASL_MECHANISM and "
                "KAFKA_SASL_USERNAME (and KAFKA_SASL_PASSWORD)"
            )
        if not sasl and (self.sasl_mechanism or self.sasl_username or self.sasl_password.get_secret_value()):
            raise ValueError(
                "KAFKA_SASL_* is set but KAFKA_SECURITY_PROTOCOL is not SASL_PLAINTEXT or SASL_SSL: it would be ignored"
            )
        if self.ssl_ca_location and not self.security_protocol.endswith("SSL"):
            raise ValueError(
                "KAFKA_SSL_CA_LOCATION is set but KAFKA_SECURITY_PROTOCOL is not SSL or SASL_SSL: it would be ignored"
            )
        topics = (self.detections_topic, self.events_topic, self.alerts_topic, self.answers_topic)
        if self.bootstrap_servers.strip() and not any(topics):
            raise ValueError("KAFKA_BOOTSTRAP_SERVERS is set but every KAFKA_*_TOPIC is empty: nothing would be sent")
        return self


class OutputSettings(SettingsModel):
    """Where results go; flat fields are upper-case variables, the nested ones take their prefix."""

    events_enabled: bool = Field(True, description="Keep an event history (SQLite under DATA_DIR, or DATABASE_URL).")
    data_dir: Path = Field(REPO_ROOT / "data", description="Where the event database and snapshots live.")
    database_url: SecretStr = Field(
        SecretStr(""),
        description="Event store URL: postgresql://user:pw@host/db (postgres:// too; psycopg 3); empty = SQLite.",
    )
    event_retention_days: float = Field(30.0, gt=0, le=3650, description="Events older than this are deleted.")
    snapshot_max_mb: int = Field(
        2048, ge=1, le=10_000_000, description="Snapshots beyond this total are deleted, oldest first."
    )
    event_queue_size: int = Field(
        1024, ge=16, le=1_000_000, description="Event changes waiting for the store; beyond it they are dropped."
    )
    alert_log: bool = Field(True, description="Log every alert (one line each, written off the pipeline).")
    viewer_stall_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="A viewer that has not taken a message for this long is closed (4408) and its slot freed.",
    )
    webhook: WebhookSettings = Field(default_factory=WebhookSettings, description="The webhook output (WEBHOOK_*).")
    mqtt: MqttSettings = Field(default_factory=MqttSettings, description="The MQTT output (MQTT_*).")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings, description="The Kafka output (KAFKA_*).")
