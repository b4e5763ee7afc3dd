"""Faults inside the pipeline cost the frame or the call they happen in, never a thread, a slot of
MAX_SESSIONS, a camera connection or a wrong state. The network reader is replaced by a fake that
emits frames; the worker, session and manager under test are the real ones."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from rtdetr_service.core.types import Frame, ModelInfo, StreamInfo
from rtdetr_service.inference.worker import InferenceWorker
from rtdetr_service.ingest.reader import ReaderState, StreamReader
from rtdetr_service.outputs.websocket import WebSocketSink
from rtdetr_service.sessions.manager import SessionManager
from rtdetr_service.sessions.session import Session, SessionError, SessionOptions, SessionState
from rtdetr_service.web.errors import ERRORS
from rtdetr_service.web.settings import Settings

from support import wait_until

MODEL = ModelInfo(name="fake", backend="fake", device="cpu", trained=True, class_names=("person",))


def _settings(**values) -> Settings:
    return Settings(_env_file=None, api_keys="k", **values)


class NoDetections:
    info = MODEL

    def detect(self, images, thresholds):
        return [[] for _ in images]


class Hub:
    """The hub as a session sees it, with one JSON viewer."""

    def __init__(self) -> None:
        self.frames: list = []
        self.events: list = []

    def viewer_count(self, session_id):
        return 1

    def formats(self, session_id):
        return {"json"}

    def publish_frame(self, session_id, payload):
        self.frames.append(payload)

    def publish_event(self, session_id, message):
        self.events.append(message)

    def close_session(self, session_id, message, reason):
        self.events.append(message)


class Encoder:
    def __init__(self, failures: int = 0) -> None:
        self.failures = failures

    def encode(self, image, quality):
        if self.failures:
            self.failures -= 1
            raise RuntimeError("CUDA error: out of memory")
        return b"\xff\xd8jpeg"


class FakeCamera:
    """StreamReader's interface: open(), then a thread emitting 64x48 frames until stop()."""

    def __init__(self, url, *, on_frame, on_state, name="reader", **_) -> None:
        self._on_frame, self._on_state = on_frame, on_state
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.info: StreamInfo | None = None
        self.reconnects = 0
        self.decode_errors = 0

    def open(self) -> StreamInfo:
        self.info = StreamInfo(64, 48, 30.0, "h264")
        return self.info

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        index = 0
        while not self._stop.wait(0.01):
            index += 1
            self._on_frame(Frame(np.zeros((48, 64, 3), np.uint8), index, time.time(), time.monotonic()))

    def stop(self, timeout=1.0) -> bool:
        self._stop.set()
        return self.join(timeout)

    def join(self, timeout=None) -> bool:
        if self._thread.ident:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


def _run(scenario):
    """asyncio.run(scenario()) on a thread of its own: a session-wide fixture (Playwright's sync
    API) may keep an event loop running on the main thread."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = asyncio.run(scenario())
        except BaseException as exc:  # noqa: BLE001 - re-raised on the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(60)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


# -- the shared inference worker ------------------------------------------------------------


class _Unconvertible:
    """A decoded picture whose conversion to BGR fails (a swscale error, out of memory)."""

    width, height = 64, 48

    def to_ndarray(self, format):
        raise ValueError("conversion failed")


class _Client:
    id = "s1"
    confidence_threshold = 0.5

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.delivered: list[int] = []

    def take_frame(self):
        return self.frames.pop() if self.frames else None

    def deliver(self, frame, detections, inference_s):
        self.delivered.append(frame.index)


def _good(index: int) -> Frame:
    return Frame(np.zeros((48, 64, 3), np.uint8), index, time.time(), time.monotonic())


def test_a_frame_that_cannot_be_converted_costs_that_frame_only():
    worker = InferenceWorker(NoDetections(), max_batch=4, batch_wait_s=0.0)
    client = _Client()
    worker.register(client)
    worker.start()
    try:
        client.frames.append(Frame(None, 1, time.time(), time.monotonic(), decoded=_Unconvertible()))
        worker.notify()
        assert wait_until(lambda: worker.errors == 1, timeout=5)
        client.frames.append(_good(2))
        worker.notify()
        assert wait_until(lambda: client.delivered == [2], timeout=5)
        assert worker.alive and "Frame 1" in worker.last_error
    finally:
        worker.stop()


def test_a_failing_batch_callback_does_not_stop_the_worker():
    def on_batch(size, seconds):
        raise RuntimeError("metrics bug")

    worker = InferenceWorker(NoDetections(), max_batch=4, batch_wait_s=0.0, on_batch=on_batch)
    client = _Client()
    worker.register(client)
    worker.start()
    try:
        for index in (1, 2):
            client.frames.append(_good(index))
            worker.notify()
            assert wait_until(lambda index=index: index in client.delivered, timeout=5)
        assert worker.alive and worker.errors == 2
    finally:
        worker.stop()


# -- a session --------------------------------------------------------------------------------


@pytest.fixture
def worker():
    worker = InferenceWorker(NoDetections(), max_batch=4, batch_wait_s=0.0)
    worker.start()
    yield worker
    worker.stop()


def _session(worker, reader=FakeCamera, encoder=None, hub=None) -> Session:
    hub = hub or Hub()
    return Session(
        SessionOptions("rtsp://camera/x"),
        settings=_settings(),
        worker=worker,
        hub=hub,
        sinks=[WebSocketSink(hub, encoder or Encoder())],
        model=MODEL,
        reader_factory=reader,
    )


def test_one_failed_encode_costs_one_frame_not_the_session(worker):
    hub = Hub()
    session = _session(worker, encoder=Encoder(failures=1), hub=hub)
    session.open()
    session.start()
    try:
        assert wait_until(lambda: len(hub.frames) >= 5, timeout=5)
        assert session.state == SessionState.RUNNING
        stats = session.snapshot().stats
        assert stats.publish_errors == 1 and "out of memory" in session.last_error
    finally:
        session.stop()


class _StatusFailsOnce(Hub):
    """A hub whose first once-a-second status to viewers raises (a bug in a message, say)."""

    def __init__(self) -> None:
        super().__init__()
        self.status_failures = 1

    def publish_event(self, session_id, message):
        on_tick = threading.current_thread().name.startswith("publisher-")
        if self.status_failures and on_tick and message.get("type") == "status":
            self.status_failures -= 1
            raise RuntimeError("status could not be sent")
        super().publish_event(session_id, message)


def test_a_failing_status_tick_costs_that_tick_not_the_session(worker):
    hub = _StatusFailsOnce()
    session = _session(worker, hub=hub)
    session.open()
    session.start()
    try:
        assert wait_until(lambda: hub.status_failures == 0, timeout=5)
        published = session.frames_published
        assert wait_until(lambda: session.frames_published > published + 5, timeout=5)
        assert wait_until(lambda: any(m.get("type") == "status" for m in hub.events), timeout=5)
        assert session.state == SessionState.RUNNING
        assert "status could not be sent" in session.last_error and session.snapshot().stats.publish_errors == 1
    finally:
        session.stop()


class _DropsAtOnce(FakeCamera):
    """The camera closes right after the handshake: the reader reports `reconnecting` at once."""

    def start(self) -> None:
        self._on_state(ReaderState.RECONNECTING, "End of stream; reconnecting in 0.5 s")


def test_start_does_not_hide_a_reconnect_reported_at_once(worker):
    session = _session(worker, reader=_DropsAtOnce)
    session.open()
    session.start()
    try:
        assert session.state == SessionState.RECONNECTING
        assert "reconnecting" in session.last_error
    finally:
        session.stop()


def test_stop_ends_both_threads_promptly(worker):
    session = _session(worker)
    session.open()
    session.start()
    assert wait_until(lambda: session.frames_published > 0, timeout=5)
    started = time.monotonic()
    assert session.stop(timeout=1.0)
    assert time.monotonic() - started < 1.0
    assert session.state == SessionState.STOPPED


# -- the manager --------------------------------------------------------------------------------


def _manager(**settings) -> SessionManager:
    hub = Hub()
    manager = SessionManager(_settings(**settings), hub)
    manager.attach_worker(
        InferenceWorker(NoDetections(), max_batch=1, batch_wait_s=0.0), [WebSocketSink(hub, Encoder())]
    )
    return manager


def test_a_reader_that_cannot_be_built_gives_back_its_place():
    def broken(*args, **kwargs):
        raise RuntimeError("reader could not be built")

    async def scenario():
        manager = _manager(max_sessions=1)
        with pytest.raises(RuntimeError):
            await manager.start(SessionOptions("rtsp://camera/x"), reader_factory=broken)
        session = await manager.start(SessionOptions("rtsp://camera/x"), reader_factory=FakeCamera)
        manager.stop(session.id)

    _run(scenario)


class _Connection:
    def __init__(self) -> None:
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()


class _SlowCamera(StreamReader):
    """The real reader with a camera whose handshake takes 0.5 s."""

    connections: list[_Connection] = []

    def _open_container(self):
        time.sleep(0.5)
        connection = _Connection()
        self.connections.append(connection)
        return connection, StreamInfo(64, 48, 30.0, "h264")


def test_a_start_cancelled_while_opening_closes_the_connection():
    _SlowCamera.connections = []

    async def scenario():
        manager = _manager()
        task = asyncio.create_task(manager.start(SessionOptions("rtsp://camera/x"), reader_factory=_SlowCamera))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return manager

    manager = _run(scenario)
    assert wait_until(lambda: _SlowCamera.connections and _SlowCamera.connections[0].closed.is_set(), timeout=5)
    assert manager.list() == []


def test_shutdown_stops_sessions_that_are_still_opening_and_refuses_new_ones():
    _SlowCamera.connections = []

    async def scenario():
        manager = _manager()
        task = asyncio.create_task(manager.start(SessionOptions("rtsp://camera/x"), reader_factory=_SlowCamera))
        await asyncio.sleep(0.1)
        manager.stop_all("service shutting down")
        with pytest.raises(SessionError) as opening:
            await task
        with pytest.raises(SessionError) as later:
            await manager.start(SessionOptions("rtsp://camera/x"), reader_factory=FakeCamera)
        return manager, opening.value, later.value

    manager, opening, later = _run(scenario)
    assert (ERRORS[opening.code].status, opening.code) == (503, "shutting_down")
    assert (ERRORS[later.code].status, later.code) == (503, "shutting_down")
    assert manager.list() == []
    assert _SlowCamera.connections[0].closed.is_set()


class _EmptyVideo:
    time_base = None
    average_rate = None
    guessed_rate = None


class _DroppedAtOnce(_Connection):
    """A server that completes the handshake, then closes before sending a frame."""

    class streams:  # noqa: N801 - mirrors av's container.streams
        video = [_EmptyVideo()]

    def demux(self, stream):
        return iter(())


class _ScriptedCamera(StreamReader):
    """The real reader, connected to a scripted server: each (re)connection is `connect()`."""

    def __init__(self, connect, states: list[str], **timings) -> None:
        super().__init__(
            "rtsp://camera/x",
            on_frame=lambda frame: None,
            on_state=lambda state, error: states.append(f"{state}: {error}"),
            open_timeout=1,
            **timings,
        )
        self._connect = connect

    def _open_container(self):
        return self._connect(), StreamInfo(64, 48, 30.0, "h264")


def _watch(connect, until, timeout: float, **timings) -> list[str]:
    """Run a scripted camera until `until(states)` holds (asserted), then stop it: its states."""
    states: list[str] = []
    reader = _ScriptedCamera(connect, states, **timings)
    reader.open()
    reader.start()
    try:
        assert wait_until(lambda: until(states), timeout=timeout), states
    finally:
        reader.stop(1.0)
    return states


def _delays(states: list[str]) -> list[float]:
    return [float(s.rsplit("reconnecting in ", 1)[1].split()[0]) for s in states if "reconnecting in" in s]


def test_a_server_that_drops_every_connection_at_once_is_retried_with_growing_delays():
    states = _watch(
        _DroppedAtOnce,
        lambda states: len(_delays(states)) >= 5,
        timeout=15,
        read_timeout=1,
        reconnect_min=0.1,
        reconnect_max=0.8,
    )
    assert _delays(states)[:5] == [0.1, 0.2, 0.4, 0.8, 0.8]


class _Packet:
    def decode(self):
        return []  # accepted, but no picture comes out (a decoder that never recovers)


class _BlindConnection(_DroppedAtOnce):
    def demux(self, stream):
        while True:
            time.sleep(0.01)
            yield _Packet()


def test_data_without_pictures_ends_the_connection(monkeypatch):
    import rtdetr_service.ingest.reader as source

    monkeypatch.setattr(source, "NO_PICTURE_S", 0.3)
    states = _watch(
        _BlindConnection,
        lambda states: any("no decodable picture" in s for s in states),
        timeout=10,
        read_timeout=0.2,
        reconnect_min=5,
        reconnect_max=5,
    )
    assert states[0].startswith("reconnecting")


class _StreamsThenDrops(_DroppedAtOnce):
    """Delivers frames for 0.3 s, then the server closes."""

    def demux(self, stream):
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            time.sleep(0.02)
            yield _FramePacket()


class _FramePacket:
    def decode(self):
        return [_Picture()]


class _Picture:
    pts = None
    width, height = 64, 48

    def to_ndarray(self, format):
        return np.zeros((48, 64, 3), np.uint8)


def test_a_loss_after_a_healthy_run_backs_off_from_the_start(monkeypatch):
    import rtdetr_service.ingest.reader as source

    monkeypatch.setattr(source, "HEALTHY_RUN_S", 0.2)
    states = _watch(
        _StreamsThenDrops,
        lambda states: len(_delays(states)) >= 3,
        timeout=15,
        read_timeout=0.1,
        reconnect_min=0.1,
        reconnect_max=0.8,
    )
    assert _delays(states)[:3] == [0.1, 0.1, 0.1]


class _SlowFor:
    """A sink that takes 0.3 s over every item of one session (a slow disk, a dead receiver
    reached inline), and is instant for the others."""

    name = "slow"

    def __init__(self, slow_session: list) -> None:
        self._slow = slow_session
        self.items: dict[str, int] = {}

    def handle(self, item) -> None:
        sid = item.session.session_id
        self.items[sid] = self.items.get(sid, 0) + 1
        if sid in self._slow:
            time.sleep(0.3)

    def session_ended(self, session_id) -> None:
        pass

    def close(self, timeout) -> None:
        pass

    def stats(self):
        return None


def test_a_slow_output_of_one_session_slows_neither_inference_nor_another_session(worker):
    # given two sessions on one worker, and an output that is slow for the first one only
    slow_ids: list = []
    sink = _SlowFor(slow_ids)
    sessions = []
    for _ in range(2):
        session = Session(
            SessionOptions("rtsp://camera/x"),
            settings=_settings(),
            worker=worker,
            hub=Hub(),
            sinks=[sink],
            model=MODEL,
            reader_factory=FakeCamera,
        )
        session.open()
        sessions.append(session)
    slow, fast = sessions
    slow_ids.append(slow.id)
    for session in sessions:
        session.start()
    try:
        # when they run for a second
        time.sleep(1.0)
        # then both are inferred at the camera's rate (the worker never waits for an output),
        # the fast one publishes everything, and the slow one drops, counted, instead of queueing
        assert slow.frames_inferred > 40 and fast.frames_inferred > 40
        assert abs(slow.frames_inferred - fast.frames_inferred) < 0.25 * fast.frames_inferred
        assert fast.frames_published >= fast.frames_inferred - 2
        assert slow.frames_published <= 5
        # (one result may be in the slot and one in the sink when counted)
        assert slow.dropped_frames >= slow.frames_inferred - slow.frames_published - 2
    finally:
        for session in sessions:
            session.stop()
