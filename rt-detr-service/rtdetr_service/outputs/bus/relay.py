"""The viewer's side of the bus: local viewers of a session that another replica runs.

While a session has viewers here and `is_local` says another replica owns it, the relay
subscribes to its frames and events and feeds the local hub with them, exactly as a local
session would, and says so to every owner with a presence message every `presence_every_s`
(trusted for `presence_ttl_s`). Ownership is asked again at every presence tick, so a session
that moves here (or away) switches between relayed and local by itself. When the last local
viewer leaves, the relay unsubscribes and its next presence message no longer names the session.

If the bus goes away, every relayed viewer is told so in words (an `error` message naming the
bus); the client reconnects, subscribes again, presence resumes, and frames come back.

A live owner sends at least a `status` a second while anyone watches. When nothing at all comes for
`silent_s`, its replica died or stalled: the viewers are told the session is `moving` (a `status`
message) and stay connected; the replica that claims it once the lease runs out publishes again (or
it is this one, and the local session feeds the hub), and its `status` says `running`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from rtdetr_service.outputs import messages
from rtdetr_service.outputs.bus.link import PRESENCE_SUBJECT, BusLink, check_session_id, session_of, subject
from rtdetr_service.outputs.hub import FramePayload, Hub

log = logging.getLogger(__name__)

FRAME_BACKLOG = 8  # frames of one relayed session waiting for this replica; beyond that they drop
REQUEST_TIMEOUT_S = 3.0


class BusRelay:
    """Feeds this replica's hub with the sessions other replicas run, for the viewers here."""

    def __init__(
        self,
        link: BusLink,
        hub: Hub,
        *,
        is_local: Callable[[str], bool],
        replica_id: str,
        presence_every_s: float = 2.0,
        presence_ttl_s: float = 6.0,
        silent_s: float = 3.0,
    ) -> None:
        self._link = link
        self._hub = hub
        self._is_local = is_local
        self._replica = replica_id
        self._every_s = presence_every_s
        self._ttl_s = presence_ttl_s
        self._silent_s = silent_s
        self._lock = threading.Lock()
        self._viewers: dict[str, int] = {}  # session -> viewers here (any thread, under the lock)
        self._subs: dict[str, tuple[Subscription, Subscription]] = {}  # relayed sessions (bus loop only)
        self._told_down: set[str] = set()  # sessions whose viewers heard the bus is down (bus loop)
        self._heard: dict[str, float] = {}  # relayed session -> when its owner last sent anything (bus loop)
        self._told_moving: set[str] = set()  # relayed sessions whose viewers heard `moving` since (bus loop)
        self._said_presence = False
        self._ticker: asyncio.Task | None = None
        self._reconciling = asyncio.Lock()  # one reconcile at a time: a session is subscribed once
        self.frames_relayed = 0
        self.bad_messages = 0
        link.on_connect(self._connected)
        link.on_disconnect(self._disconnected)

    def start(self) -> None:
        self._link.call_soon(self._start_ticker)

    def _start_ticker(self) -> None:
        self._ticker = asyncio.get_running_loop().create_task(self._tick_forever())

    # -- the web loop (any thread) ---------------------------------------------------------

    def watch(self, session_id: str) -> None:
        """A viewer of this session connected here; relay it if another replica runs it."""
        check_session_id(session_id)
        with self._lock:
            self._viewers[session_id] = self._viewers.get(session_id, 0) + 1
        self._link.call_soon(self._reconcile_soon)

    def unwatch(self, session_id: str) -> None:
        """A viewer of this session left; the last one ends the relay."""
        with self._lock:
            left = self._viewers.get(session_id, 0) - 1
            if left > 0:
                self._viewers[session_id] = left
            else:
                self._viewers.pop(session_id, None)
        self._link.call_soon(self._reconcile_soon)

    def relayed(self) -> set[str]:
        """The sessions this replica relays now (a snapshot, for reports and tests)."""
        return set(self._subs)

    async def control(self, session_id: str, action: str) -> str | None:
        """Send a viewer's `pause`, `resume` or `stop` to the session's owner; None when done,
        else what went wrong, in words. Awaited on the caller's loop."""
        reply = await asyncio.wrap_future(
            self._link.submit(self._request(session_id, "control", messages.control_request(action)))
        )
        if isinstance(reply, str):
            return reply
        return None if reply.get("ok") else str(reply.get("detail") or "the owner refused it")

    async def stream_info(self, session_id: str) -> dict | str:
        """The session's `stream_info` from its owner, or what went wrong, in words."""
        return await asyncio.wrap_future(self._link.submit(self._request(session_id, "info", {})))

    # -- the bus loop ----------------------------------------------------------------------

    async def _request(self, session_id: str, kind: str, body: dict) -> dict | str:
        check_session_id(session_id)
        if not self._link.connected:
            return self._down_words()
        try:
            msg = await self._link.nc.request(
                subject(session_id, kind), messages.dumps(body).encode(), timeout=REQUEST_TIMEOUT_S
            )
        except (NoRespondersError, NatsTimeoutError, TimeoutError):
            # Every replica hears a session's requests and only its owner answers: silence is
            # the only sign that none owns it now.
            return (
                f"no replica answered for session {session_id} within {REQUEST_TIMEOUT_S:g} s:"
                " it may be moving to another replica, or stopped"
            )
        try:
            return json.loads(msg.data)
        except ValueError:
            return f"the replica that runs session {session_id} answered something that is not JSON"

    def _down_words(self) -> str:
        return (
            f"the bus between replicas ({self._link.where}) is unreachable: this session runs on another"
            " replica, and its frames resume here when the bus is back"
        )

    def _reconcile_soon(self) -> None:
        asyncio.get_running_loop().create_task(self._reconcile_safely())

    async def _tick_forever(self) -> None:
        while True:
            await self._reconcile_safely()
            await asyncio.sleep(self._every_s)

    async def _reconcile_safely(self) -> None:
        try:
            async with self._reconciling:
                await self._reconcile()
        except Exception:  # noqa: BLE001 - the connection went mid-way: the next tick does it again
            log.warning("bus %s: the relay could not catch up now; it tries again", self._link.where, exc_info=True)

    async def _reconcile(self) -> None:
        """Subscribe to the watched sessions another replica runs, drop the others, say presence."""
        with self._lock:
            viewers = dict(self._viewers)
        remote = {sid: n for sid, n in viewers.items() if not self._is_local(sid)}
        for session_id in [sid for sid in self._subs if sid not in remote]:
            await self._unsubscribe(session_id)
        if not self._link.connected:
            for session_id in remote.keys() - self._told_down:
                self._hub.publish_event(session_id, messages.error_message(self._down_words()))
                self._told_down.add(session_id)
            return
        changed = False
        for session_id in remote.keys() - self._subs.keys():
            nc = self._link.nc
            frames = await nc.subscribe(
                subject(session_id, "frames"),
                cb=self._on_frame,
                pending_msgs_limit=FRAME_BACKLOG,
                pending_bytes_limit=FRAME_BACKLOG * 1024 * 1024,
            )
            events = await nc.subscribe(subject(session_id, "events"), cb=self._on_event)
            self._subs[session_id] = (frames, events)
            self._heard[session_id] = time.monotonic()
            changed = True
        self._say_moving()
        if remote or self._said_presence or changed:
            await self._link.nc.publish(
                PRESENCE_SUBJECT, messages.dumps(messages.presence_message(self._replica, remote, self._ttl_s)).encode()
            )
            self._said_presence = bool(remote)

    def _say_moving(self) -> None:
        """Tell the viewers of each relayed session whose owner fell silent that it is moving."""
        now = time.monotonic()
        for session_id in self._subs.keys() - self._told_moving:
            silent = now - self._heard.get(session_id, now)
            if silent >= self._silent_s:
                detail = (
                    f"no word from the replica that runs this session for {silent:.0f} s: another replica takes"
                    " it over when its lease runs out, and frames resume here"
                )
                self._hub.publish_event(session_id, messages.moving_message(session_id, detail))
                self._told_moving.add(session_id)

    def _hear(self, session_id: str) -> None:
        self._heard[session_id] = time.monotonic()
        self._told_moving.discard(session_id)

    async def _unsubscribe(self, session_id: str) -> None:
        self._heard.pop(session_id, None)
        self._told_moving.discard(session_id)
        for sub in self._subs.pop(session_id, ()):
            try:
                await sub.unsubscribe()
            except Exception:  # noqa: BLE001 - a connection that is closing has forgotten it anyway
                log.debug("bus %s: unsubscribing %s failed", self._link.where, session_id, exc_info=True)
        self._told_down.discard(session_id)

    async def _on_frame(self, msg: Msg) -> None:
        session_id = session_of(msg.subject)
        if session_id not in self._subs:
            return  # unsubscribed while this one was on its way
        self._hear(session_id)
        formats = self._hub.formats(session_id)
        try:
            text = None
            if "json" in formats:
                header, jpeg = messages.split_frame_binary(msg.data)
                text = messages.frame_json(header, jpeg)
        except ValueError:
            self.bad_messages += 1
            return
        self._hub.publish_frame(session_id, FramePayload(text=text, binary=msg.data if "binary" in formats else None))
        self.frames_relayed += 1

    async def _on_event(self, msg: Msg) -> None:
        session_id = session_of(msg.subject)
        if session_id not in self._subs:
            return
        self._hear(session_id)
        try:
            message = json.loads(msg.data)
            kind = message["type"]
        except (ValueError, KeyError, TypeError):
            self.bad_messages += 1
            return
        if kind == "session_stopped":
            self._hub.close_session(session_id, message, str(message.get("reason") or "session stopped"))
        else:
            if kind == "status" and message.get("state") == "moving":
                self._told_moving.add(session_id)  # its owner handed it over, and said so
            self._hub.publish_event(session_id, message)

    async def _connected(self) -> None:
        self._told_down.clear()
        await self._reconcile_safely()  # presence at once: owners start publishing without waiting a tick

    async def _disconnected(self) -> None:
        for session_id in self._subs:
            if session_id not in self._told_down:
                self._hub.publish_event(session_id, messages.error_message(self._down_words()))
                self._told_down.add(session_id)

    def close(self) -> None:
        """Stop the presence ticks; the link is closed by whoever made it."""
        if self._ticker is not None:
            self._link.call_soon(self._ticker.cancel)
