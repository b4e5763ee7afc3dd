"""The pool of API keys a hosted VLM is called with (VLM_API_KEYS).

Hosted endpoints limit each key: requests per second and per minute, requests at once, and a 429
with `Retry-After` when a key is over. The pool keeps each key inside its limits before the endpoint
has to say so, rests a key the endpoint refused with a 429 for as long as it asked, and takes a key
out for good after a 401/403 (a wrong or revoked key stays wrong: retrying it only fills the
provider's logs). A request waits for a usable key at most until its deadline and then fails in
words an operator can act on.

A key is only ever shown by its label, "key-1", "key-2", … in the order given; the key itself
leaves this module only as the Authorization header of a request (`Lease.headers`). With no keys
(a local server without auth) there is one anonymous slot that sends no header, with the same limits.

Requests for `POST /ask` (a person waiting, possibly many at once) may hold at most VLM_ASK_SHARE of
the pool's requests in flight, so rule questions (live alerts) and descriptions always find room.
"""

from __future__ import annotations

import email.utils
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

from pydantic import SecretStr

from rtdetr_service.core.vlm import Purpose, VlmError

log = logging.getLogger(__name__)

Strategy = Literal["round_robin", "least_loaded", "priority"]
STRATEGIES: tuple[Strategy, ...] = ("round_robin", "least_loaded", "priority")
# How a request ended, as the key saw it: what the key's counts and state make of it.
Outcome = Literal["ok", "rate_limited", "refused", "client_error", "server_error", "timeout", "broken"]

ANONYMOUS = "anonymous"  # the label of the one slot a pool without keys has
# A Retry-After is believed within these bounds: a server asking for a day (or a date long past, or
# 0, which would have every waiting request retry at once) gets the nearest bound instead.
RETRY_AFTER_MIN_S = 0.5
RETRY_AFTER_MAX_S = 3600.0

_COUNTS = ("requests", "ok", "status_429", "status_4xx", "status_5xx", "timeouts", "connection_errors")
_COUNTED: dict[Outcome, str] = {
    "ok": "ok",
    "rate_limited": "status_429",
    "refused": "status_4xx",
    "client_error": "status_4xx",
    "server_error": "status_5xx",
    "timeout": "timeouts",
    "broken": "connection_errors",
}


def retry_after_s(value: str | None, default_s: float, now_wall: float) -> float:
    """How long a key rests after a 429: the answer's Retry-After (seconds, or an HTTP date), within
    RETRY_AFTER_MIN_S..RETRY_AFTER_MAX_S; without one, or one that does not parse, `default_s`."""
    if value is None or not (value := value.strip()):
        return default_s
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return default_s
        if when.tzinfo is None:  # an HTTP date is GMT; a date without a zone is read as such
            return default_s
        seconds = when.timestamp() - now_wall
    if not math.isfinite(seconds):
        return default_s
    return min(max(seconds, RETRY_AFTER_MIN_S), RETRY_AFTER_MAX_S)


def wall_words(wall_s: float) -> str:
    """A wall-clock time as an operator reads it in a status: ISO 8601, UTC, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall_s))


class _Window:
    """At most `limit` starts in any `span` seconds (a sliding window: the limit holds for every
    window, not only for aligned ones, as a provider's own counter may be sliding)."""

    def __init__(self, limit: int, span: float) -> None:
        self.limit = limit
        self.span = span
        self._starts: deque[float] = deque()

    def allows(self, now: float) -> bool:
        while self._starts and self._starts[0] <= now - self.span:
            self._starts.popleft()
        return len(self._starts) < self.limit

    def free_at(self) -> float:
        """When the oldest start leaves the window (only meaningful when it is full)."""
        return self._starts[0] + self.span

    def add(self, now: float) -> None:
        self._starts.append(now)


class _Spacing:
    """One start every `interval` seconds at most (a token bucket that holds one token). Starts are
    spread evenly rather than sent in a burst and then held back: what reaches the provider is
    jittered by connection setup and the network, and a burst of QPS requests followed a second
    later by the next burst can land in one second of the provider's count."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next = -math.inf

    def allows(self, now: float) -> bool:
        return now >= self._next - 1e-9  # a clock step's rounding is not a wait

    def free_at(self) -> float:
        return self._next

    def add(self, now: float) -> None:
        self._next = max(self._next, now) + self.interval


def _windows(qps: float, rpm: int) -> list[_Window | _Spacing]:
    windows: list[_Window | _Spacing] = []
    if qps > 0:
        windows.append(_Spacing(1.0 / qps))
    if rpm > 0:
        windows.append(_Window(rpm, 60.0))
    return windows


@dataclass(eq=False)
class _Key:
    label: str
    secret: SecretStr | None
    windows: list[_Window | _Spacing]
    in_flight: int = 0
    cooling_until: float = 0.0  # on the pool's clock
    cooling_reason: str | None = None
    disabled: str | None = None  # why, in words; set once, for good
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_COUNTS, 0))


class Lease:
    """One request's hold on one key, from `KeyPool.acquire` until `release` (exactly once)."""

    __slots__ = ("_pool", "_key", "purpose", "_released")

    def __init__(self, pool: KeyPool, key: _Key, purpose: Purpose) -> None:
        self._pool = pool
        self._key = key
        self.purpose = purpose
        self._released = False

    @property
    def label(self) -> str:
        return self._key.label

    @property
    def headers(self) -> dict[str, str]:
        """The Authorization header to send (none for the anonymous slot). The only way a key
        leaves the pool: never log or keep what this returns."""
        if self._key.secret is None:
            return {}
        return {"Authorization": f"Bearer {self._key.secret.get_secret_value()}"}

    def release(self, outcome: Outcome, *, status: int | None = None, retry_after: str | None = None) -> None:
        """Give the key back with what became of the request: a 429 (`rate_limited`, with the
        answer's Retry-After) rests the key, a 401/403 (`refused`, with its status) disables it."""
        if self._released:
            return
        self._released = True
        self._pool._release(self, outcome, status, retry_after)


class KeyPool:
    """Thread-safe: `acquire` from any number of threads, each lease released by whoever holds it.

    `clock` is monotonic seconds (every wait and limit is on it); `wall` is only for the times a
    status shows."""

    def __init__(
        self,
        keys: Sequence[SecretStr],
        *,
        strategy: Strategy = "round_robin",
        qps: float = 0.0,
        rpm: int = 0,
        concurrency: int = 4,
        ask_share: float = 0.5,
        cooldown_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"VLM_KEY_STRATEGY: {strategy!r} is not one of {', '.join(STRATEGIES)}")
        if concurrency < 1:
            raise ValueError("VLM_KEY_CONCURRENCY must be at least 1")
        if not 0 < ask_share <= 1:
            raise ValueError("VLM_ASK_SHARE must be in (0, 1]")
        secrets: list[SecretStr | None] = [key for key in keys if key.get_secret_value().strip()]
        if len(secrets) != len(keys):
            raise ValueError("VLM_API_KEYS: an empty key in the list (two commas in a row?)")
        labels = [f"key-{number}" for number in range(1, len(secrets) + 1)] or [ANONYMOUS]
        self._keys = [
            _Key(label, secret, _windows(qps, rpm)) for label, secret in zip(labels, secrets or [None], strict=True)
        ]
        self.strategy: Strategy = strategy
        self.concurrency = concurrency
        self.ask_share = ask_share
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._wall = wall
        self._cond = threading.Condition()
        self._next = 0  # round robin's cursor: the key after the last one handed out
        self._ask_in_flight = 0
        self._waiting = 0
        self._closed = False

    @property
    def labels(self) -> list[str]:
        return [key.label for key in self._keys]

    @property
    def capacity(self) -> int:
        """Requests in flight the pool allows at most, all keys together (disabled ones included:
        it bounds the threads and connections a provider needs)."""
        return len(self._keys) * self.concurrency

    def acquire(self, purpose: Purpose, deadline: float) -> Lease:
        """A lease on a usable key, waiting for one until `deadline` (on the pool's clock); past it,
        or at once when waiting cannot help (every key disabled, or resting past the deadline),
        `VlmError` saying why none was usable. A deadline already past asks without waiting."""
        with self._cond:
            self._waiting += 1
            try:
                while True:
                    if self._closed:
                        raise VlmError("the VLM is stopping", "closed")
                    now = self._clock()
                    key = self._pick(purpose, now)
                    if key is not None:
                        return self._take(key, purpose, now)
                    if now >= deadline or self._hopeless(deadline):
                        raise self._refusal(purpose, now)
                    wake = self._wake_at(now)
                    pause = deadline - now if wake is None else min(wake, deadline) - now
                    # A release or close notifies; a cooldown's or window's end is waited for (a
                    # minute at a time at most: Condition.wait refuses an unbounded timeout).
                    self._cond.wait(min(max(pause, 0.001), 60.0))
            finally:
                self._waiting -= 1

    def close(self) -> None:
        """Waiting requests fail now with reason "closed"; later ones too."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- under the lock -------------------------------------------------------------------------

    def _ask_limit(self) -> int:
        live = sum(1 for key in self._keys if key.disabled is None)
        return max(1, math.floor(self.ask_share * live * self.concurrency))

    def _usable(self, key: _Key, now: float) -> bool:
        return (
            key.disabled is None
            and key.cooling_until <= now
            and key.in_flight < self.concurrency
            and all(window.allows(now) for window in key.windows)
        )

    def _pick(self, purpose: Purpose, now: float) -> _Key | None:
        if purpose == "ask" and self._ask_in_flight >= self._ask_limit():
            return None
        count = len(self._keys)
        if self.strategy == "priority":
            order = range(count)
        else:  # from the cursor on, so equal keys take turns
            order = [(self._next + step) % count for step in range(count)]
        usable = [index for index in order if self._usable(self._keys[index], now)]
        if not usable:
            return None
        if self.strategy == "least_loaded":
            index = min(usable, key=lambda i: self._keys[i].in_flight)  # min keeps the first of equals
        else:
            index = usable[0]
        self._next = (index + 1) % count
        return self._keys[index]

    def _take(self, key: _Key, purpose: Purpose, now: float) -> Lease:
        key.in_flight += 1
        key.counts["requests"] += 1
        for window in key.windows:
            window.add(now)
        if purpose == "ask":
            self._ask_in_flight += 1
        return Lease(self, key, purpose)

    def _hopeless(self, deadline: float) -> bool:
        """Whether waiting cannot help: every key disabled, or resting past the deadline."""
        return all(key.disabled is not None or key.cooling_until >= deadline for key in self._keys)

    def _wake_at(self, now: float) -> float | None:
        """The next time a key could become usable without a release: a cooldown's end, or a full
        window's oldest start leaving it. None: only a release (which notifies) can help."""
        times = []
        for key in self._keys:
            if key.disabled is not None:
                continue
            if key.cooling_until > now:
                times.append(key.cooling_until)
            times.extend(window.free_at() for window in key.windows if not window.allows(now))
        return min(times, default=None)

    def _when(self, until: float, now: float) -> str:
        return wall_words(self._wall() + (until - now))

    def _refusal(self, purpose: Purpose, now: float) -> VlmError:
        """Why no key was usable, in words: disabled (and why), cooling down (until when), or busy."""
        live = [key for key in self._keys if key.disabled is None]
        if not live:
            reasons = "; ".join(f"{key.label} {key.disabled}" for key in self._keys)
            if self._keys[0].secret is None:
                return VlmError(f"the endpoint refused requests without a key: {reasons}", "unauthorized")
            return VlmError(f"every key is disabled: {reasons}", "unauthorized")
        disabled = len(self._keys) - len(live)
        also = f" ({disabled} more disabled)" if disabled else ""
        cooling = [key for key in live if key.cooling_until > now]
        if len(cooling) == len(live):
            until = self._when(min(key.cooling_until for key in cooling), now)
            if len(live) == 1:
                return VlmError(f"{live[0].label} is cooling down until {until} after a 429{also}", "rate_limited")
            return VlmError(f"all {len(live)} keys cooling down until {until} after 429s{also}", "rate_limited")
        if purpose == "ask" and self._ask_in_flight >= self._ask_limit():
            return VlmError(
                f"questions (POST /ask) hold their share of the VLM: {self._ask_in_flight} of "
                f"{len(live) * self.concurrency} requests in flight (VLM_ASK_SHARE={self.ask_share:g})",
                "rate_limited",
            )
        in_flight = sum(key.in_flight for key in live)
        what = "the key is" if len(live) == 1 else f"all {len(live)} keys are"
        return VlmError(
            f"{what} at their limits: {in_flight} of {len(live) * self.concurrency} requests in flight, "
            f"{len(cooling)} cooling down, the rest at their QPS/RPM limits{also}",
            "rate_limited",
        )

    def _release(self, lease: Lease, outcome: Outcome, status: int | None, retry_after: str | None) -> None:
        key = lease._key
        said = None
        with self._cond:
            key.in_flight -= 1
            if lease.purpose == "ask":
                self._ask_in_flight -= 1
            key.counts[_COUNTED[outcome]] += 1
            now, wall = self._clock(), self._wall()
            if outcome == "rate_limited":
                rest = retry_after_s(retry_after, self.cooldown_s, wall)
                key.cooling_until = max(key.cooling_until, now + rest)
                key.cooling_reason = f"429 at {wall_words(wall)}: resting {rest:g} s"
                said = (logging.INFO, f"{key.label} answered 429: resting until {self._when(key.cooling_until, now)}")
            elif outcome == "refused" and key.disabled is None:
                what = "the endpoint wants a key (VLM_API_KEYS)" if key.secret is None else "check the key"
                key.disabled = f"refused with {status} at {wall_words(wall)}: {what}"
                said = (logging.WARNING, f"VLM {key.label} disabled: {key.disabled}")
            self._cond.notify_all()
        if said is not None:
            log.log(*said)

    # -- reading --------------------------------------------------------------------------------

    def status(self) -> dict:
        """Each key's label, state (ok, cooling, disabled), until when, why, in flight and counts;
        and the pool's strategy and share. Never a key."""
        with self._cond:
            now = self._clock()
            keys = []
            for key in self._keys:
                if key.disabled is not None:
                    state, until, reason = "disabled", None, key.disabled
                elif key.cooling_until > now:
                    state, until, reason = "cooling", self._when(key.cooling_until, now), key.cooling_reason
                else:
                    state, until, reason = "ok", None, None
                keys.append(
                    {
                        "label": key.label,
                        "state": state,
                        "until": until,
                        "reason": reason,
                        "in_flight": key.in_flight,
                        "counts": dict(key.counts),
                    }
                )
            return {
                "strategy": self.strategy,
                "concurrency": self.concurrency,
                "ask_share": self.ask_share,
                "ask_limit": self._ask_limit(),
                "ask_in_flight": self._ask_in_flight,
                "waiting": self._waiting,
                "keys": keys,
            }
