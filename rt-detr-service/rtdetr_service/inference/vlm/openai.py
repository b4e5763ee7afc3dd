"""`OpenAiVlm`: any OpenAI-compatible chat-completions endpoint that takes images (Ollama, vLLM,
llama.cpp's server, LM Studio, hosted APIs), called through the key pool.

Each request is one POST of `{base}/chat/completions` with the prompt and its JPEGs as base64 data
URLs. It is bounded in all by VLM_TIMEOUT_S: the wait for a key, every attempt and the pauses between
them. Only what may succeed later is retried (5xx, a broken connection, a timeout; capped backoff with
jitter, VLM_RETRIES); a 429 rests that key and the request goes on with another; a 401/403 disables
the key and the request goes on with another; any other 4xx is the request's own fault and fails at
once. The answer is read by schema, its words cut to VLM_ANSWER_MAX_CHARS: they are untrusted text.

Each attempt opens a connection of its own (no keep-alive), so that a watchdog can shut exactly that
connection down when the request's time is up: httpx's timeouts are per read, and a server that
trickles its answer would never let one expire. A VLM answer takes seconds; a connection setup is a
small share of that.

What is logged or said in an error names the endpoint by host and port and a key by its label: the
base URL's path or userinfo and the keys never leave this module except on the wire.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import re
import socket
import threading
import time
from concurrent.futures import CancelledError, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Sequence
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rtdetr_service.core.logs import redact
from rtdetr_service.core.vlm import PURPOSES, VlmAnswer, VlmError, VlmRequest
from rtdetr_service.inference.settings import VlmSettings
from rtdetr_service.inference.vlm.keypool import KeyPool, Lease, Outcome

log = logging.getLogger(__name__)
# httpx logs every request at INFO with its whole URL, and a base URL may hold a token in its path.
logging.getLogger("httpx").setLevel(logging.WARNING)

ANSWER_READ_MAX = 1 << 20  # bytes of an answer read at most (decoded): a completion is far smaller
ERROR_WORDS_MAX = 300  # characters of an endpoint's error message kept in our words
WORKERS_PER_PURPOSE_MAX = 32
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # control characters but tab and newline


# -- the answer's schema ----------------------------------------------------------------------------


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    content: str | list[_Part] | None = None


class _Choice(BaseModel):
    model_config = ConfigDict(extra="ignore")

    message: _Message


class _Completion(BaseModel):
    model_config = ConfigDict(extra="ignore")

    choices: list[_Choice] = Field(min_length=1)


def answer_text(body: bytes, max_chars: int) -> str | None:
    """`choices[0].message.content` of a chat completion (a string, or the text of a list of parts),
    control characters dropped, cut to `max_chars`; None when the body is no chat completion or
    holds no words."""
    try:
        completion = _Completion.model_validate_json(body)
    except ValidationError:
        return None
    content = completion.choices[0].message.content
    if isinstance(content, list):
        content = "".join(part.text or "" for part in content if part.type in ("text", "output_text"))
    text = _CONTROL.sub("", content or "").strip()
    return text[:max_chars] or None


def host_of(url: str) -> str:
    """What of a URL may be said: its host and port (the userinfo or path may hold a token)."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "?", parts.port
    except ValueError:
        return "?"
    return f"{host}:{port}" if port else host


# -- one attempt ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Tried:
    """What one attempt came to: the key's outcome, and the answer's words or why there are none."""

    outcome: Outcome
    words: str
    text: str | None = None
    status: int | None = None
    retry_after: str | None = None


class _Connection:
    """The socket of one attempt's connection, so a watchdog can shut it down mid-read."""

    def __init__(self) -> None:
        self.socket: socket.socket | None = None
        self.cut_done = False

    def trace(self, event: str, info: dict) -> None:
        if event.endswith(("connect_tcp.complete", "start_tls.complete")):
            self.socket = info["return_value"].get_extra_info("socket") or self.socket

    def cut(self) -> None:
        """Shut the connection down, which wakes a read or write blocked on it (a close would not)."""
        self.cut_done = True
        sock = self.socket
        if sock is not None:
            try:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's, TLS included
            except OSError:
                pass  # closed already


# -- the provider -----------------------------------------------------------------------------------------


class OpenAiVlm:
    """`core.vlm.VisionLanguageModel` over an OpenAI-compatible endpoint. Blocking, thread-safe."""

    provider = "openai"
    trained = True  # whatever the endpoint serves is taken as a real model

    def __init__(self, settings: VlmSettings, *, backoff_s: float = 0.5, backoff_max_s: float = 8.0) -> None:
        base = settings.vlm_base_url.get_secret_value().strip()
        if not base:
            raise ValueError("VLM_BASE_URL is empty: the openai provider needs the endpoint's base URL, up to /v1")
        try:
            parts = urlsplit(base)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"VLM_BASE_URL: {host_of(base)!r} is not an http(s) URL")
        if (parts.username or parts.password) and settings.vlm_api_keys:
            # Both would be the Authorization header (httpx sends the URL's as Basic, over the key).
            raise ValueError(
                "VLM_BASE_URL holds a user and password and VLM_API_KEYS is set: both go in the "
                "Authorization header; keep one"
            )
        self.model_id = settings.vlm_model
        self.host = host_of(base)
        self._url = base.rstrip("/") + "/chat/completions"
        self._settings = settings
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self._pool = KeyPool(
            settings.vlm_api_keys,
            strategy=settings.vlm_key_strategy,
            qps=settings.vlm_key_qps,
            rpm=settings.vlm_key_rpm,
            concurrency=settings.vlm_key_concurrency,
            ask_share=settings.vlm_ask_share,
            cooldown_s=settings.vlm_cooldown_s,
        )
        # Every key's secret, to scrub from an endpoint's error words (some echo the key they refused).
        self._secrets = [key.get_secret_value() for key in settings.vlm_api_keys if key.get_secret_value()]
        # Redirects are refused (one could carry a key's header to a host nobody configured); proxies
        # from the environment are honoured (HTTPS_PROXY, NO_PROXY). No keep-alive: see the docstring.
        self._client = httpx.Client(
            timeout=settings.vlm_timeout_s,
            follow_redirects=False,
            headers={"User-Agent": "rtdetr-service-vlm/1"},
            limits=httpx.Limits(max_connections=self._pool.capacity, max_keepalive_connections=0),
        )
        # One pool of threads per purpose: requests waiting for their purpose's share of the keys
        # (POST /ask's) never hold a thread a rule question needs.
        workers = min(self._pool.capacity, WORKERS_PER_PURPOSE_MAX)
        self._executors = {
            purpose: ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"vlm-{purpose}")
            for purpose in PURPOSES
        }
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._connections: set[_Connection] = set()
        self.retries = 0  # attempts made again after a 5xx, a broken connection or a timeout

    # -- the protocol ---------------------------------------------------------------------------------

    def generate(self, requests: Sequence[VlmRequest]) -> list[VlmAnswer | VlmError]:
        """Answer each request, in order, all sent at once within the keys' limits; one request's
        failure is its own `VlmError`. Returns within VLM_TIMEOUT_S (and a moment)."""
        started = time.monotonic()
        deadline = started + self._settings.vlm_timeout_s
        pending: list[object] = []
        for request in requests:
            if (problem := self._refuse(request)) is not None:
                pending.append(problem)
                continue
            try:
                pending.append(self._executors[request.purpose].submit(self._one, request, started, deadline))
            except RuntimeError:  # shut down
                pending.append(VlmError("the VLM is stopping", "closed"))
        results: list[VlmAnswer | VlmError] = []
        for item in pending:
            if isinstance(item, VlmError):
                results.append(item)
                continue
            try:
                # The request bounds itself; the grace covers a thread still finishing its lease.
                results.append(item.result(timeout=max(0.0, deadline - time.monotonic()) + 1.0))
            except CancelledError:
                results.append(VlmError("the VLM is stopping", "closed"))
            except FutureTimeout:
                item.cancel()  # still queued behind others: it never starts
                results.append(self._timed_out(0))
            except Exception as exc:  # noqa: BLE001 - a bug here is one request's failure, said in words
                log.exception("VLM request to %s failed unexpectedly", self.host)
                results.append(VlmError(f"the request failed: {type(exc).__name__}", "upstream"))
        return results

    def status(self) -> dict:
        pool = self._pool.status()
        return {
            "provider": self.provider,
            "model_id": self.model_id,
            "trained": self.trained,
            "host": self.host,
            "closed": self._closed.is_set(),
            "retries": self.retries,
            **pool,
        }

    def close(self) -> None:
        """Waiting requests fail with "closed", requests on the wire are cut; returns at once."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._pool.close()
        for executor in self._executors.values():
            executor.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.cut()
        self._client.close()

    # -- one request ----------------------------------------------------------------------------------

    def _refuse(self, request: VlmRequest) -> VlmError | None:
        """A request that must not be sent, in words: nothing of it leaves the machine."""
        settings = self._settings
        if self._closed.is_set():
            return VlmError("the VLM is stopping", "closed")
        if len(request.prompt) > settings.vlm_prompt_max_chars:
            return VlmError(
                f"the prompt has {len(request.prompt)} characters, more than VLM_PROMPT_MAX_CHARS "
                f"({settings.vlm_prompt_max_chars})",
                "bad_request",
            )
        if len(request.images) > settings.vlm_images_max:
            return VlmError(
                f"{len(request.images)} images in one request, more than VLM_IMAGES_MAX ({settings.vlm_images_max})",
                "bad_request",
            )
        for number, image in enumerate(request.images, 1):
            if not image.startswith(b"\xff\xd8"):
                return VlmError(f"image {number} is not a JPEG", "bad_request")
        return None

    def _body(self, request: VlmRequest) -> bytes:
        content: list[dict] = [{"type": "text", "text": request.prompt}]
        for image in request.images:
            url = "data:image/jpeg;base64," + base64.b64encode(image).decode("ascii")
            content.append({"type": "image_url", "image_url": {"url": url}})
        return json.dumps(
            {
                "model": self.model_id,
                "messages": [{"role": "user", "content": content}],
                "max_tokens": request.max_tokens or self._settings.vlm_max_tokens,
            }
        ).encode()

    def _one(self, request: VlmRequest, started: float, deadline: float) -> VlmAnswer | VlmError:
        body = self._body(request)
        failures = 0  # attempts that may succeed later (5xx, broken, timeout)
        last: _Tried | None = None
        while True:
            if self._closed.is_set():
                return VlmError("the VLM is stopping", "closed")
            if time.monotonic() >= deadline:  # it waited for a thread, or for the pauses, that long
                return self._timed_out(max(0, failures - 1))
            try:
                lease = self._pool.acquire(request.purpose, deadline)
            except VlmError as refusal:
                if last is not None and last.outcome not in ("rate_limited", "refused"):
                    # No key for a retry after a 5xx or a timeout: say both (a 429 or 401 before
                    # is what the refusal itself says).
                    return VlmError(f"{refusal.words}; before that: {last.words}", refusal.reason)
                return refusal
            tried = _Tried("broken", "the request was not sent")
            try:
                tried = self._attempt(lease, body, deadline)
            finally:
                lease.release(tried.outcome, status=tried.status, retry_after=tried.retry_after)
            if tried.outcome == "ok":
                if tried.text is None:  # an answer, but no chat completion: asking again would not help
                    return VlmError(tried.words, "upstream")
                return VlmAnswer(tried.text, self.model_id, time.monotonic() - started, lease.label)
            if self._closed.is_set():
                return VlmError("the VLM is stopping", "closed")
            if tried.outcome in ("rate_limited", "refused"):
                last = tried  # the key rests or is disabled; another one may answer
                continue
            if tried.outcome == "client_error":
                return VlmError(tried.words, "bad_request")
            # 5xx, broken connection, timeout: again, after a pause, while retries and time are left.
            last = tried
            failures += 1
            remaining = deadline - time.monotonic()
            if failures > self._settings.vlm_retries or remaining <= 0:
                if tried.outcome == "timeout":
                    return self._timed_out(failures - 1)
                return VlmError(f"{tried.words} ({failures - 1} retries)", "upstream")
            pause = random.uniform(0, min(self._backoff_max_s, self._backoff_s * 2 ** (failures - 1)))
            if pause >= remaining:
                if tried.outcome == "timeout":
                    return self._timed_out(failures - 1)
                return VlmError(f"{tried.words} (no time left for a retry)", "upstream")
            with self._lock:
                self.retries += 1
            log.debug("VLM %s on %s; retrying in %.2f s", tried.words, lease.label, pause)
            if self._closed.wait(pause):
                return VlmError("the VLM is stopping", "closed")

    def _timed_out(self, retries: int) -> VlmError:
        return VlmError(
            f"no answer from {self.host} within VLM_TIMEOUT_S ({self._settings.vlm_timeout_s:g} s, {retries} retries)",
            "timeout",
        )

    def _attempt(self, lease: Lease, body: bytes, deadline: float) -> _Tried:
        """One POST with `lease`'s key, bounded by `deadline` however the server behaves."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return _Tried("timeout", f"no time left to ask {self.host}")
        connection = _Connection()
        watchdog = threading.Timer(remaining, connection.cut)
        watchdog.daemon = True  # never what keeps the process from exiting
        watchdog.name = "vlm-watchdog"
        with self._lock:
            self._connections.add(connection)
        watchdog.start()
        try:
            return self._exchange(lease, body, remaining, connection)
        except httpx.TimeoutException:
            return _Tried("timeout", f"no answer from {self.host} in time")
        except (httpx.TransportError, RuntimeError) as exc:  # refused, reset, cut; a closed client
            if connection.cut_done or time.monotonic() >= deadline:
                return _Tried("timeout", f"no answer from {self.host} in time")
            return _Tried("broken", f"{type(exc).__name__} from {self.host}: {self._scrub(str(exc))}")
        finally:
            watchdog.cancel()
            with self._lock:
                self._connections.discard(connection)

    def _exchange(self, lease: Lease, body: bytes, remaining: float, connection: _Connection) -> _Tried:
        headers = {"Content-Type": "application/json", **lease.headers}
        with self._client.stream(
            "POST",
            self._url,
            content=body,
            headers=headers,
            timeout=httpx.Timeout(remaining),
            extensions={"trace": connection.trace},
        ) as response:
            status = response.status_code
            data = bytearray()
            for chunk in response.iter_bytes():  # decoded: the bound holds for a compressed answer too
                data += chunk
                if len(data) > ANSWER_READ_MAX:
                    if 200 <= status < 300:
                        return _Tried("ok", f"the answer from {self.host} is over {ANSWER_READ_MAX} bytes")
                    break  # an error's first bytes are enough to say what it was
            retry_after = response.headers.get("retry-after")
        if 200 <= status < 300:
            text = answer_text(bytes(data), self._settings.vlm_answer_max_chars)
            if text is None:
                return _Tried("ok", f"the answer from {self.host} holds no text in choices[0].message.content")
            return _Tried("ok", "answered", text=text, status=status)
        said = f"HTTP {status} from {self.host}"
        if detail := self._error_words(bytes(data)):
            said += f": {detail}"
        if status == 429:
            return _Tried("rate_limited", said, status=status, retry_after=retry_after)
        if status in (401, 403):
            return _Tried("refused", said, status=status)
        if status >= 500:
            return _Tried("server_error", said, status=status)
        if 300 <= status < 400:
            return _Tried("client_error", f"{said} (redirects are not followed: check VLM_BASE_URL)", status=status)
        return _Tried("client_error", said, status=status)

    def _error_words(self, body: bytes) -> str:
        """The endpoint's own error message (OpenAI's `{"error": {"message": …}}`, or a plain one),
        short, without control characters, and scrubbed of any key it echoes."""
        try:
            doc = json.loads(body[:65536])
        except ValueError:
            return ""
        message = doc.get("error") if isinstance(doc, dict) else None
        if isinstance(message, dict):
            message = message.get("message")
        if not isinstance(message, str):
            return ""
        return self._scrub(_CONTROL.sub(" ", message).strip())[:ERROR_WORDS_MAX]

    def _scrub(self, text: str) -> str:
        """No key and no base URL in words we say: ours replaced, key-like tokens masked."""
        text = text.replace(self._url, self.host)
        base = self._settings.vlm_base_url.get_secret_value()
        if base:
            text = text.replace(base, self.host)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return redact(text)


def from_settings(settings: VlmSettings) -> OpenAiVlm:
    """The provider VLM_PROVIDER=openai names, built from the VLM_* settings (the loader's door)."""
    return OpenAiVlm(settings)
