"""The MQTT sink against a real mosquitto broker: topics, retained counts, availability, outages."""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from rtdetr_service.analytics.events import EventLifecycle
from rtdetr_service.core.results import Alert, Published, SessionView
from rtdetr_service.core.types import Detection, Frame, FrameResult
from rtdetr_service.outputs.mqtt import MqttSink
from rtdetr_service.outputs.settings import MqttSettings

from support import free_port, wait_until

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
PASSWORD = "mqtt-s3cret-pw"  # the broker allows anonymous clients, so any password is accepted
T0 = 1_700_000_000.0
VIEW = SessionView("session-1", "gate", enable_drawing=False, jpeg_quality=75)

pytestmark = pytest.mark.skipif(not Path(MOSQUITTO).exists(), reason="mosquitto is not installed (make setup-test)")


class Broker:
    """A mosquitto on 127.0.0.1:port, no persistence: a restart forgets every retained message."""

    def __init__(self, port: int, directory: Path) -> None:
        self.port = port
        self.config = directory / "mosquitto.conf"
        self.config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nuser root\n")
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("mosquitto did not start")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(5)
        self.process = None


class Subscriber:
    """A real paho client that records every message under the prefix."""

    def __init__(self, port: int, topic: str = "rtdetr/#") -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(5), "subscriber did not subscribe"

    def _on_message(self, client, userdata, message) -> None:
        with self.lock:
            self.messages.append(message)

    def payloads(self, topic: str) -> list[str]:
        with self.lock:
            return [m.payload.decode() for m in self.messages if m.topic == topic]

    def retained(self, topic: str) -> list[str]:
        with self.lock:
            return [m.payload.decode() for m in self.messages if m.topic == topic and m.retain]

    def wait_for(self, topic: str, payload: str | None = None, timeout: float = 5.0, retained: bool = False) -> bool:
        def seen() -> bool:
            got = self.retained(topic) if retained else self.payloads(topic)
            return bool(got) if payload is None else payload in got

        return wait_until(seen, timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker(tmp_path):
    made = Broker(free_port(), tmp_path)
    yield made
    made.kill()


@pytest.fixture
def subscribers():
    made: list[Subscriber] = []

    def make(port: int) -> Subscriber:
        made.append(Subscriber(port))
        return made[-1]

    yield make
    for subscriber in made:
        subscriber.close()


@pytest.fixture
def sinks():
    made: list[MqttSink] = []

    def make(port: int) -> MqttSink:
        settings = MqttSettings(
            url=f"mqtt://rtdetr:{PASSWORD}@127.0.0.1:{port}", client_id=f"rtdetr-test-{port}", queue_size=16
        )
        sink = MqttSink(
            settings,
            reconnect_min_s=0.1,
            reconnect_max_s=0.5,
        )
        sink.start()
        made.append(sink)
        return sink

    yield make
    for sink in made:
        sink.close(1.0)


def frame(t: float, index: int = 0) -> Frame:
    return Frame(np.zeros((48, 64, 3), np.uint8), index, T0 + t, t)


def det(label: str, track: int | None, class_id: int = 0) -> Detection:
    return Detection(class_id, label, (10.0, 5.0, 20.0, 30.0), 0.8, track)


class Session:
    """A real event lifecycle feeding Published steps, as the publisher does."""

    def __init__(self) -> None:
        self.events = EventLifecycle("session-1", "gate", end_after_s=1.0)
        self.index = 0

    def step(self, detections: list[Detection], alerts: tuple[Alert, ...] = ()) -> Published:
        f = frame(self.index * 0.1, self.index)
        self.index += 1
        changes = self.events.update(f, detections)
        return Published(VIEW, FrameResult("session-1", f, tuple(detections), 0.01), alerts, tuple(changes))


def test_events_counts_alerts_and_availability_reach_a_subscriber(broker, subscribers, sinks, caplog):
    caplog.set_level("DEBUG")
    broker.start()
    sink = sinks(broker.port)
    assert wait_until(lambda: sink.connected)
    watcher = subscribers(broker.port)
    assert watcher.wait_for("rtdetr/available", "online", retained=True)
    session = Session()
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
    sink.handle(Session().step([det("person", 1)]))
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
    session = Session()
    sink.handle(session.step([det("person", 1)]))
    assert wait_until(lambda: sink.stats().sent == 2)

    broker.kill()
    assert wait_until(lambda: not sink.connected)
    assert sink.stats().state == "failing" and "lost the connection" in sink.stats().last_error
    durations = []
    gc.disable()  # a collector pause is not the sink's time
    try:
        for i in range(200):
            detections = [det("person", t) for t in range(1, 2 + i % 3)]  # counts keep changing
            item = session.step(detections)
            began = time.perf_counter()
            sink.handle(item)
            durations.append(time.perf_counter() - began)
    finally:
        gc.enable()
    assert max(durations) < 0.010
    dropped = sink.stats().dropped
    assert dropped >= 200 and sink.stats().queued == 0  # dropped, not buffered

    broker.start()  # the same port, nothing retained
    assert wait_until(lambda: sink.connected, timeout=5)
    watcher = subscribers(broker.port)
    assert watcher.wait_for("rtdetr/available", "online", retained=True)
    current = str(len([d for d in detections if d.track_id is not None]))
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
        session = Session()
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
