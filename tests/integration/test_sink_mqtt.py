"""The MQTT sink against a real mosquitto broker: topics, retained counts, availability, outages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rtdetr_service.core.results import Alert, SessionView
from rtdetr_service.core.types import Detection
from rtdetr_service.outputs.mqtt import MqttSink
from rtdetr_service.outputs.settings import MqttSettings

from feeds import T0, CameraFeed, handle_durations
from servers import Mosquitto, MqttSubscriber, needs_mosquitto
from support import free_port, wait_until

PASSWORD = "mqtt-s3cret-pw"  # the broker allows anonymous clients, so any password is accepted
VIEW = SessionView("session-1", "gate", enable_drawing=False, jpeg_quality=75)

pytestmark = needs_mosquitto


@pytest.fixture
def broker(tmp_path):
    made = Mosquitto(free_port(), tmp_path)
    yield made
    made.kill()


@pytest.fixture
def subscribers(closing):
    def make(port: int) -> MqttSubscriber:
        return closing(MqttSubscriber(port))

    return make


@pytest.fixture
def sinks(start_sink):
    def make(port: int) -> MqttSink:
        settings = MqttSettings(
            url=f"mqtt://rtdetr:{PASSWORD}@127.0.0.1:{port}", client_id=f"rtdetr-test-{port}", queue_size=16
        )
        sink = MqttSink(
            settings,
            reconnect_min_s=0.1,
            reconnect_max_s=0.5,
        )
        return start_sink(sink)

    return make


def det(label: str, track: int | None, class_id: int = 0) -> Detection:
    return Detection(class_id, label, (10.0, 5.0, 20.0, 30.0), 0.8, track)


def test_events_counts_alerts_and_availability_reach_a_subscriber(broker, subscribers, sinks, caplog):
    caplog.set_level("DEBUG")
    broker.start()
    sink = sinks(broker.port)
    assert wait_until(lambda: sink.connected)
    watcher = subscribers(broker.port)
    assert watcher.wait_for("rtdetr/available", "online", retained=True)
    session = CameraFeed(VIEW)
    alert = Alert("person", 0.8, (10.0, 5.0, 20.0, 30.0), 0, T0, track_id=1, kind="enter", rule="door")

    # Two tracked people, a car, and a person not tracked yet (not counted).
    sink.handle(session.step([det("person", 1), det("person", 2), det("car", 3, 2), det("person", None)], (alert,)))

    assert watcher.wait_for("rtdetr/gate/person", "2") and watcher.wait_for("rtdetr/gate/car", "1")
    assert watcher.wait_for("rtdetr/events") and watcher.wait_for("rtdetr/gate/alerts")
    assert wait_until(lambda: len(watcher.payloads("rtdetr/events")) == 3)
    events = [json.loads(p) for p in watcher.payloads("rtdetr/events")]
    assert {e["schema"] for e in events} == {"rtdetr.event.v1"} and {e["type"] for e in events} == {"new"}
    assert sorted(e["after"]["track_id"] for e in events) == [1, 2, 3] and all(e["before"] is None for e in events)
    (alert_body,) = [json.loads(p) for p in watcher.payloads("rtdetr/gate/alerts")]
    assert alert_body["schema"] == "rtdetr.alert.v1" and alert_body["alert"]["rule"] == "door"

    # Same counts: nothing new on the count topics. One person leaves and the car: counts change.
    sink.handle(session.step([det("person", 1), det("person", 2), det("car", 3, 2)]))
    sink.handle(session.step([det("person", 1)]))
    assert watcher.wait_for("rtdetr/gate/person", "1") and watcher.wait_for("rtdetr/gate/car", "0")
    assert watcher.payloads("rtdetr/gate/person") == ["2", "1"]

    # Counts are retained: a subscriber that comes later gets the current ones at once.
    late = subscribers(broker.port)
    assert late.wait_for("rtdetr/gate/person", "1", retained=True)
    assert late.wait_for("rtdetr/gate/car", "0", retained=True)

    # The session ends: its labels go back to 0.
    sink.session_ended("session-1")
    assert watcher.wait_for("rtdetr/gate/person", "0")

    assert wait_until(lambda: sink.stats().sent == 9)  # 3 events, 1 alert, 5 count changes
    assert sink.stats().state == "ok" and sink.stats().dropped == 0
    sink.close(1.0)
    assert watcher.wait_for("rtdetr/available", "offline")
    assert subscribers(broker.port).wait_for("rtdetr/available", "offline", retained=True)
    assert PASSWORD not in caplog.text and PASSWORD not in json.dumps(sink.stats().as_dict())


def test_a_broker_down_at_start_does_not_stop_the_sink(broker, subscribers, sinks):
    started = time.monotonic()
    sink = sinks(broker.port)  # nothing listens yet
    assert time.monotonic() - started < 0.5

    assert wait_until(lambda: "cannot reach" in (sink.stats().last_error or ""))
    stats = sink.stats()
    assert stats.state == "failing" and f"127.0.0.1:{broker.port}" in stats.last_error
    assert PASSWORD not in stats.last_error
    sink.handle(CameraFeed(VIEW).step([det("person", 1)]))
    assert sink.stats().dropped == 2  # the event and the count: not kept for later

    broker.start()
    assert wait_until(lambda: sink.connected, timeout=5)
    assert sink.stats().state in ("ok", "degraded") and sink.stats().last_error is None
    watcher = subscribers(broker.port)
    assert watcher.wait_for("rtdetr/available", "online", retained=True)
    # The count kept while the broker was down is published on connect.
    assert watcher.wait_for("rtdetr/gate/person", "1", retained=True)


def test_a_broker_restart_mid_run_costs_counted_drops_then_reconnects(broker, subscribers, sinks):
    broker.start()
    sink = sinks(broker.port)
    assert wait_until(lambda: sink.connected)
    session = CameraFeed(VIEW)
    sink.handle(session.step([det("person", 1)]))
    assert wait_until(lambda: sink.stats().sent == 2)

    broker.kill()
    assert wait_until(lambda: not sink.connected)
    assert sink.stats().state == "failing" and "lost the connection" in sink.stats().last_error
    steps = [session.step([det("person", t) for t in range(1, 2 + i % 3)]) for i in range(200)]  # counts keep changing
    durations = handle_durations(sink, steps)
    assert max(durations) < 0.010
    dropped = sink.stats().dropped
    assert dropped >= 200 and sink.stats().queued == 0  # dropped, not buffered

    broker.start()  # the same port, nothing retained
    assert wait_until(lambda: sink.connected, timeout=5)
    watcher = subscribers(broker.port)
    assert watcher.wait_for("rtdetr/available", "online", retained=True)
    current = str(len([d for d in steps[-1].result.detections if d.track_id is not None]))
    assert watcher.wait_for("rtdetr/gate/person", current, retained=True)

    sink.handle(session.step([det("person", 1), det("person", 2), det("person", 3), det("person", 4)]))
    assert watcher.wait_for("rtdetr/gate/person", "4")
    assert sink.stats().dropped == dropped and sink.stats().state in ("ok", "degraded")


def test_a_process_that_dies_leaves_offline_as_its_last_will(broker, subscribers):
    broker.start()
    script = (
        "import sys, time\n"
        "from rtdetr_service.outputs.mqtt import MqttSink\n"
        "from rtdetr_service.outputs.settings import MqttSettings\n"
        f"sink = MqttSink(MqttSettings(url='mqtt://127.0.0.1:{broker.port}'))\n"
        "sink.start()\n"
        "while not sink.connected: time.sleep(0.01)\n"
        "print('connected', flush=True)\n"
        "time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "rt-detr-service")}
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "connected"
        watcher = subscribers(broker.port)
        assert watcher.wait_for("rtdetr/available", "online", retained=True)
        child.kill()  # no clean close: the broker sends the will
        child.wait(5)
        assert watcher.wait_for("rtdetr/available", "offline")
    finally:
        child.kill()
        child.wait(5)


def test_close_is_bounded_when_the_broker_is_gone(broker, sinks):
    sink = sinks(broker.port)  # never comes up
    time.sleep(0.2)
    started = time.monotonic()
    sink.close(0.5)
    assert time.monotonic() - started < 0.8
    sink.close(0.5)  # idempotent


def test_a_url_that_is_not_mqtt_is_refused_without_showing_the_password():
    with pytest.raises(ValueError, match="MQTT_URL") as info:
        MqttSink(MqttSettings(url=f"http://rtdetr:{PASSWORD}@127.0.0.1:1883"))
    assert PASSWORD not in str(info.value)


def test_per_frame_detections_are_published_at_most_at_the_rate_cap(broker, subscribers):
    # given a sink with the detections topic on, capped at 2 a second
    broker.start()
    url = f"mqtt://rtdetr:{PASSWORD}@127.0.0.1:{broker.port}"
    sink = MqttSink(MqttSettings(url=url, queue_size=64, detections_max_fps=2.0))
    sink.start()
    try:
        assert wait_until(lambda: sink.connected)
        watcher = subscribers(broker.port)
        session = CameraFeed(VIEW)
        # when 30 frames come, 0.1 s apart by their timestamps (3 s of a 10 fps camera)
        for _ in range(30):
            sink.handle(session.step([det("person", 1)]))
        # then about one frame in five is sent (2 a second), each a valid detections message
        assert wait_until(lambda: len(watcher.payloads("rtdetr/gate/detections")) >= 6, timeout=10)
        time.sleep(0.5)
        sent = [json.loads(p) for p in watcher.payloads("rtdetr/gate/detections")]
        assert len(sent) == 6, [m["frame_index"] for m in sent]
        assert {m["schema"] for m in sent} == {"rtdetr.detections.v1"}
        assert [m["frame_index"] for m in sent] == [0, 5, 10, 15, 20, 25]
        assert sent[0]["detections"][0]["track_id"] == 1
    finally:
        sink.close(1.0)
