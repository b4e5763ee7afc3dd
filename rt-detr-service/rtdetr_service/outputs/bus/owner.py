"""The owner's side of the bus: a session's frames, alerts and status for viewers on other replicas.

`BusSink` is a sink like the others: `handle()` runs on the session's publisher thread and never
waits. While no replica reports a viewer of the session (presence, with a time to live) it does
nothing at all, and no JPEG is made for the bus. While one does, each frame goes out in the
binary wire form (header + JPEG; the relay makes the JSON form when its viewers want it) on
`rtdetr.s.<id>.frames`, and alerts, status, zones and `session_stopped` on `.events`. NATS core
is at-most-once: a frame the bus cannot take now is dropped and counted, never waited for. Per
session one frame (the newest) and `EVENT_BACKLOG` messages wait for the bus thread; beyond that,
and beyond the client's pending-bytes limit, messages are dropped and counted.

Control messages from remote viewers arrive on `.control` (every replica hears them; only the
one `is_local` says owns the session acts and answers), and `.info` asks for the `stream_info`
a new remote viewer gets first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from nats.aio.msg import Msg
from nats.errors import MaxPayloadError

from rtdetr_service.core.logs import redact
from rtdetr_service.core.results import Published
from rtdetr_service.outputs import messages
from rtdetr_service.outputs.base import DEGRADED_FOR_S, SinkStats
from rtdetr_service.outputs.bus.link import PRESENCE_SUBJECT, BusLink, session_of, subject
from rtdetr_service.outputs.websocket import FrameRenderer

log = logging.getLogger(__name__)

EVENT_BACKLOG = 64  # messages per session waiting for the bus thread; beyond this the oldest go
ACTIONS = ("pause", "resume", "stop")


class Presence:
    """Which sessions have viewers on other replicas: each replica's latest presence message,
    trusted for its `ttl_s`, so a replica that dies stops counting by itself."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._replicas: dict[str, tuple[float, dict[str, int]]] = {}  # replica -> (until, viewers)

    def update(self, message: dict) -> None:
        """Take a presence message; its `sessions` replace what that replica said before."""
        replica, ttl, sessions = message["replica"], float(message["ttl_s"]), message["sessions"]
        if not isinstance(replica, str) or not isinstance(sessions, dict) or not 0 < ttl <= 60:
            raise ValueError("not a presence message")
        viewers = {str(k): int(v) for k, v in sessions.items() if int(v) > 0}
        with self._lock:
            self._replicas[replica] = (self._clock() + ttl, viewers)

    def viewers(self, session_id: str) -> int:
        """Viewers of this session on other replicas, as far as any unexpired presence says."""
        now = self._clock()
        with self._lock:
            for replica in [r for r, (until, _) in self._replicas.items() if until <= now]:
                del self._replicas[replica]
            return sum(viewers.get(session_id, 0) for _, viewers in self._replicas.values())


@dataclass(slots=True)
class _Outbox:
    frame: bytes | None = None
    events: deque = field(default_factory=lambda: deque(maxlen=EVENT_BACKLOG))


class BusSink:
    """Publishes the sessions this replica runs for viewers elsewhere; answers their control.

    `is_local(session_id)` says whether this replica owns a session (cheap, any thread).
    `on_control(session_id, action)` carries out `pause`, `resume` or `stop`; it runs in a worker
    thread and raises with a message in words to refuse. `stream_info(session_id)` is the
    `stream_info` message of a local session, or None.
    """

    name = "bus"

    def __init__(
        self,
        link: BusLink,
        renderer: FrameRenderer,
        *,
        is_local: Callable[[str], bool],
        on_control: Callable[[str, str], None],
        stream_info: Callable[[str], dict | None] = lambda session_id: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._link = link
        self._renderer = renderer
        self._is_local = is_local
        self._on_control = on_control
        self._stream_info = stream_info
        self.presence = Presence(clock)
        self._lock = threading.Lock()
        self._outboxes: dict[str, _Outbox] = {}
        self._woken = False  # a wake-up is on its way to the bus loop: no need for another
        self._wake = asyncio.Event()
        self._pump: asyncio.Task | None = None
        self._subscribed = False
        self.handled = 0
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self.last_error: str | None = None
        self._last_drop = float("-inf")
        link.on_connect(self._connected)

    def start(self) -> None:
        """Start publishing (the link may still be connecting)."""
        self._link.call_soon(self._start_pump)

    def _start_pump(self) -> None:
        self._pump = asyncio.get_running_loop().create_task(self._run_pump())

    # -- publisher threads ---------------------------------------------------------------

    def handle(self, item: Published) -> None:
        session_id = item.session.session_id
        if not self.presence.viewers(session_id):
            return  # nobody watches elsewhere: no JPEG, no message
        with self._lock:
            self.handled += 1
        for alert in item.alerts:
            self._queue_event(session_id, messages.alert_message(session_id, alert))
        for answer in item.answers:
            self._queue_event(session_id, messages.answer_message(session_id, answer))
        result = item.result
        if result is not None:
            header = messages.frame_header(session_id, result, result.detections)
            self._queue(session_id, frame=messages.frame_binary(header, self._renderer.jpeg(item)))

    def publish_event(self, session_id: str, message: dict) -> None:
        """Status, zones or any other message for the session's remote viewers (any thread)."""
        if self.presence.viewers(session_id):
            self._queue_event(session_id, message)

    def close_session(self, session_id: str, message: dict) -> None:
        """Tell the remote viewers the session ended (`session_stopped`); their relays close them."""
        self.publish_event(session_id, message)

    def remote_viewers(self, session_id: str) -> int:
        return self.presence.viewers(session_id)

    def _queue_event(self, session_id: str, message: dict) -> None:
        self._queue(session_id, event=messages.dumps(message).encode())

    def _queue(self, session_id: str, *, frame: bytes | None = None, event: bytes | None = None) -> None:
        replaced = 0
        with self._lock:
            box = self._outboxes.setdefault(session_id, _Outbox())
            if frame is not None:
                replaced += box.frame is not None
                box.frame = frame
            if event is not None:
                replaced += len(box.events) == EVENT_BACKLOG
                box.events.append(event)
            wake, self._woken = not self._woken, True
        if replaced:
            self._count_drop(replaced)
        if wake:
            self._link.call_soon(self._wake.set)

    def _count_drop(self, n: int = 1) -> None:
        with self._lock:
            self.dropped += n
            self._last_drop = time.monotonic()

    def session_ended(self, session_id: str) -> None:
        with self._lock:
            self._outboxes.pop(session_id, None)
        self._renderer.forget(session_id)

    # -- the bus loop --------------------------------------------------------------------

    async def _run_pump(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            with self._lock:
                boxes, self._outboxes, self._woken = self._outboxes, {}, False
            for session_id, box in boxes.items():
                for event in box.events:
                    await self._send(subject(session_id, "events"), event)
                if box.frame is not None:
                    await self._send(subject(session_id, "frames"), box.frame)

    async def _send(self, subject_name: str, data: bytes) -> None:
        """Publish one message, or drop it (counted) when the bus cannot take it now."""
        nc = self._link.nc
        if not nc.is_connected or nc.pending_data_size + len(data) > self._link.pending_bytes:
            # Down, or the server takes less than we make: live video is dropped, not buffered.
            self._count_drop()
            return
        try:
            await nc.publish(subject_name, data)
        except MaxPayloadError:
            self._failed(
                f"a {len(data)}-byte message is over the bus server's max_payload ({nc.max_payload} bytes):"
                " raise max_payload in nats-server's configuration, or lower the session's jpeg_quality"
            )
        except Exception as exc:  # noqa: BLE001 - a refused publish costs this message, not the pump
            self._failed(redact(f"publishing on {subject_name} failed: {type(exc).__name__}: {exc}"))
        else:
            with self._lock:
                self.sent += 1

    def _failed(self, error: str) -> None:
        with self._lock:
            self.failed += 1
            first = self.last_error != error
            self.last_error = error[:500]
        if first:
            log.warning("bus %s: %s", self._link.where, error)

    async def _connected(self) -> None:
        if self._subscribed:
            return  # the client subscribes again by itself after a reconnect
        self._subscribed = True
        nc = self._link.nc
        await nc.subscribe(PRESENCE_SUBJECT, cb=self._on_presence)
        await nc.subscribe(subject("*", "control"), cb=self._on_control_request)
        await nc.subscribe(subject("*", "info"), cb=self._on_info_request)

    async def _on_presence(self, msg: Msg) -> None:
        try:
            self.presence.update(json.loads(msg.data))
        except (ValueError, KeyError, TypeError):
            log.warning("bus %s: ignored a message on %s that is not a presence message", self._link.where, msg.subject)

    async def _on_control_request(self, msg: Msg) -> None:
        session_id = session_of(msg.subject)
        if not self._is_local(session_id):
            return  # another replica owns it and answers
        try:
            action = json.loads(msg.data).get("action")
        except (ValueError, AttributeError):
            action = None
        if action not in ACTIONS:
            error = f"unknown control action {action!r}: expected pause, resume or stop"
        else:
            try:
                await asyncio.to_thread(self._on_control, session_id, action)
                error = None
            except Exception as exc:  # noqa: BLE001 - the refusal, in words, goes back to the viewer
                error = str(exc) or type(exc).__name__
        if msg.reply:
            await msg.respond(messages.dumps(messages.control_reply(error)).encode())

    async def _on_info_request(self, msg: Msg) -> None:
        session_id = session_of(msg.subject)
        if not self._is_local(session_id) or not msg.reply:
            return
        info = await asyncio.to_thread(self._stream_info, session_id)
        if info is not None:
            await msg.respond(messages.dumps(info).encode())

    # -- reporting -----------------------------------------------------------------------

    def stats(self) -> SinkStats:
        link_error = self._link.last_error
        with self._lock:
            recent_drop = time.monotonic() - self._last_drop < DEGRADED_FOR_S
            if link_error is not None or not self._link.connected:
                state, error = "failing", link_error or f"not connected to the bus at {self._link.where}"
            else:
                state, error = ("degraded" if recent_drop else "ok"), self.last_error
            return SinkStats(
                name=self.name,
                state=state,
                handled=self.handled,
                sent=self.sent,
                failed=self.failed,
                dropped=self.dropped,
                last_error=error,
                detail={"bus": self._link.where, "buffered_bytes": self._link.buffered_bytes()},
            )

    def close(self, timeout: float = 0.0) -> None:
        """The link is closed by whoever made it; the pump ends with its loop."""
        if self._pump is not None:
            self._link.call_soon(self._pump.cancel)


class OwnerHub:
    """What a session's own code talks to when the bus is on: the local hub for viewers here, the
    bus for viewers elsewhere. Its viewer count is theirs together, so a session watched only
    from another replica still sends its status once a second."""

    def __init__(self, hub, bus: BusSink) -> None:
        self._hub = hub
        self._bus = bus

    def publish_event(self, session_id: str, message: dict) -> None:
        self._hub.publish_event(session_id, message)
        self._bus.publish_event(session_id, message)

    def close_session(self, session_id: str, message: dict, reason: str) -> None:
        self._hub.close_session(session_id, message, reason)
        self._bus.close_session(session_id, message)

    def viewer_count(self, session_id: str) -> int:
        return self._hub.viewer_count(session_id) + self._bus.remote_viewers(session_id)
