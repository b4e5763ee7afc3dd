"""The NATS connection between replicas, on a thread and event loop of its own.

Everything the bus does runs on this loop, so a busy web loop never delays it and a stuck bus
never delays the web loop. The connection is made in the background and retried for ever: a
bus that is down at start or goes away mid-run is a state said in words (`last_error`), never
an exception in a caller. Hooks registered with `on_connect` run after every (re)connect and
those with `on_disconnect` after every loss, so the parts above can say so and catch up.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future

import nats
from nats.aio.client import Client
from nats.errors import SlowConsumerError

from rtdetr_service.core.logs import redact

log = logging.getLogger(__name__)

PREFIX = "rtdetr"
PRESENCE_SUBJECT = f"{PREFIX}.presence"
_FORBIDDEN = set(" \t\r\n.*>")


def subject(session_id: str, kind: str) -> str:
    """The subject of one session's `frames`, `events`, `control` or `info`."""
    return f"{PREFIX}.s.{session_id}.{kind}"


def session_of(subject_name: str) -> str:
    """The session id in a per-session subject (`rtdetr.s.<id>.<kind>`)."""
    return subject_name.split(".")[2]


def check_session_id(session_id: str) -> str:
    """A session id must be one subject token: no dot, wildcard or white space."""
    if not session_id or _FORBIDDEN & set(session_id):
        raise ValueError(f"session id {session_id!r} cannot name a bus subject")
    return session_id


Hook = Callable[[], Awaitable[None]]


class BusLink:
    """One NATS client, connected (and reconnected) in the background on the `bus` thread."""

    def __init__(
        self,
        url: str,
        *,
        name: str = "rtdetr-service",
        pending_bytes: int = 4 * 1024 * 1024,
        reconnect_wait_s: float = 1.0,
        ping_interval_s: float = 5.0,
    ) -> None:
        if not url.startswith(("nats://", "tls://")):
            raise ValueError(f"BUS_URL must be nats://host:port or tls://host:port, not {redact(url)}")
        self.where = redact(url)  # said in every state and log line; the URL itself never is
        self.pending_bytes = pending_bytes
        self._url = url
        self._name = name
        self._reconnect_wait_s = reconnect_wait_s
        self._ping_interval_s = ping_interval_s
        self.nc: Client = nats.NATS()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="bus", daemon=True)
        self._connect_task: asyncio.Task | None = None
        self._on_connect: list[Hook] = []
        self._on_disconnect: list[Hook] = []
        self._lock = threading.Lock()
        self.last_error: str | None = f"not connected yet to the bus at {self.where}"
        self._error_said = False
        self._closed = False
        self.slow_consumer_drops = 0

    # -- lifecycle -------------------------------------------------------------------------

    def on_connect(self, hook: Hook) -> None:
        """Run `hook` on every (re)connection; one added once the link is up runs at once too (an
        owner's sink is made when the model has loaded, long after the link connected). Hooks
        must bear running twice: a connection made while this is called may run it twice."""
        self._on_connect.append(hook)
        self.call_soon(self._run_if_connected, hook)

    def _run_if_connected(self, hook: Hook) -> None:
        if self.nc.is_connected:
            self.loop.create_task(self._run_hooks([hook]))

    def on_disconnect(self, hook: Hook) -> None:
        self._on_disconnect.append(hook)

    def start(self) -> None:
        self._thread.start()
        self.loop.call_soon_threadsafe(self._begin)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def _begin(self) -> None:
        self._connect_task = self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        # max_reconnect_attempts=-1: the first connect and every reconnect are retried for ever.
        await self.nc.connect(
            servers=[self._url],
            name=self._name,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=self._reconnect_wait_s,
            connect_timeout=2,
            ping_interval=self._ping_interval_s,
            max_outstanding_pings=2,
            pending_size=self.pending_bytes,
            flush_timeout=2.0,
            error_cb=self._on_error,
            disconnected_cb=self._lost,
            reconnected_cb=self._back,
        )
        await self._back()

    async def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, SlowConsumerError):
            # A subscription whose callbacks fell behind: its message is dropped. Counted, since
            # for live video it is the expected answer to a burst, not news worth a line each.
            with self._lock:
                self.slow_consumer_drops += 1
            return
        detail = redact(f"{type(exc).__name__}: {exc}".strip(": "))
        if self.nc.is_connected:
            # A slow subscription or a refused publish: worth a line, not a state.
            log.warning("bus %s: %s", self.where, detail)
            return
        with self._lock:
            self.last_error = f"the bus at {self.where} is unreachable: {detail}"[:500]
            first = not self._error_said
            self._error_said = True
        if first:
            log.warning("%s; retrying every %g s", self.last_error, self._reconnect_wait_s)

    async def _lost(self) -> None:
        if self._closed:
            return
        with self._lock:
            self.last_error = f"lost the connection to the bus at {self.where}; reconnecting"
            self._error_said = True
        log.warning("%s", self.last_error)
        await self._run_hooks(self._on_disconnect)

    async def _back(self) -> None:
        with self._lock:
            self.last_error = None
            self._error_said = False
        log.info("connected to the bus at %s", self.where)
        await self._run_hooks(self._on_connect)

    async def _run_hooks(self, hooks: list[Hook]) -> None:
        for hook in hooks:
            try:
                await hook()
            except Exception:  # noqa: BLE001 - one part's hook must not keep the others from theirs
                log.exception("bus %s: a connection hook failed", self.where)

    def close(self, timeout: float = 2.0) -> None:
        """Close the connection and end the thread, within about `timeout`; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            try:
                self.submit(self._close()).result(timeout)
            except Exception:  # noqa: BLE001 - closing a connection that is half gone: end anyway
                log.debug("bus %s: close did not finish cleanly", self.where, exc_info=True)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)

    async def _close(self) -> None:
        if self._connect_task is not None and not self._connect_task.done():
            self._connect_task.cancel()
        if not self.nc.is_closed:
            await self.nc.close()

    # -- for the parts above ---------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.nc.is_connected

    def buffered_bytes(self) -> int:
        """What this process holds for the server: the client's pending buffer and the socket's
        unsent bytes (read on any thread: a figure, not a decision)."""
        # nats-py keeps no public figure for the socket's buffer: read asyncio's, where it is.
        writer = getattr(getattr(self.nc, "_transport", None), "_io_writer", None)
        unsent = writer.transport.get_write_buffer_size() if writer is not None and not writer.is_closing() else 0
        return self.nc.pending_data_size + unsent

    def submit(self, coro) -> Future:
        """Run a coroutine on the bus loop from any thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call_soon(self, fn, *args) -> None:
        """Run `fn(*args)` on the bus loop from any thread; nothing once closed."""
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(fn, *args)
