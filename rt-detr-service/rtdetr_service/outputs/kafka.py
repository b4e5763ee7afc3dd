"""The Kafka sink: every frame's detections, event changes, alerts and answers, each kind on its own topic.

    KAFKA_DETECTIONS_TOPIC  (detection-results)  rtdetr.detections.v1, one per inferred frame
    KAFKA_EVENTS_TOPIC      (rtdetr-events)      rtdetr.event.v1
    KAFKA_ALERTS_TOPIC      (rtdetr-alerts)      rtdetr.alert.v1
    KAFKA_ANSWERS_TOPIC     (rtdetr-answers)     rtdetr.answer.v1, a rule's question answered by the VLM

Every message is keyed by the session's camera (its id when it has none): one key goes to one
partition, so each camera's messages are read in the order they were made. The producer is
idempotent, so its retries neither duplicate nor reorder them.

The publisher thread only counts and queues a step (bounded). The sink's own thread builds the
JSON, hands it to librdkafka and serves librdkafka's callbacks with `poll()`: delivery reports
count sent and failed, `error_cb` says in words why the brokers cannot be reached, and the
statistics tell when they can again. librdkafka holds at most KAFKA_QUEUE_SIZE messages for at
most KAFKA_DELIVERY_TIMEOUT_S; while brokers are down that fills, `produce()` refuses, and what
it refuses is dropped, counted: memory stays bounded and the publisher never waits.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import replace

from confluent_kafka import KafkaError, KafkaException, Producer

from rtdetr_service.core.results import Published
from rtdetr_service.outputs.base import DEGRADED_FOR_S, QueuedSink, SinkStats
from rtdetr_service.outputs.messages import (
    ALERT_SCHEMA,
    ANSWER_SCHEMA,
    DETECTIONS_SCHEMA,
    EVENT_SCHEMA,
    dumps,
    output_alert,
    output_answer,
    output_detections,
    output_event,
)
from rtdetr_service.outputs.settings import KafkaSettings

log = logging.getLogger(__name__)
_librdkafka_log = logging.getLogger(f"{__name__}.librdkafka")

_PURGED = (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT)
_POLL_S = 0.05  # the longest a queued step waits for the thread, and a delivery report for its count


class _LibrdkafkaLog:
    """librdkafka's own log lines, at DEBUG: it retries every few seconds and says so each time;
    what matters reaches `error_cb` and is said once per outage."""

    def log(self, level: int, fmt: str, *args) -> None:
        _librdkafka_log.debug(fmt, *args)


def _producer_config(settings: KafkaSettings, brokers: str, reconnect_max_s: float, stats_interval_s: float) -> dict:
    """librdkafka's configuration from KAFKA_*: the options left empty are not given."""
    config = {
        "bootstrap.servers": brokers,
        "client.id": settings.client_id,
        # acks=all and per-partition sequence numbers: a retried batch is written once, in order.
        "enable.idempotence": True,
        "linger.ms": settings.linger_ms,
        # The producer's own buffer, bounded like the queue in front of it.
        "queue.buffering.max.messages": settings.queue_size,
        "message.timeout.ms": int(settings.delivery_timeout_s * 1000),
        "reconnect.backoff.max.ms": int(reconnect_max_s * 1000),
        "statistics.interval.ms": int(stats_interval_s * 1000),
        "security.protocol": settings.security_protocol.lower(),
    }
    optional = {
        "sasl.mechanism": settings.sasl_mechanism,
        "sasl.username": settings.sasl_username,
        "sasl.password": settings.sasl_password.get_secret_value(),
        "ssl.ca.location": settings.ssl_ca_location,
    }
    return config | {key: value for key, value in optional.items() if value}


class KafkaSink(QueuedSink):
    name = "kafka"
    wait_s = _POLL_S

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        reconnect_max_s: float = 5.0,
        stats_interval_s: float = 1.0,
    ) -> None:
        servers = [s.strip() for s in settings.bootstrap_servers.split(",") if s.strip()]
        if not servers:
            raise ValueError("KAFKA_BOOTSTRAP_SERVERS must name at least one host:port")
        super().__init__(queue_size=settings.queue_size, batch_max=64)
        self.brokers = ",".join(servers)
        self.topics = {
            "detections": settings.detections_topic,
            "events": settings.events_topic,
            "alerts": settings.alerts_topic,
            "answers": settings.answers_topic,
        }
        self._config = {
            **_producer_config(settings, self.brokers, reconnect_max_s, stats_interval_s),
            "error_cb": self._on_error,
            "stats_cb": self._on_stats,
            "logger": _LibrdkafkaLog(),
        }
        self._state_lock = threading.Lock()
        self._connected = False
        self._link_error: str | None = f"connecting to the Kafka brokers {self.brokers}"
        self._warned = False  # the current outage has been logged
        self._fatal: KafkaError | None = None
        self._generation = 0
        self._closed = False
        self._producer = self._new_producer()

    def _new_producer(self) -> Producer:
        self._generation += 1
        generation = self._generation

        def delivered(err: KafkaError | None, msg) -> None:
            if generation == self._generation:  # a replaced producer's messages are counted already
                self._on_delivery(err)

        self._delivered = delivered
        try:
            return Producer(self._config)
        except KafkaException as exc:  # a setting librdkafka refuses (a CA file that is not there)
            raise ValueError(f"KAFKA_* settings refused by the Kafka client: {exc.args[0].str()}") from None

    # -- publisher side ----------------------------------------------------------------------

    def _count(self, item: Published) -> int:
        return (
            (1 if item.result is not None and self.topics["detections"] else 0)
            + (len(item.events) if self.topics["events"] else 0)
            + (len(item.alerts) if self.topics["alerts"] else 0)
            + (len(item.answers) if self.topics["answers"] else 0)
        )

    def accept(self, item: Published):
        """Queue the whole step; its JSON is made on the sink's thread."""
        return item if self._count(item) else None

    def weight(self, entry: Published) -> int:
        return self._count(entry)

    # -- the sink's thread -------------------------------------------------------------------

    def _messages(self, item: Published):
        view = item.session
        key = (view.camera or view.session_id).encode()
        topics = self.topics
        if item.result is not None and topics["detections"]:
            yield topics["detections"], key, DETECTIONS_SCHEMA, dumps(output_detections(view, item.result))
        if topics["events"]:
            for change in item.events:
                yield topics["events"], key, EVENT_SCHEMA, dumps(output_event(view, change))
        if topics["alerts"]:
            for alert in item.alerts:
                yield topics["alerts"], key, ALERT_SCHEMA, dumps(output_alert(view, alert))
        if topics["answers"]:
            for answer in item.answers:
                yield topics["answers"], key, ANSWER_SCHEMA, dumps(output_answer(view, answer))

    def idle(self) -> None:
        """Serve librdkafka's callbacks between waits for steps: delivery reports, errors, statistics."""
        self._poll(0)

    def write(self, batch: list) -> None:
        for item in batch:
            for topic, key, schema, value in self._messages(item):
                self._produce(topic, key, schema, value)

    def after_write(self, batch: list) -> None:
        pass  # handed to librdkafka, not yet delivered: delivery reports count them

    def given_up(self, count: int) -> None:
        super().given_up(count)
        log.warning("kafka: %d message(s) not delivered before shutdown", count)

    def _produce(self, topic: str, key: bytes, schema: str, value: str) -> None:
        try:
            self._producer.produce(topic, value, key, headers=[("schema", schema)], on_delivery=self._delivered)
        except BufferError:  # librdkafka holds queue_size messages already: the brokers are behind
            with self._lock:
                self.dropped += 1
                self._last_drop = time.monotonic()
        except KafkaException as exc:
            self._failed(1, exc.args[0])
            if exc.args[0].fatal():
                self._renew(exc.args[0])

    def _poll(self, timeout: float) -> None:
        try:
            self._producer.poll(timeout)
        except KafkaException as exc:  # the fatal error of an idempotent producer is raised here
            if exc.args[0].fatal():
                self._fatal = exc.args[0]
            else:
                self._failed(0, exc.args[0])
        if self._fatal is not None:
            fatal, self._fatal = self._fatal, None
            self._renew(fatal)

    def _renew(self, fatal: KafkaError) -> None:
        """An idempotent producer that cannot go on without risking duplicates or reordering (a
        broker that lost its state, a fenced producer id) is given up and replaced; what it still
        held is lost, counted as failed."""
        lost = len(self._producer)
        self._failed(lost, fatal)
        log.warning("kafka: the producer stopped (%s); %d message(s) lost; starting a new one", fatal.str(), lost)
        self._producer = self._new_producer()

    # -- librdkafka callbacks (run inside poll() / flush(), on the sink's thread) --------------

    def _on_delivery(self, err: KafkaError | None) -> None:
        if err is None:
            with self._lock:
                self.sent += 1
            with self._state_lock:
                self._connected = True
                self._link_error = None
                self._warned = False
            if self._failing:
                log.info("kafka: delivering again")
            self._failing = False
            return
        if err.code() in _PURGED:  # given up at shutdown, never attempted
            with self._lock:
                self.dropped += 1
            return
        self._failed(1, err)

    def _failed(self, count: int, err: KafkaError) -> None:
        with self._lock:
            self.failed += count
            self.last_error = f"Kafka at {self.brokers}: {err.str()}"[:500]
        if not self._failing:
            log.warning("kafka: delivery failed: %s", self.last_error)
        self._failing = True

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = err  # handled after poll() returns: the producer is replaced
            return
        code = err.code()
        if code == KafkaError._ALL_BROKERS_DOWN:
            message = f"cannot reach any Kafka broker of {self.brokers}; retrying"
        elif code == KafkaError._AUTHENTICATION:
            message = f"the Kafka brokers {self.brokers} refused the credentials: {err.str()}"
        else:
            message = f"Kafka at {self.brokers}: {err.str()}"
        with self._state_lock:
            if code == KafkaError._ALL_BROKERS_DOWN:
                self._connected = False
            # "All down" says less than the connect error before it: keep the one with a cause.
            if code != KafkaError._ALL_BROKERS_DOWN or self._link_error is None:
                self._link_error = message[:500]
            warn, self._warned = not self._warned, True
        if warn:  # once per outage; librdkafka retries and says so every few seconds
            log.warning("kafka: %s", message)

    def _on_stats(self, stats_json: str) -> None:
        brokers = json.loads(stats_json).get("brokers", {})
        up = any(b.get("state") == "UP" for b in brokers.values())
        with self._state_lock:
            was, self._connected = self._connected, up
            if up:
                self._link_error = None
                self._warned = False
            elif self._link_error is None:
                self._link_error = f"cannot reach any Kafka broker of {self.brokers}; retrying"
        if up and not was:
            log.info("kafka: connected to %s", self.brokers)

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued for at most `timeout`, then give up the rest (counted as
        dropped); bounded even when every broker is gone."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout
        if self.drain(timeout / 2):  # else it still polls: the producer is left to it
            try:
                self._producer.flush(max(0.0, deadline - time.monotonic()))
            except KafkaException:
                pass
            # Not delivered in time: purged; their reports (counted as dropped) come with this poll.
            self._producer.purge()
            self._poll(0)

    @property
    def connected(self) -> bool:
        with self._state_lock:
            return self._connected

    def stats(self) -> SinkStats:
        base = super().stats()
        base = replace(
            base,
            detail={"brokers": self.brokers, "topics": dict(self.topics), "awaiting_ack": len(self._producer)},
        )
        with self._state_lock:
            connected, link_error = self._connected, self._link_error
        if not connected:
            return replace(base, state="failing", last_error=link_error or base.last_error)
        if self._failing:
            return replace(base, state="failing")
        state = "degraded" if time.monotonic() - self._last_drop < DEGRADED_FOR_S else "ok"
        return replace(base, state=state)
