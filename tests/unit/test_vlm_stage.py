"""The VLM stage as a sink, fed by the real event lifecycle on drawn frames, with the scripted model: one
description per described event (at its end, or once after `after_s` live), its pictures, bounded words,
the update to every other output; a rule's question answered (verdict parsed, or the error in words),
published as an answer and onto its event; a session that asks nothing asks nothing; the bounded queue
while the model loads or stalls, drops counted by purpose; and a late answer never brings back a live
record after the event's end."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import pytest

from rtdetr_service.analytics.events import EventLifecycle
from rtdetr_service.core.results import Alert, EventChange, Published, SessionView
from rtdetr_service.core.slot import ModelSlot
from rtdetr_service.core.types import Detection, Frame, FrameResult
from rtdetr_service.core.vlm import VERDICT_INSTRUCTIONS, DescribeOptions, VlmError, VlmRequest
from rtdetr_service.outputs import messages
from rtdetr_service.outputs.base import SinkStats
from rtdetr_service.outputs.registry import connect_republishers
from rtdetr_service.outputs.vlm.settings import VlmStageSettings
from rtdetr_service.outputs.vlm.stage import VlmLimits, VlmStage, VlmStageParts

from scripted_vlm import ScriptedVlm, default_script
from support import wait_until

T0 = 1_700_000_000.0
RED, BLUE = (0, 0, 255), (255, 0, 0)  # BGR
SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"


class Scene:
    """One session's camera: grey frames with coloured boxes, through a real event lifecycle."""

    def __init__(self, session_id: str, describe: DescribeOptions | None = None, label: str = "person") -> None:
        self.view = SessionView(session_id, "gate", enable_drawing=False, jpeg_quality=75, describe=describe)
        self.events = EventLifecycle(session_id, "gate", end_after_s=1.0, snapshot_interval_s=0.5)
        self.label = label
        self.index = 0

    def step(self, t: float, *objects: tuple[int, tuple[int, int, int], float], ask: str | None = None) -> Published:
        """The frame at `t` s with each (track id, colour, x) as a 20x30 box; with `ask`, the first
        object fires a rule that asks it."""
        image = np.full((120, 160, 3), 128, np.uint8)
        detections = []
        for track, colour, x in objects:
            x1 = int(x)
            image[40:70, x1 : x1 + 20] = colour
            detections.append(Detection(0, self.label, (float(x1), 40.0, float(x1 + 20), 70.0), 0.8, track))
        frame = Frame(image, self.index, T0 + t, t)
        self.index += 1
        fired = {detections[0].track_id: ["door"]} if ask else None
        changes = self.events.update(frame, detections, rules_fired=fired)
        alerts = ()
        if ask:
            event_id = next(c.event.id for c in changes if c.event.track_id == detections[0].track_id)
            det = detections[0]
            alerts = (
                Alert(det.class_name, det.confidence, det.bbox, frame.index, frame.timestamp, det.track_id,
                      kind="enter", rule="door", zone="porch", event_id=event_id, ask=ask),
            )  # fmt: skip
        result = FrameResult(self.view.session_id, frame, tuple(detections), 0.01)
        return Published(self.view, result, alerts, tuple(changes))

    def walk(self, start: float, seconds: float, *objects, fps: float = 10.0) -> list[Published]:
        """The objects walking right for `seconds`, then the step that ends them."""
        n = int(seconds * fps)
        steps = [
            self.step(start + i / fps, *((track, colour, 5 + i * 100 / n) for track, colour in objects))
            for i in range(n)
        ]
        steps.append(self.tick(start + seconds + 2.0))
        return steps

    def tick(self, t: float) -> Published:
        return Published(self.view, None, (), tuple(self.events.tick(T0 + t)))


class Keeper:
    """Stands for every other output: keeps each step it is handed, in order."""

    name = "keeper"

    def __init__(self) -> None:
        self.items: list[Published] = []
        self.threads: list[str] = []
        self._lock = threading.Lock()

    def handle(self, item: Published) -> None:
        with self._lock:
            self.items.append(item)
            self.threads.append(threading.current_thread().name)

    def session_ended(self, session_id: str) -> None:
        pass

    def close(self, timeout: float = 0.0) -> None:
        pass

    def stats(self) -> SinkStats:
        return SinkStats(self.name)

    def changes(self) -> list[EventChange]:
        with self._lock:
            return [c for item in self.items for c in item.events]

    def described(self) -> dict[str, str]:
        """event id -> description, from the updates that bring one."""
        return {c.event.id: c.event.description for c in self.changes() if c.event.description is not None}

    def answers(self):
        with self._lock:
            return [a for item in self.items for a in item.answers]


def build(vlm: ScriptedVlm | None = None, limits: VlmLimits | None = None, **settings):
    slot = ModelSlot("the vision-language model")
    if vlm is not None:
        slot.set(vlm)
    stage = VlmStage(VlmStageParts(VlmStageSettings(**settings), limits or VlmLimits(), slot))
    keeper = Keeper()
    connect_republishers([keeper, stage])
    stage.start()
    return stage, keeper, slot


def publish(sinks, steps) -> None:
    """As the publisher does: every step to every sink, in order (the keeper first, as the store is)."""
    for step in steps:
        for sink in sinks:
            sink.handle(step)


@pytest.fixture
def stages():
    made = []
    yield made
    for stage in made:
        stage.close(2.0)


def test_an_ended_event_of_a_described_session_gets_one_description_with_its_pictures(stages):
    # given a session that describes its people, and a walk of one person
    vlm = ScriptedVlm()
    stage, keeper, _ = build(vlm, vlm_describe_frames=3)
    stages.append(stage)
    scene = Scene("s1", DescribeOptions(prompt="What is it wearing?"))
    steps = scene.walk(0.0, 3.0, (1, RED))
    event_id = next(c.event.id for s in steps for c in s.events if c.kind == "new")
    # when the walk is published, nothing is asked while it lives
    publish([keeper, stage], steps[:-1])
    assert stage.stats().detail["purposes"]["describe"]["asked"] == 0
    # and at its end, one description comes back as one more update of the ended record
    publish([keeper, stage], steps[-1:])
    assert wait_until(lambda: event_id in keeper.described(), timeout=10)
    (request,) = vlm.requests
    assert request.purpose == "describe" and request.prompt.startswith("What is it wearing?")
    assert "person" in request.prompt
    # its pictures: JPEGs of the red object with some context, the best view and at most 2 more
    assert 1 <= len(request.images) <= 3
    for data in request.images:
        picture = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert picture is not None and max(picture.shape[:2]) <= 768
        assert (np.abs(picture.astype(int) - RED).sum(axis=2) < 60).mean() > 0.2  # mostly the object
        assert (np.abs(picture.astype(int) - 128).sum(axis=2) < 30).mean() > 0.05  # and around it
    update = next(c for c in keeper.changes() if c.event.description is not None)
    assert update.kind == "update" and update.event.end_time is not None
    assert update.event.description == default_script(request) and update.event.description_model == "scripted-vlm"
    assert update.before.description is None and update.before.end_time == update.event.end_time
    # and the event message carries it, valid against the schema
    message = messages.output_event(scene.view, update)
    schema = json.loads((SCHEMAS / "rtdetr.event.v1.json").read_text())
    jsonschema.validate(message, schema)
    assert message["after"]["description"] == update.event.description
    assert stage.stats().detail["purposes"]["describe"] == {"asked": 1, "answered": 1, "failed": 0, "dropped": 0}


def test_after_s_describes_a_live_event_once_and_its_update_goes_out_on_the_publisher_thread(stages):
    # given a session that describes after 1 s live
    vlm = ScriptedVlm()
    stage, keeper, _ = build(vlm)
    stages.append(stage)
    scene = Scene("s1", DescribeOptions(after_s=1.0))
    steps = scene.walk(0.0, 4.0, (1, RED))
    # when the person has lived 1.5 s, the request goes (once), and the answer waits for the next step
    publish([keeper, stage], steps[:15])
    assert wait_until(lambda: stage.stats().detail["purposes"]["describe"]["answered"] == 1, timeout=10)
    assert not keeper.described()
    publisher = threading.Thread(target=publish, args=([keeper, stage], steps[15:16]), name="publisher-test")
    publisher.start()
    publisher.join()
    (update,) = [c for c in keeper.changes() if c.event.description is not None]
    assert update.event.end_time is None and keeper.threads[-1] == "publisher-test"
    # and it carries the newest record the publisher gave
    newest = [c.event for c in keeper.changes() if c.event.description is None][-1]
    assert _with(update.event, description=None, description_model=None) == newest
    # and the rest of the life and its end ask nothing more
    publish([keeper, stage], steps[16:])
    assert stage.stats().detail["purposes"]["describe"]["asked"] == 1
    assert len(vlm.requests) == 1


def test_only_the_labels_asked_for_are_described_and_an_undescribed_session_asks_nothing(stages):
    vlm = ScriptedVlm()
    stage, keeper, _ = build(vlm)
    stages.append(stage)
    cars_only = Scene("s1", DescribeOptions(labels=frozenset({"car"})))
    undescribed = Scene("s2")
    publish([keeper, stage], cars_only.walk(0.0, 2.0, (1, RED)) + undescribed.walk(0.0, 2.0, (1, BLUE)))
    cars = Scene("s3", DescribeOptions(labels=frozenset({"car"})), label="car")
    publish([keeper, stage], cars.walk(0.0, 2.0, (1, RED)))
    assert wait_until(lambda: len(keeper.described()) == 1, timeout=10)
    assert [r.purpose for r in vlm.requests] == ["describe"]
    assert {c.event.session_id for c in keeper.changes() if c.event.description} == {"s3"}


def test_descriptions_are_cut_to_the_bound(stages):
    vlm = ScriptedVlm(lambda request: "  " + "word " * 5000)
    stage, keeper, _ = build(vlm, limits=VlmLimits(answer_max_chars=100))
    stages.append(stage)
    scene = Scene("s1", DescribeOptions())
    publish([keeper, stage], scene.walk(0.0, 2.0, (1, RED)))
    assert wait_until(lambda: keeper.described(), timeout=10)
    (text,) = keeper.described().values()
    assert 0 < len(text) <= 100 and text == text.strip()


def test_a_rule_that_asks_is_answered_with_its_verdict_and_the_answer_goes_onto_its_event(stages):
    # given a session whose rule asks a question
    vlm = ScriptedVlm()
    stage, keeper, _ = build(vlm)
    stages.append(stage)
    scene = Scene("s1")
    steps = [scene.step(0.0, (1, RED, 10.0)), scene.step(0.1, (1, RED, 12.0))]
    steps.append(scene.step(0.2, (1, RED, 14.0), ask="Is the person carrying a parcel?"))
    event_id = steps[-1].alerts[0].event_id
    # when the alert is published, the answer comes back on its own, the verdict parsed
    publish([keeper, stage], steps)
    assert wait_until(lambda: keeper.answers(), timeout=10)
    (answer,) = keeper.answers()
    assert (answer.rule, answer.question, answer.event_id) == ("door", "Is the person carrying a parcel?", event_id)
    assert (answer.answer, answer.score, answer.error, answer.model_id) == ("yes", 0.9, None, "scripted-vlm")
    assert answer.time == steps[-1].alerts[0].timestamp and answer.camera == "gate" and answer.session_id == "s1"
    (request,) = vlm.requests
    assert request.purpose == "rule" and request.prompt.startswith("Is the person carrying a parcel?")
    assert VERDICT_INSTRUCTIONS in request.prompt
    # the picture is the whole frame, shrunk no further than it is, with the box drawn in red
    picture = cv2.imdecode(np.frombuffer(request.images[0], np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape[:2] == (120, 160)
    # and the event, still live, gets the answer at the publisher's next step
    assert not [c for c in keeper.changes() if c.event.answers]
    publish([keeper, stage], [scene.step(0.3, (1, RED, 16.0))])
    (update,) = [c for c in keeper.changes() if c.event.answers]
    assert update.event.answers == (answer,) and update.event.end_time is None
    # the answer's message fits its schema, and the event's too
    checks = [
        (messages.output_answer(scene.view, answer), "rtdetr.answer.v1"),
        (messages.output_event(scene.view, update), "rtdetr.event.v1"),
    ]
    for message, name in checks:
        jsonschema.validate(message, json.loads((SCHEMAS / f"{name}.json").read_text()))
    assert messages.answer_message("s1", answer)["type"] == "answer"


def test_a_failing_model_gives_the_rule_an_answer_with_the_error_in_words(stages):
    vlm = ScriptedVlm(lambda request: VlmError("every key is cooling down after a 429", "rate_limited"))
    stage, keeper, _ = build(vlm)
    stages.append(stage)
    scene = Scene("s1")
    publish([keeper, stage], [scene.step(0.0, (1, RED, 10.0)), scene.step(0.1, (1, RED, 12.0), ask="Anyone?")])
    assert wait_until(lambda: keeper.answers(), timeout=10)
    (answer,) = keeper.answers()
    assert answer.answer is None and answer.score is None and answer.error == "every key is cooling down after a 429"
    stats = stage.stats()
    assert stats.detail["purposes"]["rule"]["failed"] == 1 and stats.state == "failing"
    assert "cooling down" in stats.last_error


def test_words_without_a_verdict_are_kept_and_said(stages):
    vlm = ScriptedVlm(lambda request: "I think so, probably.")
    stage, keeper, _ = build(vlm)
    stages.append(stage)
    scene = Scene("s1")
    publish([keeper, stage], [scene.step(0.0, (1, RED, 10.0)), scene.step(0.1, (1, RED, 12.0), ask="Anyone?")])
    assert wait_until(lambda: keeper.answers(), timeout=10)
    (answer,) = keeper.answers()
    assert answer.text == "I think so, probably." and answer.answer is None and "no yes/no verdict" in answer.error


def test_an_answer_after_the_end_goes_out_at_once_with_the_final_record_and_reid_global_id(stages):
    # given a stalled model and a rule that asked about a person who then leaves
    vlm = ScriptedVlm()
    vlm.stall()
    stage, keeper, _ = build(vlm)
    stages.append(stage)
    scene = Scene("s1")
    steps = [scene.step(0.0, (1, RED, 10.0)), scene.step(0.1, (1, RED, 12.0), ask="Anyone?")]
    publish([keeper, stage], steps + [scene.tick(5.0)])
    (end,) = [c for c in keeper.changes() if c.kind == "end"]
    # and Re-ID gives the ended event its global_id (from its stage's thread)
    linked = EventChange("update", _with(end.event, global_id="g-1"), end.event)
    stage.handle(Published(scene.view, None, (), (linked,)))
    # when the model answers, the update comes from the stage's thread with the final record
    vlm.resume()
    assert wait_until(lambda: [c for c in keeper.changes() if c.event.answers], timeout=10)
    (update,) = [c for c in keeper.changes() if c.event.answers]
    assert update.event.end_time == end.event.end_time and update.event.global_id == "g-1"
    assert keeper.threads[-1] == "sink-vlm"


def test_a_late_answer_never_brings_back_a_live_record_after_the_end(stages):
    # given an answer that arrives while the event lives, and the event that ends before the next step
    vlm = ScriptedVlm()
    stage, keeper, _ = build(vlm)
    stages.append(stage)
    scene = Scene("s1")
    publish([keeper, stage], [scene.step(0.0, (1, RED, 10.0)), scene.step(0.1, (1, RED, 12.0), ask="Anyone?")])
    assert wait_until(lambda: keeper.answers(), timeout=10)
    publish([keeper, stage], [scene.tick(5.0)])
    # then every change after the end is of the ended record
    kinds = [(c.kind, c.event.end_time is None) for c in keeper.changes()]
    after_end = kinds[[k for k, _ in kinds].index("end") :]
    assert all(not live for _, live in after_end), kinds
    assert [c for c in keeper.changes() if c.event.answers][0].event.end_time is not None


def test_while_the_model_loads_requests_wait_within_the_bound_and_the_stage_says_so(stages):
    stage, keeper, slot = build(None, vlm_queue_size=2)
    stages.append(stage)
    for i in range(5):
        publish([keeper, stage], Scene(f"s{i}", DescribeOptions()).walk(0.0, 1.0, (1, RED)))
    stats = stage.stats()
    assert (stats.queued, stats.dropped, stats.state) == (2, 3, "degraded")
    assert "loading" in stats.detail["detail"] and stats.detail["purposes"]["describe"]["dropped"] == 3
    vlm = ScriptedVlm()
    slot.set(vlm)
    assert wait_until(lambda: len(keeper.described()) == 2, timeout=10)


def test_a_model_that_failed_to_load_is_said_in_words(stages):
    stage, _, slot = build(None)
    stages.append(stage)
    slot.fail("no weights in /models/vlm")
    stats = stage.stats()
    assert stats.state == "failing" and "no weights in /models/vlm" in stats.detail["detail"]


def test_a_stalled_model_never_slows_the_publisher_and_its_drops_are_counted(stages):
    # given a stalled model and a small queue
    vlm = ScriptedVlm()
    vlm.stall()
    stage, keeper, _ = build(vlm, vlm_queue_size=3, vlm_workers=1)
    stages.append(stage)
    scene = Scene("s1")
    steps = [scene.step(0.0, (1, RED, 10.0))]
    for i in range(1, 9):  # one new person a frame, each firing the asking rule
        steps.append(scene.step(i * 0.1, (i + 1, RED, 10.0 + i), ask="Anyone?"))
    # when every step is published, all return (nothing waits on the model)
    publish([keeper, stage], steps)
    assert wait_until(lambda: stage.stats().detail["in_flight"] == 1, timeout=10)
    stats = stage.stats()
    # then one is with the model, at most three wait, the rest were dropped, counted
    assert stats.queued <= 3 and 1 + stats.queued + stats.dropped == 8 and stats.dropped >= 4
    assert stats.detail["purposes"]["rule"]["dropped"] == stats.dropped and stats.state == "degraded"
    vlm.resume()
    assert wait_until(lambda: len(keeper.answers()) == 8 - stats.dropped, timeout=10)


def test_descriptions_and_rule_questions_of_one_session_do_not_crowd_each_other_out(stages):
    # given a model that is not there yet and room for 4: a flood of descriptions, then one question
    stage, keeper, slot = build(None, vlm_queue_size=4)
    stages.append(stage)
    scene = Scene("s1", DescribeOptions())
    for i in range(6):
        publish([keeper, stage], scene.walk(i * 10.0, 1.0, (i + 1, RED)))
    publish([keeper, stage], [scene.step(70.0, (99, RED, 10.0)), scene.step(70.1, (99, RED, 12.0), ask="Anyone?")])
    # then the question is kept, and descriptions paid for the flood
    slot.set(ScriptedVlm())
    assert wait_until(lambda: keeper.answers(), timeout=10)
    assert stage.stats().detail["purposes"]["rule"]["dropped"] == 0


def test_the_updates_never_come_back_to_the_stage(stages):
    vlm = ScriptedVlm()
    stage, keeper, _ = build(vlm)
    stages.append(stage)
    seen = []
    original = stage.handle
    stage.handle = lambda item: (seen.append(item), original(item))
    publish([keeper, stage], Scene("s1", DescribeOptions()).walk(0.0, 2.0, (1, RED)))
    assert wait_until(lambda: keeper.described(), timeout=10)
    assert not [i for i in seen if any(c.event.description for c in i.events)]


def test_a_session_that_ended_leaves_nothing_behind(stages):
    stage, keeper, _ = build(ScriptedVlm())
    stages.append(stage)
    scene = Scene("s1", DescribeOptions())
    publish([keeper, stage], scene.walk(0.0, 2.0, (1, RED)))
    stage.session_ended("s1")
    assert wait_until(lambda: keeper.described(), timeout=10)
    assert "s1" not in stage._sessions


def _with(record, **fields):
    from dataclasses import replace

    return replace(record, **fields)


def test_a_request_holds_jpegs_within_the_image_bound():
    # the bound on every picture, whatever the frame's size
    from rtdetr_service.outputs.vlm.views import alert_view, cut_view, jpeg

    big = np.zeros((1080, 1920, 3), np.uint8)
    for view in (
        alert_view(big, (100.0, 100.0, 900.0, 1000.0), 256),
        cut_view(big, (0.0, 0.0, 1900.0, 1000.0), 256, 0.25),
    ):
        assert max(view.shape[:2]) <= 256
        assert cv2.imdecode(np.frombuffer(jpeg(view), np.uint8), cv2.IMREAD_COLOR).shape == view.shape
    assert VlmRequest("x", (jpeg(np.zeros((8, 8, 3), np.uint8)),)).images[0][:2] == b"\xff\xd8"
