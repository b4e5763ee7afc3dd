"""Every output end to end with the real service: the GStreamer camera, people walking across it
(a scripted detector in place of the model, everything after it real), a signed-webhook receiver,
mosquitto and a Kafka-compatible broker all at once; then all three die mid-run."""

from __future__ import annotations

import json
import re
import time

from test_output_schemas import check

from scripted_detector import WALK_ZONES, WalkingPeople
from servers import Mosquitto, MqttSubscriber, Tansu, WebhookReceiver, consume, needs_mosquitto, skip_without_kafka
from support import free_port, make_settings, run_service, start_session
from support import wait_until as _wait

skip_without_kafka()
pytestmark = needs_mosquitto

OUTPUTS = ("webhook", "mqtt", "kafka")


def _outputs(client) -> dict[str, dict]:
    return {o["name"]: o for o in client.get("/api/v1/outputs").json()["outputs"]}


def _inferred_per_s(client, session_id: str, seconds: float) -> float:
    before = client.get(f"/api/v1/video/status/{session_id}").json()["stats"]["frames_inferred"]
    time.sleep(seconds)
    after = client.get(f"/api/v1/video/status/{session_id}").json()["stats"]["frames_inferred"]
    return (after - before) / seconds


def _metric(text: str, name: str, sink: str) -> float:
    match = re.search(rf'^{name}\{{sink="{sink}"\}} (\S+)$', text, re.MULTILINE)
    assert match, f"{name}{{sink={sink!r}}} not in /metrics"
    return float(match.group(1))


def test_every_output_gets_its_messages_and_a_dead_one_costs_only_itself(tiny_model_dir, rtsp_url, tmp_path):
    # given a webhook receiver, mosquitto and a Kafka broker, and the service sending to all three
    receiver = WebhookReceiver("shared-webhook-secret")
    mosquitto = Mosquitto(free_port(), tmp_path)
    mosquitto.start()
    broker = Tansu(free_port())
    broker.start()
    watcher = MqttSubscriber(mosquitto.port)
    settings = make_settings(
        tiny_model_dir,
        data_dir=tmp_path / "data",
        event_end_after_s=1.0,
        track_keep_s=0.5,
        track_min_hits=2,
        webhook={"urls": receiver.url, "secret": receiver.secret, "max_retries": 1},
        mqtt={"url": f"mqtt://127.0.0.1:{mosquitto.port}"},
        kafka={"bootstrap_servers": broker.bootstrap, "queue_size": 64, "delivery_timeout_s": 2.0},
    )
    service = run_service(settings, detector_factory=lambda s: WalkingPeople(walk_s=2.0, period_s=3.0))
    stopped = False
    try:
        with service.client() as client:
            assert _wait(lambda: _outputs(client)["kafka"]["state"] == "ok", timeout=10), _outputs(client)
            assert _wait(lambda: _outputs(client)["mqtt"]["state"] == "ok", timeout=5), _outputs(client)
            session_id = start_session(client, rtsp_url, camera="cam1", zones=WALK_ZONES)["session_id"]

            # when people walk by, then each destination gets events and alerts, Kafka every frame too
            def webhook_kinds() -> set[str]:
                return {json.loads(r["body"])["schema"] for r in receiver.received()}

            assert _wait(lambda: webhook_kinds() == {"rtdetr.event.v1", "rtdetr.alert.v1"}, timeout=15)
            assert all(r["verified"] for r in receiver.received())
            assert _wait(lambda: watcher.payloads("rtdetr/cam1/alerts") and watcher.payloads("rtdetr/events"), 5)
            assert watcher.wait_for("rtdetr/cam1/person")  # the count of people in view
            assert _wait(lambda: _outputs(client)["kafka"]["sent"] > 20, timeout=5)
            records = consume(broker.bootstrap, 10**6, timeout=2.0)
            values = [json.loads(m.value()) for m in records]
            assert {m.key() for m in records} == {b"cam1"}
            assert check(values) == {"rtdetr.detections.v1", "rtdetr.event.v1", "rtdetr.alert.v1"}
            frames = [v["frame_index"] for v in values if v["schema"] == "rtdetr.detections.v1"]
            assert frames == sorted(frames) and len(frames) > 20
            check([json.loads(r["body"]) for r in receiver.received()])
            check([json.loads(p) for p in watcher.payloads("rtdetr/events") + watcher.payloads("rtdetr/cam1/alerts")])
            healthy = _inferred_per_s(client, session_id, 3.0)

            # when all three die mid-run
            watcher.close()
            receiver.close()
            mosquitto.kill()
            broker.kill()
            down = _inferred_per_s(client, session_id, 4.0)

            # then inference keeps its rate, each output counts what it lost and says so
            assert healthy > 0 and down >= 0.8 * healthy, (healthy, down)

            def all_failing() -> dict | None:
                outputs = _outputs(client)
                return outputs if all(outputs[n]["state"] != "ok" for n in OUTPUTS) else None

            outputs = _wait(all_failing, 5)
            assert outputs, _outputs(client)
            assert outputs["mqtt"]["dropped"] > 0 and outputs["kafka"]["dropped"] + outputs["kafka"]["failed"] > 0
            assert outputs["webhook"]["failed"] + outputs["webhook"]["dropped"] > 0, outputs["webhook"]
            metrics = client.get("/metrics").text
            assert _metric(metrics, "rtdetr_sink_dropped_total", "mqtt") > 0
            lost = _metric(metrics, "rtdetr_sink_dropped_total", "kafka") + _metric(
                metrics, "rtdetr_sink_failed_total", "kafka"
            )
            assert lost > 0
            warnings = client.get("/ready").json()["warnings"]
            for name in OUTPUTS:
                assert any(w.startswith(f"output {name} is ") for w in warnings), (name, warnings)
            assert client.get(f"/api/v1/video/status/{session_id}").json()["state"] == "running"

            # and nothing blocks stopping the session or the service
            began = time.monotonic()
            assert client.post("/api/v1/video/stop", json={"session_id": session_id}).status_code == 200
            assert time.monotonic() - began < 3.0
        began = time.monotonic()
        service.stop()
        stopped = True
        assert not service.thread.is_alive() and time.monotonic() - began < 10.0
    finally:
        if not stopped:
            service.stop()
        watcher.close()
        receiver.close()
        mosquitto.kill()
        broker.kill()
