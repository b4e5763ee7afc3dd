"""What the real outputs really send is what docs/schemas/ says: messages captured from a real
HTTP receiver, a real mosquitto and a real Kafka-compatible broker, fed by a real event lifecycle
(new, update, end) and alerts of every kind, validated against the JSON Schema files."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest

from rtdetr_service.analytics.events import EventLifecycle
from rtdetr_service.core.results import Alert, Embedding, EventChange, Published, RuleAnswer, SessionView
from rtdetr_service.core.types import Detection, FrameResult
from rtdetr_service.outputs import messages
from rtdetr_service.outputs.settings import KafkaSettings, MqttSettings, WebhookSettings
from rtdetr_service.outputs.webhook import WebhookSink

from feeds import T0, blank_frame
from servers import Mosquitto, MqttSubscriber, Tansu, WebhookReceiver, consume, needs_mosquitto, skip_without_kafka
from support import free_port, wait_until

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
NAMES = ("rtdetr.event.v1", "rtdetr.alert.v1", "rtdetr.detections.v1", "rtdetr.answer.v1")


def validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{name}.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def check(messages: list[dict]) -> set[str]:
    """Every message valid against the schema it names; the names seen."""
    seen = set()
    for message in messages:
        assert message["schema"] in NAMES, message
        errors = sorted(validator(message["schema"]).iter_errors(message), key=str)
        assert not errors, f"{message['schema']}: {[e.message for e in errors]}\n{json.dumps(message)}"
        seen.add(message["schema"])
    return seen


def steps() -> list[Published]:
    """A real life on a camera and one on a session without a name, alerts of every kind."""
    steps = []
    for view in (
        SessionView("session-1", "gate", enable_drawing=False, jpeg_quality=75, records=True),
        SessionView("session-2", None, enable_drawing=False, jpeg_quality=75),
    ):
        events = EventLifecycle(view.session_id, view.camera, end_after_s=1.0)
        event_id = None
        for i, (confidence, zones) in enumerate([(0.6, ()), (0.7, ()), (0.9, ("porch",))]):
            f = blank_frame(i * 0.5, i)
            person = Detection(0, "person", (10.0, 5.0, 20.0 + i, 30.0), confidence, 7)
            seen = (person, Detection(2, "car", (1.0, 1.0, 9.0, 9.0), 0.4))  # the car not tracked yet
            fired = {7: ["door"]} if zones else None
            changes = events.update(f, list(seen), zones_of={7: zones}, rules_fired=fired)
            event_id = next((c.event.id for c in changes if c.kind == "new"), event_id)
            box, at = person.bbox, f.timestamp
            alerts = (
                (
                    Alert(
                        "person",
                        0.9,
                        box,
                        i,
                        at,
                        track_id=7,
                        kind="enter",
                        rule="door",
                        zone="porch",
                        event_id=event_id,
                        ask="Is the person carrying a parcel?",
                    ),
                    Alert(
                        "person",
                        0.9,
                        box,
                        i,
                        at,
                        track_id=7,
                        kind="cross",
                        rule="passing",
                        line="middle",
                        direction="in",
                    ),
                    Alert("person", 0.9, box, i, at, kind="occupancy", rule="crowd", zone="porch", count=2),
                    Alert("car", 0.4, (1.0, 1.0, 9.0, 9.0), i, at),  # the session's classic alert rule
                )
                if zones
                else ()
            )
            steps.append(Published(view, FrameResult(view.session_id, f, seen, 0.01), alerts, tuple(changes)))
        ended = events.tick(T0 + 5.0)
        steps.append(Published(view, None, (), tuple(ended)))
        # Re-ID's update after the end: the global_id, and the vector as OUTPUT_EMBEDDINGS=true sends it
        for end in ended:
            linked = replace(end.event, global_id=f"identity-{end.event.track_id}")
            embedding = Embedding("google/siglip2-base-patch16-224", (0.6, 0.0, 0.8))
            steps.append(Published(view, None, (), (EventChange("update", linked, end.event, embedding=embedding),)))
        # The VLM stage's words: a rule's answer with its verdict, one that failed, and the description
        # and answers on the ended record's update
        answer = RuleAnswer(
            "door",
            "Is the person carrying a parcel?",
            T0 + 1.0,
            event_id,
            view.session_id,
            view.camera,
            '{"answer": "yes", "score": 0.86, "reason": "a box"}',
            "yes",
            0.86,
            "m",
        )
        failed = RuleAnswer(
            "door",
            "Anyone?",
            T0 + 1.0,
            None,
            view.session_id,
            view.camera,
            error="every key is cooling down after a 429",
        )
        steps.append(Published(view, None, answers=(answer, failed)))
        for end in ended:
            said = replace(end.event, description="A person in a red coat.", description_model="m", answers=(answer,))
            steps.append(Published(view, None, (), (EventChange("update", said, end.event),)))
    kinds = [c.kind for s in steps for c in s.events]
    assert {"new", "update", "end"} <= set(kinds), kinds
    return steps


def test_the_wire_builders_match_the_schema_files():
    sent = []
    for step in steps():
        sent += messages.output_messages(step)
        if step.result is not None:
            sent.append(messages.output_detections(step.session, step.result))
    assert check(sent) == set(NAMES)


def test_event_messages_carry_a_relative_clip_url_when_the_session_records():
    # given a session that records (session-1) and one that does not (session-2)
    sent = [m for step in steps() for m in messages.output_messages(step) if m["schema"] == "rtdetr.event.v1"]
    for message in sent:
        records = message["session_id"] == "session-1"
        for event in (message["before"], message["after"]):
            if event is None:
                continue
            # then an event of the recording session has a clip at its relative URL, the other none
            assert event["has_clip"] is records
            assert event["clip_url"] == (f"/api/v1/events/{event['id']}/clip.mp4" if records else None)
    assert {m["session_id"] for m in sent} == {"session-1", "session-2"}


def test_the_examples_in_the_docs_match_the_schema_files():
    text = (SCHEMAS.parent / "outputs.md").read_text()
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", text, re.DOTALL)]
    assert check([b for b in blocks if "schema" in b]) == set(NAMES)


def test_a_field_the_schema_does_not_know_fails_the_check():
    # given a message the schema knows, when a field is added or a type changes, then it is caught
    (step,) = [s for s in steps() if s.alerts][:1]
    good = messages.output_alert(step.session, step.alerts[0])
    assert check([good])
    with pytest.raises(AssertionError):
        check([{**good, "extra": 1}])
    with pytest.raises(AssertionError):
        check([{**good, "timestamp": "yesterday"}])


def test_webhook_bodies_match_the_schemas():
    receiver = WebhookReceiver("secret")
    sink = WebhookSink(WebhookSettings(urls=[receiver.url], secret="secret", timeout_s=2.0))
    sink.start()
    try:
        items = steps()
        expected = sum(len(s.events) + len(s.alerts) + len(s.answers) for s in items)
        for item in items:
            sink.handle(item)
        assert wait_until(lambda: len(receiver.received()) == expected, 5)
        bodies = [json.loads(r["body"]) for r in receiver.received()]
        assert check(bodies) == {"rtdetr.event.v1", "rtdetr.alert.v1", "rtdetr.answer.v1"}
    finally:
        sink.close(1.0)
        receiver.close()


@needs_mosquitto
def test_mqtt_payloads_match_the_schemas(tmp_path):
    from rtdetr_service.outputs.mqtt import MqttSink

    broker = Mosquitto(free_port(), tmp_path)
    broker.start()
    sink = MqttSink(MqttSettings(url=f"mqtt://127.0.0.1:{broker.port}", queue_size=256))
    sink.start()
    watcher = None
    try:
        assert wait_until(lambda: sink.connected, 5)
        watcher = MqttSubscriber(broker.port)
        items = steps()
        expected = sum(len(s.events) + len(s.alerts) + len(s.answers) for s in items)
        for item in items:
            sink.handle(item)

        def json_payloads() -> list[dict]:
            with watcher.lock:
                ends = ("/events", "/alerts", "/answers")
                return [json.loads(m.payload) for m in watcher.messages if m.topic.endswith(ends)]

        assert wait_until(lambda: len(json_payloads()) == expected, 5)
        assert check(json_payloads()) == {"rtdetr.event.v1", "rtdetr.alert.v1", "rtdetr.answer.v1"}
    finally:
        if watcher is not None:
            watcher.close()
        sink.close(1.0)
        broker.kill()


def test_kafka_values_match_the_schemas():
    skip_without_kafka()
    from rtdetr_service.outputs.kafka import KafkaSink

    broker = Tansu(free_port())
    broker.start()
    sink = KafkaSink(KafkaSettings(bootstrap_servers=broker.bootstrap, linger_ms=5), stats_interval_s=0.2)
    sink.start()
    try:
        items = steps()
        expected = sum(len(s.events) + len(s.alerts) + len(s.answers) + (s.result is not None) for s in items)
        for item in items:
            sink.handle(item)
        assert wait_until(lambda: sink.stats().sent == expected, timeout=10), sink.stats()
        values = [json.loads(m.value()) for m in consume(broker.bootstrap, expected)]
        assert len(values) == expected and check(values) == set(NAMES)
    finally:
        sink.close(1.0)
        broker.kill()
