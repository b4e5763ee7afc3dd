"""The webhook sink: every event change and alert POSTed as signed JSON to each configured URL.

Each destination has its own bounded queue and thread, so a receiver that is down or slow costs
its own deliveries (retried with capped backoff, then dropped, counted) and never the
publisher's time or another receiver's. Bodies are signed like Stripe's: the header
`X-Rtdetr-Signature: t=<unix>,v1=<hex hmac-sha256(secret, "<t>.<body>")>` lets a receiver check
both who sent it and that it is fresh (refuse an old `t`, a replay).

A receiver can cost each request at most `timeout_s` and a few KB: the whole exchange (connect,
send, the answer) is bounded by a watchdog that shuts the connection down when the time is up
(httpx's timeouts are per read, and a trickled answer never lets one expire), and of an answer's
body only the first ANSWER_READ_MAX bytes are read. A 2xx is delivered once its status and those
bytes (or the whole, shorter body) are in; the rest is never read.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import socket
import threading
import time
import uuid
from dataclasses import replace
from typing import Callable
from urllib.parse import urlsplit

import httpx

from rtdetr_service.core.results import Published
from rtdetr_service.outputs.base import QueuedSink, SinkStats
from rtdetr_service.outputs.messages import dumps, output_messages
from rtdetr_service.outputs.settings import WebhookSettings

log = logging.getLogger(__name__)
# httpx logs every request at INFO with its whole URL, and webhook URLs carry tokens in their
# paths (Slack, Home Assistant); the redacting log filter knows query strings and userinfo only.
logging.getLogger("httpx").setLevel(logging.WARNING)

SIGNATURE_HEADER = "X-Rtdetr-Signature"
DELIVERY_HEADER = "X-Rtdetr-Delivery"  # one id per message, the same on every retry: receivers dedupe by it
_STATES = ("ok", "degraded", "failing")
ANSWER_READ_MAX = 4096  # bytes of an answer's body read at most: enough for an error message


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The signature header's value for `body` sent at `timestamp` (Unix seconds)."""
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def host_of(url: str) -> str:
    """What of a URL may be logged: its host and port (the path or query may hold a token)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{host}:{parts.port}" if parts.port else host


class _Retryable(Exception):
    """A delivery that may succeed later: 5xx, connection error, timeout."""


class _Destination(QueuedSink):
    """One receiver: its queue, its thread, its connection, its retries."""

    def __init__(
        self, url: str, settings: WebhookSettings, *, backoff_s: float, backoff_max_s: float, clock: Callable[[], float]
    ) -> None:
        self.host = host_of(url)
        self.name = f"webhook-{self.host}"  # before the base builds the thread that carries it
        super().__init__(queue_size=settings.queue_size, batch_max=1)
        self._url = url
        self._secret = settings.secret.get_secret_value().encode()
        self._timeout_s = settings.timeout_s
        self._max_retries = settings.max_retries
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self._clock = clock
        self.retries = 0
        # Redirects are refused; proxies from the environment are honoured (HTTPS_PROXY, NO_PROXY).
        # One connection, this destination's own: the socket the watchdog cuts is never another's.
        self._client = httpx.Client(
            timeout=settings.timeout_s,
            follow_redirects=False,
            headers={"User-Agent": "rtdetr-service-webhook/1"},
            limits=httpx.Limits(max_connections=1),
        )
        self._socket: socket.socket | None = None  # the connection's, once one was made

    def write(self, batch: list) -> None:
        delivery, body = batch[0]
        for attempt in range(self._max_retries + 1):
            try:
                self._post(delivery, body)
                return
            except _Retryable as exc:
                # Closing: one attempt each for what is left, no waiting.
                if attempt == self._max_retries or self._stop.is_set():
                    raise
                delay = min(self._backoff_s * 2**attempt, self._backoff_max_s)
                log.debug("webhook %s: %s; retrying in %.1fs", self.host, exc, delay)
                with self._lock:
                    self.retries += 1
                if self._stop.wait(delay):
                    raise

    def _post(self, delivery: str, body: bytes) -> None:
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self._secret, int(self._clock()), body),
            DELIVERY_HEADER: delivery,
        }
        started = time.monotonic()
        watchdog = threading.Timer(self._timeout_s, self._cut)
        watchdog.daemon = True  # never what keeps the process from exiting
        watchdog.start()
        try:
            status = self._exchange(body, headers)
        except httpx.TransportError as exc:  # connection refused / reset, timeouts, cut, protocol errors
            raise _Retryable(self._why(exc, time.monotonic() - started)) from None
        finally:
            watchdog.cancel()
        if status >= 500:
            raise _Retryable(f"HTTP {status} from {self.host}")
        if status >= 300:
            # 4xx: the receiver refuses this body, and will again. 3xx: redirects are not
            # followed (a redirect could carry the signed body to a host nobody configured).
            raise RuntimeError(f"HTTP {status} from {self.host} (not retried)")

    def _exchange(self, body: bytes, headers: dict) -> int:
        """POST `body`; the answer's status, once at most ANSWER_READ_MAX bytes of its body are in."""
        extensions = {"trace": self._traced}
        with self._client.stream("POST", self._url, content=body, headers=headers, extensions=extensions) as response:
            read = 0
            for chunk in response.iter_raw():  # raw: a compressed answer is never inflated
                read += len(chunk)
                if read >= ANSWER_READ_MAX:
                    break  # leaving unread: closing the response closes the connection
            return response.status_code

    def _traced(self, event: str, info: dict) -> None:
        # A new connection (after TLS, its wrapped socket) is the one the watchdog will cut.
        if event.endswith(("connect_tcp.complete", "start_tls.complete")):
            self._socket = info["return_value"].get_extra_info("socket") or self._socket

    def _cut(self) -> None:
        """Shut the connection down, which wakes a read or write blocked on it (a close would not)."""
        sock = self._socket
        if sock is not None:
            try:
                # The plain socket's shutdown, for TLS too: SSLSocket's own drops its SSL state first.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass  # closed already

    def _why(self, exc: httpx.TransportError, took_s: float) -> str:
        """What went wrong, in words, without the URL (its path or query may hold a token)."""
        if isinstance(exc, httpx.ConnectTimeout):
            return f"could not connect to {self.host} within {self._timeout_s} s"
        if isinstance(exc, httpx.TimeoutException) or took_s >= self._timeout_s:
            return f"no complete answer from {self.host} within {self._timeout_s} s"
        return f"{type(exc).__name__} from {self.host}: {self._scrub(exc)}"

    def _scrub(self, exc: Exception) -> str:
        return str(exc).replace(self._url, self.host) or "no detail"

    def given_up(self, count: int) -> None:
        super().given_up(count)
        log.warning("webhook %s: %d message(s) not delivered before shutdown", self.host, count)

    def close(self, timeout: float = 5.0) -> None:
        self.drain(timeout)  # what the thread could not send in time is given up, counted
        self._cut()  # a request still in flight ends now, not at its timeout; nothing is left to follow it
        self._client.close()


class WebhookSink:
    """POSTs event changes and alerts to every URL; `stats()` sums its destinations."""

    name = "webhook"

    def __init__(
        self,
        settings: WebhookSettings,
        *,
        backoff_s: float = 0.5,
        backoff_max_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        urls = [url.get_secret_value() for url in settings.urls]
        if not urls:
            raise ValueError("WEBHOOK_URLS: at least one URL is needed")
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"WEBHOOK_URLS: {host_of(url)!r} is not an http(s) URL")
        self._destinations = [
            _Destination(url, settings, backoff_s=backoff_s, backoff_max_s=backoff_max_s, clock=clock) for url in urls
        ]
        self._closed = False

    @property
    def hosts(self) -> list[str]:
        return [d.host for d in self._destinations]

    def start(self) -> None:
        for destination in self._destinations:
            destination.start()

    def handle(self, item: Published) -> None:
        """Queue each message of the item for every destination; never waits."""
        for message in output_messages(item):
            entry = (uuid.uuid4().hex, dumps(message).encode())
            for destination in self._destinations:
                destination.offer(entry, item.session.session_id)

    def session_ended(self, session_id: str) -> None:
        pass

    def close(self, timeout: float = 5.0) -> None:
        """Flush for at most `timeout` in all, then give up what is left (counted as dropped)."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout
        for destination in self._destinations:
            destination._stop.set()  # all stop retrying at once, not one after the other
        for destination in self._destinations:
            destination.close(max(0.0, deadline - time.monotonic()))

    def stats(self) -> SinkStats:
        parts = [d.stats() for d in self._destinations]
        worst = max(parts, key=lambda s: _STATES.index(s.state))
        errors = [s.last_error for s in parts if s.last_error]
        return SinkStats(
            name=self.name,
            state=worst.state,
            handled=sum(s.handled for s in parts),
            sent=sum(s.sent for s in parts),
            failed=sum(s.failed for s in parts),
            dropped=sum(s.dropped for s in parts),
            queued=sum(s.queued for s in parts),
            queue_size=sum(s.queue_size for s in parts),
            last_error=worst.last_error or (errors[-1] if errors else None),
            detail={
                "retries": sum(d.retries for d in self._destinations),
                "destinations": [
                    {**replace(s, name=d.host).as_dict(), "retries": d.retries}
                    for d, s in zip(self._destinations, parts, strict=True)
                ],
            },
        )
