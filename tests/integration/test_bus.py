"""The bus between replicas against a real nats-server: replica A owns a session, viewers on
replica B watch it without knowing; presence gates the JPEG; control goes back; the bus dies,
comes back, freezes; the owner never waits and never holds more than its bound."""

from __future__ import annotations

import asyncio
import json
import struct
import time
import tracemalloc
import uuid

import numpy as np
import pytest
from websockets.sync.client import connect

from rtdetr_service.core.results import Alert, Published, SessionView
from rtdetr_service.core.types import Detection, Frame, FrameResult
from rtdetr_service.outputs import messages

from bus_replica import Replica
from feeds import T0, CameraFeed, handle_durations
from servers import NatsServer, needs_nats
from support import free_port, wait_until

pytestmark = needs_nats
PERSON = [Detection(0, "person", (10.0, 5.0, 30.0, 40.0), 0.9, 1)]


@pytest.fixture
def bus(tmp_path):
    server = NatsServer(free_port(), tmp_path)
    yield server
    server.kill()


@pytest.fixture
def replicas(bus, closing):
    def make(name: str, **options) -> Replica:
        return closing(Replica(name, bus.url, **options).start())

    return make


@pytest.fixture
def session_id() -> str:
    return str(uuid.uuid4())


def view(session_id: str) -> SessionView:
    return SessionView(session_id, "gate", enable_drawing=True, jpeg_quality=80)


class Viewer:
    """A WebSocket viewer of one session on one replica; what a look-up passes over is kept for
    the next one."""

    def __init__(self, replica: Replica, session_id: str, fmt: str = "json") -> None:
        self.ws = connect(f"{replica.ws_base}/{session_id}?format={fmt}", max_size=None)
        self.unread: list = []

    def next(self, predicate, timeout: float = 10.0):
        """The first message (text or bytes, as sent) whose parsed form `predicate` accepts."""
        for raw in self.unread:
            if predicate(_parsed(raw)):
                self.unread.remove(raw)
                return raw
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            raw = self.ws.recv(timeout=left)
            if predicate(_parsed(raw)):
                return raw
            self.unread.append(raw)
        raise TimeoutError("no such message")

    def frame(self, min_index: int = 0, timeout: float = 10.0):
        return self.next(lambda m: _frame_index(m) is not None and _frame_index(m) >= min_index, timeout)

    def send(self, message: dict) -> None:
        self.ws.send(json.dumps(message))

    def close(self) -> None:
        self.ws.close()


def _parsed(raw):
    return raw if isinstance(raw, bytes) else json.loads(raw)


def _frame_index(message) -> int | None:
    if isinstance(message, bytes):
        (n,) = struct.unpack(">I", message[:4])
        return json.loads(message[4 : 4 + n])["frame_index"]
    return message["frame_index"] if message.get("type") == "frame_result" else None


@pytest.fixture
def viewers(closing):
    def make(replica: Replica, session_id: str, fmt: str = "json") -> Viewer:
        return closing(Viewer(replica, session_id, fmt))

    return make


def feed_until(replica: Replica, feed: CameraFeed, done, detections=PERSON, limit: int = 400) -> None:
    """Publish steps on the owner, 20 ms apart, until `done()` (a viewer got what it waits for)."""
    for _ in range(limit):
        replica.publish(feed.step(detections))
        if done():
            return
        time.sleep(0.02)
    raise AssertionError("the viewer never got it")


def test_a_viewer_on_another_replica_gets_the_same_frames_in_both_formats(bus, replicas, viewers, session_id):
    # given replica A owns a session, with a JSON and a binary viewer on A and on B
    bus.start()
    a, b = replicas("a"), replicas("b")
    a.owns.add(session_id)
    assert wait_until(lambda: a.link.connected and b.link.connected)
    local = {fmt: viewers(a, session_id, fmt) for fmt in ("json", "binary")}
    remote = {fmt: viewers(b, session_id, fmt) for fmt in ("json", "binary")}
    assert wait_until(lambda: a.sink.remote_viewers(session_id) == 2), "B's presence never reached A"
    assert b.relay.relayed() == {session_id} and a.relay.relayed() == set()

    # when A publishes frames, an alert and a status
    feed = CameraFeed(view(session_id))
    feed_until(a, feed, lambda: a.sink.stats().sent >= 5)
    before = a.encoder.calls
    alert = Alert("person", 0.9, (10.0, 5.0, 30.0, 40.0), feed.index, T0, track_id=1, kind="enter", rule="door")
    step = feed.step(PERSON, (alert,))
    a.publish(step)
    a.owner_hub.publish_event(session_id, {"type": "status", "session_id": session_id, "state": "running"})

    # then B's viewers get that frame byte for byte as A's viewers do, in both formats
    target = step.result.index
    got = {fmt: (local[fmt].frame(target), remote[fmt].frame(target)) for fmt in ("json", "binary")}
    assert all(here == there for here, there in got.values())
    body = json.loads(got["json"][1])
    assert body["annotated_frame"] and body["detections"][0]["track_id"] == 1
    # one JPEG for that frame, whoever watches where
    assert a.encoder.calls == before + 1
    got = remote["binary"].next(lambda m: isinstance(m, dict) and m.get("type") == "alert")
    assert json.loads(got) == messages.alert_message(session_id, alert)
    assert remote["json"].next(lambda m: isinstance(m, dict) and m.get("type") == "status")

    # when the session stops on A, B's viewers are told and closed
    stopped = messages.stopped_message(session_id, "stopped by request")
    a.owner_hub.close_session(session_id, stopped, "stopped by request")
    assert (
        json.loads(remote["json"].next(lambda m: isinstance(m, dict) and m.get("type") == "session_stopped")) == stopped
    )
    with pytest.raises(Exception):  # noqa: B017 - the close ends the socket: any of websockets' closed errors
        remote["json"].next(lambda m: False, timeout=5)
    assert remote["json"].ws.close_code == 1000


def test_no_jpeg_is_made_while_no_replica_reports_a_viewer(bus, replicas, viewers, session_id):
    # given A owns a session nobody watches
    bus.start()
    a, b = replicas("a"), replicas("b")
    a.owns.add(session_id)
    assert wait_until(lambda: a.link.connected and b.link.connected)
    feed = CameraFeed(view(session_id))
    for _ in range(20):
        a.publish(feed.step(PERSON))
    # then nothing is drawn, encoded or sent
    assert a.encoder.calls == 0 and a.sink.stats().sent == 0

    # when a viewer on B comes, frames are encoded and reach it
    watcher = viewers(b, session_id)
    feed_until(a, feed, lambda: a.sink.remote_viewers(session_id) == 1)
    feed_until(a, feed, lambda: a.sink.stats().sent >= 3)
    assert watcher.frame(0)
    assert a.encoder.calls > 0

    # when it leaves, B says so at once and A stops encoding
    watcher.close()
    assert wait_until(lambda: a.sink.remote_viewers(session_id) == 0)
    calls, sent = a.encoder.calls, a.sink.stats().sent
    for _ in range(20):
        a.publish(feed.step(PERSON))
    assert (a.encoder.calls, a.sink.stats().sent) == (calls, sent)
    assert b.relay.relayed() == set()


def test_control_from_a_remote_viewer_reaches_the_owner_and_refusals_come_back_in_words(
    bus, replicas, viewers, session_id
):
    bus.start()
    a, b = replicas("a"), replicas("b")
    a.owns.add(session_id)
    watcher = viewers(b, session_id)
    assert wait_until(lambda: a.sink.remote_viewers(session_id) == 1)

    # a pause and a resume from B's viewer reach A's callback
    watcher.send({"type": "control", "action": "pause"})
    watcher.send({"type": "control", "action": "resume"})
    assert wait_until(lambda: a.controls == [(session_id, "pause"), (session_id, "resume")])
    assert b.controls == []  # B heard the request too, and left it to the owner

    # a new viewer's first message comes from the owner
    assert asyncio.run(b.relay.stream_info(session_id)) == {
        "type": "stream_info",
        "session_id": session_id,
        "replica": "a",
    }

    # the owner's refusal reaches the viewer in words
    a.refuse[session_id] = "the session is moving to another replica"
    watcher.send({"type": "control", "action": "stop"})
    error = json.loads(watcher.next(lambda m: isinstance(m, dict) and m.get("type") == "error"))
    assert error["detail"] == "the session is moving to another replica"

    # a session no replica owns: the viewer is told so
    a.owns.clear()
    watcher.send({"type": "control", "action": "stop"})
    error = json.loads(watcher.next(lambda m: isinstance(m, dict) and m.get("type") == "error"))
    assert error["detail"].startswith(f"no replica answered for session {session_id} within")


def test_the_bus_killed_and_restarted_mid_stream_costs_the_owner_nothing_and_the_relay_resumes(
    bus, replicas, viewers, session_id, caplog
):
    # given frames flowing from A to a viewer on B
    caplog.set_level("DEBUG")
    bus.start()
    a, b = replicas("a"), replicas("b")
    a.owns.add(session_id)
    watcher = viewers(b, session_id)
    local = viewers(a, session_id)
    feed = CameraFeed(view(session_id))
    feed_until(a, feed, lambda: a.sink.remote_viewers(session_id) == 1)
    feed_until(a, feed, lambda: a.sink.stats().sent >= 3)
    assert watcher.frame(0)

    # when the bus dies
    bus.kill()
    assert wait_until(lambda: not a.link.connected and not b.link.connected)
    steps = [feed.step(PERSON) for _ in range(100)]
    durations = handle_durations(a.sink, steps)
    # then the owner goes on: its local viewer still gets frames, the bus's are dropped and counted
    a.publish(feed.step(PERSON))
    assert local.frame(feed.index - 1)
    stats = a.sink.stats()
    assert max(durations) < 0.05 and stats.dropped >= 100
    assert stats.state == "failing" and f"127.0.0.1:{bus.port}" in stats.last_error and "bus" in stats.last_error
    # and the remote viewer is told in words, naming the bus
    told = json.loads(watcher.next(lambda m: isinstance(m, dict) and m.get("type") == "error"))
    assert "bus between replicas" in told["detail"] and f"127.0.0.1:{bus.port}" in told["detail"]

    # when it comes back on the same port, frames resume at the remote viewer
    bus.start()
    assert wait_until(lambda: a.link.connected and b.link.connected, timeout=15)
    mark = feed.index
    feed_until(a, feed, lambda: a.sink.remote_viewers(session_id) == 1 and a.sink.stats().sent > stats.sent + 3)
    assert watcher.frame(mark)
    assert a.sink.stats().state in ("ok", "degraded")
    password = bus.url.split(":")[2].split("@")[0]
    assert password not in caplog.text and password not in json.dumps(a.sink.stats().as_dict())


def test_a_bus_down_at_start_is_a_state_in_words_until_it_comes(bus, replicas, viewers, session_id):
    a, b = replicas("a"), replicas("b")  # nothing listens yet
    a.owns.add(session_id)
    watcher = viewers(b, session_id)
    assert wait_until(lambda: "unreachable" in (a.sink.stats().last_error or ""))
    assert a.sink.stats().state == "failing"
    told = json.loads(watcher.next(lambda m: isinstance(m, dict) and m.get("type") == "error"))
    assert "bus between replicas" in told["detail"]
    a.publish(CameraFeed(view(session_id)).step(PERSON))  # nobody known to watch yet: nothing to drop

    bus.start()
    feed = CameraFeed(view(session_id))
    feed_until(a, feed, lambda: a.sink.remote_viewers(session_id) == 1)
    feed_until(a, feed, lambda: a.sink.stats().sent >= 2)
    assert watcher.frame(0)
    assert a.sink.stats().last_error is None


def noisy_step(session_id: str, index: int) -> Published:
    """A 640x480 frame of noise: JPEG cannot shrink it, so each message is a few hundred KB."""
    image = np.random.default_rng(index).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    frame = Frame(image, index, T0 + index / 10, index / 10)
    return Published(view(session_id), FrameResult(session_id, frame, tuple(PERSON), 0.01))


def test_a_frozen_bus_cannot_grow_the_owners_memory(bus, replicas, viewers, session_id):
    # given frames flowing from A to B, A allowed 1 MiB waiting for the server
    bus.start()
    limit = 1024 * 1024
    a, b = replicas("a", pending_bytes=limit), replicas("b")
    a.owns.add(session_id)
    watcher = viewers(b, session_id)
    assert wait_until(lambda: a.sink.remote_viewers(session_id) == 1)
    a.publish(noisy_step(session_id, 0))
    assert watcher.frame(0)

    # when the server freezes with its sockets open (it reads nothing more), and A makes 40 MB
    bus.pause()
    tracemalloc.start()
    try:
        steps = [noisy_step(session_id, index) for index in range(1, 121)]
        made = sum(len(a.encoder._encoder.encode(step.result.frame.image, 80)) for step in steps)
        baseline, _ = tracemalloc.get_traced_memory()
        held = []
        for step in steps:
            a.publish(step)
            held.append(a.link.buffered_bytes())
        time.sleep(0.5)  # the bus thread has had its go at them
        grown = tracemalloc.get_traced_memory()[0] - baseline
        # then A holds at most its limit twice over (the client's buffer, and one in the socket),
        # and the newest frame: what it made beyond that was dropped and counted
        assert made > 20 * limit
        assert max(held) <= 2 * limit + 512 * 1024
        assert grown <= 3 * limit, f"{grown} bytes more held after {made} bytes of frames"
        assert a.sink.stats().dropped > 50
    finally:
        tracemalloc.stop()
        bus.resume()
    # and after it thaws, frames reach B again
    assert wait_until(lambda: a.link.connected, timeout=20)
    mark = 1000
    for index in range(mark, mark + 200):
        a.publish(noisy_step(session_id, index))
        if wait_until(lambda: _has_frame_from(watcher, mark), timeout=0.1):
            return
    raise AssertionError("no frame reached B after the bus thawed")


def _has_frame_from(watcher: Viewer, mark: int) -> bool:
    try:
        watcher.unread.append(watcher.ws.recv(timeout=0))
    except TimeoutError:
        pass
    return any((_frame_index(_parsed(r)) or -1) >= mark for r in watcher.unread)
