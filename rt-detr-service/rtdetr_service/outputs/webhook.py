"""The webhook sink: every event change and alert POSTed as signed JSON to each configured URL.

Each destination has its own bounded queue and thread, so a receiver that is down or slow costs
its own deliveries (retried with capped backoff, then dropped, counted) and never the
publisher's time or another receiver's. Bodies are signed like Stripe's: the header
`X-Rtdetr-Signature: t=<unix>,v1=<hex hmac-sha256(secret, "<t>.<body>")>` lets a receiver check
both who sent it and that it is fresh (refuse an old `t`, a replay).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import queue
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
    """One receiver: its queue, its thread, its retries."""

    def __init__(
        self,
        url: str,
        *,
        secret: bytes,
        client: httpx.Client,
        max_retries: int,
        backoff_s: float,
        backoff_max_s: float,
        queue_size: int,
        clock: Callable[[], float],
    ) -> None:
        self.host = host_of(url)
        self.name = f"webhook-{self.host}"  # before the base builds the thread that carries it
        super().__init__(queue_size=queue_size, batch_max=1)
        self._url = url
        self._secret = secret
        self._client = client
        self._max_retries = max_retries
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self._clock = clock
        self.retries = 0

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
        try:
            response = self._client.post(self._url, content=body, headers=headers)
        except httpx.TransportError as exc:  # connection refused / reset, timeouts, protocol errors
            raise _Retryable(f"{type(exc).__name__} from {self.host}: {self._scrub(exc)}") from None
        if response.status_code >= 500:
            raise _Retryable(f"HTTP {response.status_code} from {self.host}")
        if response.status_code >= 300:
            # 4xx: the receiver refuses this body, and will again. 3xx: redirects are not
            # followed (a redirect could carry the signed body to a host nobody configured).
            raise RuntimeError(f"HTTP {response.status_code} from {self.host} (not retried)")

    def _scrub(self, exc: Exception) -> str:
        return str(exc).replace(self._url, self.host) or "no detail"

    def close(self, timeout: float = 5.0) -> None:
        super().close(timeout)
        # What the thread could not send in time is given up, counted, so the thread ends soon.
        given_up = 0
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
            given_up += 1
        if given_up:
            with self._lock:
                self.dropped += given_up
            log.warning("webhook %s: %d message(s) not delivered before shutdown", self.host, given_up)


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
        # Redirects are refused; proxies from the environment are honoured (HTTPS_PROXY, NO_PROXY).
        self._client = httpx.Client(
            timeout=settings.timeout_s,
            follow_redirects=False,
            headers={"User-Agent": "rtdetr-service-webhook/1"},
        )
        self._destinations = [
            _Destination(
                url,
                secret=settings.secret.get_secret_value().encode(),
                client=self._client,
                max_retries=settings.max_retries,
                backoff_s=backoff_s,
                backoff_max_s=backoff_max_s,
                queue_size=settings.queue_size,
                clock=clock,
            )
            for url in urls
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
        self._client.close()

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
