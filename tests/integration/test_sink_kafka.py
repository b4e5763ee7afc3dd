"""The Kafka sink against a real Kafka-compatible broker (tansu) and a real consumer: topics, keys,
order per camera, delivery reports, a broker down at start, killed mid-run, gone at close."""

from __future__ import annotations

import json
import logging
import time

import pytest

from rtdetr_service.core.results import Alert, SessionView
from rtdetr_service.core.types import Detection
from rtdetr_service.web.settings import Settings

from feeds import T0, CameraFeed, handle_durations
from servers import Tansu, consume, skip_without_kafka
from support import free_port, wait_until

skip_without_kafka()
from rtdetr_service.outputs.kafka import KafkaSink  # noqa: E402 - after the skip: it needs confluent_kafka
from rtdetr_service.outputs.settings import KafkaSettings  # noqa: E402

PASSWORD = "kafka-s3cret-pw"
GATE = SessionView("session-1", "gate", enable_drawing=False, jpeg_quality=75)
YARD = SessionView("session-2", "yard", enable_drawing=False, jpeg_quality=75)


@pytest.fixture
def broker():
    made = Tansu(free_port())
    yield made
    made.kill()


@pytest.fixture
def sinks(start_sink):
    def make(bootstrap: str, **values) -> KafkaSink:
        values.setdefault("queue_size", 64)
        values.setdefault("linger_ms", 5)
        settings = KafkaSettings(bootstrap_servers=bootstrap, **values)
        return start_sink(KafkaSink(settings, reconnect_max_s=0.5, stats_interval_s=0.2))

    return make


def det(track: int | None, x: float = 10.0) -> Detection:
    return Detection(0, "person", (x, 5.0, x + 10.0, 30.0), 0.8, track)


def test_detections_events_and_alerts_reach_a_consumer_keyed_by_camera_and_in_order(broker, sinks):
    # given a broker and two cameras
    broker.start()
    sink = sinks(broker.bootstrap)
    gate, yard = CameraFeed(GATE), CameraFeed(YARD)
    alert = Alert("person", 0.8, (10.0, 5.0, 20.0, 30.0), 0, T0, track_id=1, kind="enter", rule="door")

    # when each publishes 20 frames (the gate's first with a new person and an alert)
    sink.handle(gate.step([det(1)], (alert,)))
    sink.handle(yard.step([det(None)]))
    for i in range(1, 20):
        sink.handle(gate.step([det(1, 10.0 + i)]))
        sink.handle(yard.step([]))

    # then every message is acknowledged, counted as sent (looked at within 10 ms of the last report:
    # librdkafka's stats events, every 0.2 s, count in awaiting_ack until the sink's next poll)
    assert wait_until(lambda: sink.stats().sent == 42, timeout=30, step=0.01), sink.stats()
    stats = sink.stats()
    assert stats.handled == 42 and stats.failed == 0 and stats.dropped == 0 and stats.state == "ok"
    assert stats.detail["topics"]["detections"] == "detection-results" and stats.detail["awaiting_ack"] == 0

    # and a real consumer reads them back: each kind on its topic, keyed by camera, in order
    messages = consume(broker.bootstrap, 42)
    assert len(messages) == 42
    by_topic: dict[str, list] = {}
    for m in messages:
        by_topic.setdefault(m.topic(), []).append(m)
    assert {t: len(ms) for t, ms in by_topic.items()} == {
        "detection-results": 40,
        "rtdetr-events": 1,
        "rtdetr-alerts": 1,
    }
    for m in messages:
        body = json.loads(m.value())
        assert dict(m.headers())["schema"].decode() == body["schema"]
        assert m.key().decode() == body["camera"]
    for camera in ("gate", "yard"):
        mine = [json.loads(m.value()) for m in by_topic["detection-results"] if m.key() == camera.encode()]
        assert len({m.partition() for m in by_topic["detection-results"] if m.key() == camera.encode()}) == 1
        assert [b["frame_index"] for b in mine] == list(range(20)), "one camera's frames out of order"
        assert {b["schema"] for b in mine} == {"rtdetr.detections.v1"} and {b["width"] for b in mine} == {64}
    first = json.loads(by_topic["detection-results"][0].value())
    assert first["detections"][0]["track_id"] in (1, None) and first["height"] == 48
    (event,) = [json.loads(m.value()) for m in by_topic["rtdetr-events"]]
    assert event["schema"] == "rtdetr.event.v1" and event["type"] == "new" and event["after"]["track_id"] == 1
    (alert_body,) = [json.loads(m.value()) for m in by_topic["rtdetr-alerts"]]
    assert alert_body["schema"] == "rtdetr.alert.v1" and alert_body["alert"]["rule"] == "door"


def test_a_topic_left_empty_is_not_sent(broker, sinks):
    broker.start()
    sink = sinks(broker.bootstrap, detections_topic="")
    camera = CameraFeed(GATE)
    sink.handle(camera.step([det(1)]))
    sink.handle(camera.step([det(1)]))
    assert wait_until(lambda: sink.stats().sent == 1)  # the event; no detections
    assert sink.stats().handled == 1


def test_a_broker_down_at_start_does_not_stop_the_sink(broker, sinks, caplog):
    caplog.set_level(logging.INFO, logger="rtdetr_service")
    # given no broker listening yet: the sink starts at once and says why it cannot deliver
    started = time.monotonic()
    sink = sinks(broker.bootstrap, sasl_password="")
    assert time.monotonic() - started < 0.5
    assert wait_until(lambda: "Connection refused" in (sink.stats().last_error or ""))
    stats = sink.stats()
    assert stats.state == "failing" and broker.bootstrap in stats.last_error
    camera = CameraFeed(GATE)
    sink.handle(camera.step([det(1)]))  # held by the producer, within its bounds

    # when the broker comes up, then the sink connects and delivers, the early message too
    broker.start()
    assert wait_until(lambda: sink.stats().sent == 2, timeout=30), sink.stats()
    assert sink.stats().state == "ok" and sink.stats().last_error is None
    assert "cannot reach" in caplog.text or "Connection refused" in caplog.text
    assert caplog.text.count("kafka: Kafka at") + caplog.text.count("kafka: cannot reach") == 1  # said once


def test_a_broker_killed_mid_run_costs_counted_drops_then_delivers_again(broker, sinks):
    # given a sink delivering to a broker
    broker.start()
    sink = sinks(broker.bootstrap, queue_size=32, delivery_timeout_s=1.0)
    camera = CameraFeed(GATE)
    # (a broker that just started can take longer than that 1 s to take its first messages on a
    # loaded machine: those time out, counted as failed; the sink delivers the next ones)
    delivered = None
    for _ in range(10):
        sink.handle(camera.step([det(1)]))
        if wait_until(lambda: sink.stats().sent >= 2, timeout=3):
            delivered = sink.stats()
            break
    assert delivered is not None, sink.stats()

    # when the broker dies and 300 frames come
    broker.kill()
    durations = handle_durations(sink, (camera.step([det(1, 10.0 + i % 30)]) for i in range(300)), pause_s=0.002)

    # then handle() never waited, what could not be held was dropped and the rest failed, counted
    assert max(durations) < 0.010
    assert wait_until(lambda: sink.stats().state == "failing", timeout=5)
    assert wait_until(lambda: sink.stats().failed > 0, timeout=5), sink.stats()
    stats = sink.stats()
    assert stats.dropped > 0
    # memory is bounded, not 600 messages: librdkafka holds at most queue_size messages, and its
    # out-queue count (len) also has events not yet polled: delivery reports, errors (34 seen once)
    assert stats.detail["awaiting_ack"] <= 2 * 32 and stats.queued <= 32, "memory is bounded"
    assert broker.bootstrap in stats.last_error

    # when the broker comes back (the same port, empty), then the sink delivers again
    broker.start()
    sent = stats.sent

    def delivering() -> bool:
        sink.handle(camera.step([det(1)]))
        time.sleep(0.05)
        return sink.stats().sent > sent + 5

    assert wait_until(delivering, timeout=15), sink.stats()
    assert wait_until(lambda: sink.stats().state in ("ok", "degraded"), timeout=5), sink.stats()
    assert consume(broker.bootstrap, 5, topics=("detection-results",)), "nothing readable after the restart"


def test_close_is_bounded_when_the_broker_is_gone(broker, sinks):
    # given messages held for a broker that never comes
    sink = sinks(broker.bootstrap, delivery_timeout_s=60.0)
    camera = CameraFeed(GATE)
    for _ in range(20):
        sink.handle(camera.step([det(1)]))
    assert wait_until(lambda: sink.stats().detail["awaiting_ack"] == 21)

    # when it is closed, then it returns within its bound and counts what it gave up
    started = time.monotonic()
    sink.close(0.5)
    assert time.monotonic() - started < 0.8
    stats = sink.stats()
    assert stats.dropped == 21 and stats.sent == 0 and stats.handled == 21
    sink.close(0.5)  # idempotent


def test_kafka_settings_that_would_be_ignored_are_refused_and_the_password_is_never_shown(broker, sinks, caplog):
    def settings(**kafka) -> Settings:
        return Settings(_env_file=None, api_keys="k" * 16, kafka={"bootstrap_servers": "127.0.0.1:9", **kafka})

    with pytest.raises(ValueError, match="KAFKA_SASL"):
        settings(sasl_password=PASSWORD)
    with pytest.raises(ValueError, match="KAFKA_SASL_MECHANISM"):
        settings(security_protocol="SASL_SSL")
    with pytest.raises(ValueError, match="KAFKA_SSL_CA_LOCATION"):
        settings(ssl_ca_location="/etc/ssl/ca.pem")
    with pytest.raises(ValueError, match="every KAFKA_\\*_TOPIC is empty"):
        settings(detections_topic="", events_topic="", alerts_topic="", answers_topic="")
    with pytest.raises(ValueError, match="kafka_events_topic"):
        settings(events_topic="no spaces allowed")
    ok = settings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="rtdetr",
        sasl_password=PASSWORD,
    )
    assert PASSWORD not in repr(ok)

    # and a SASL sink against a broker that does not speak SASL: failing in words, no password
    caplog.set_level(logging.DEBUG)
    broker.start()
    sink = sinks(
        broker.bootstrap,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="rtdetr",
        sasl_password=PASSWORD,
    )
    sink.handle(CameraFeed(GATE).step([det(1)]))
    time.sleep(1.0)
    assert PASSWORD not in caplog.text and PASSWORD not in json.dumps(sink.stats().as_dict())
