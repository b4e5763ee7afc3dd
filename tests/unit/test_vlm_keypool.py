"""The VLM key pool without HTTP: which key each strategy hands out, the per-key QPS, RPM and
in-flight limits, a 429's rest (Retry-After in seconds or as a date, bounded), a 401's disabling,
POST /ask's share, the words a refusal says, and many threads at once. A hand-turned clock makes the
limits exact; the waits that need real time wait for another thread, never for a duration."""

from __future__ import annotations

import json
import threading
import time

import pytest
from pydantic import SecretStr

from rtdetr_service.core.vlm import VlmError
from rtdetr_service.inference.vlm.keypool import (
    RETRY_AFTER_MAX_S,
    RETRY_AFTER_MIN_S,
    KeyPool,
    retry_after_s,
)

KEYS = [SecretStr(f"sk-unit-{name}-0123456789abcdef") for name in ("alpha", "bravo", "charlie")]
WALL = 1_780_000_000.0  # 2026-05-28T20:26:40Z


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def pool(clock: Clock, keys=KEYS, **options) -> KeyPool:
    return KeyPool(keys, clock=clock, wall=lambda: WALL + clock.now - 100.0, **options)


def take(p: KeyPool, purpose="describe"):
    """A lease now, or the refusal: a deadline already past asks without waiting."""
    try:
        return p.acquire(purpose, deadline=0.0)
    except VlmError as refusal:
        return refusal


def labels(leases) -> list[str]:
    return [lease.label for lease in leases]


# -- strategies -------------------------------------------------------------------------------------------


def test_round_robin_takes_the_keys_in_turn(clock):
    p = pool(clock, strategy="round_robin")
    leases = []
    for _ in range(6):
        lease = take(p)
        leases.append(lease)
        lease.release("ok")
    assert labels(leases) == ["key-1", "key-2", "key-3"] * 2


def test_round_robin_passes_over_a_key_that_is_not_usable_and_keeps_its_turns(clock):
    p = pool(clock, strategy="round_robin", concurrency=1)
    held = take(p)  # key-1, held
    assert labels([take(p), take(p)]) == ["key-2", "key-3"]
    assert isinstance(take(p), VlmError)  # all three busy
    held.release("ok")
    assert take(p).label == "key-1"


def test_priority_takes_the_first_usable_key_in_the_order_given(clock):
    p = pool(clock, strategy="priority", concurrency=1)
    first = take(p)
    assert first.label == "key-1"
    first.release("ok")
    assert take(p).label == "key-1"  # released: first again
    assert take(p).label == "key-2"  # key-1 is held now


def test_least_loaded_takes_the_key_with_fewest_in_flight_equals_in_turn(clock):
    p = pool(clock, strategy="least_loaded", concurrency=4)
    a, b, c = take(p), take(p), take(p)
    assert labels([a, b, c]) == ["key-1", "key-2", "key-3"]
    assert take(p).label == "key-1"  # all hold one: the next in turn
    b.release("ok")  # in flight now: key-1 2, key-2 0, key-3 1
    assert labels([take(p), take(p), take(p)]) == ["key-2", "key-3", "key-2"]


def test_without_keys_one_anonymous_slot_sends_no_header_with_the_same_limits(clock):
    p = pool(clock, keys=[], concurrency=2)
    lease = take(p)
    assert lease.label == "anonymous" and lease.headers == {}
    assert take(p).label == "anonymous"
    assert isinstance(take(p), VlmError)  # its in-flight limit holds


def test_a_key_leaves_the_pool_only_as_its_authorization_header(clock):
    p = pool(clock)
    lease = take(p)
    assert lease.headers == {"Authorization": f"Bearer {KEYS[0].get_secret_value()}"}
    shown = json.dumps(p.status()) + repr(p.status()) + repr(lease)
    for key in KEYS:
        assert key.get_secret_value() not in shown


# -- limits ------------------------------------------------------------------------------------------------


def test_qps_spreads_starts_evenly_so_no_second_holds_more(clock):
    p = pool(clock, keys=KEYS[:1], qps=5, concurrency=100)
    assert not isinstance(take(p), VlmError)
    refusal = take(p)  # not a burst: the next start is 1/5 s later
    assert isinstance(refusal, VlmError) and refusal.reason == "rate_limited"
    assert "at their QPS/RPM limits" in refusal.words
    clock.now += 0.19
    assert isinstance(take(p), VlmError)
    clock.now += 0.01
    assert not isinstance(take(p), VlmError)


def test_qps_allows_that_many_starts_in_any_second_asked_as_often_as_you_like(clock):
    p = pool(clock, keys=KEYS[:1], qps=5, concurrency=100)
    starts = []
    for step in range(400):  # 4 s, asking every 10 ms
        clock.now = 100.0 + step * 0.01
        if not isinstance(take(p), VlmError):
            starts.append(clock.now)
    assert len(starts) == 20
    assert max(sum(1 for t in starts if first <= t < first + 1.0) for first in starts) == 5


def test_a_qps_below_one_spaces_single_starts(clock):
    p = pool(clock, keys=KEYS[:1], qps=0.5)
    assert not isinstance(take(p), VlmError)
    clock.now += 1.9
    assert isinstance(take(p), VlmError)
    clock.now += 0.1
    assert not isinstance(take(p), VlmError)


def test_rpm_allows_that_many_starts_in_any_minute(clock):
    p = pool(clock, keys=KEYS[:1], rpm=3, concurrency=10)
    for _ in range(3):
        take(p).release("ok")
        clock.now += 10
    assert isinstance(take(p), VlmError)
    clock.now += 30  # 60 s after the first
    assert not isinstance(take(p), VlmError)


def test_a_key_holds_at_most_its_concurrency_in_flight(clock):
    p = pool(clock, keys=KEYS[:1], concurrency=2)
    a, b = take(p), take(p)
    refusal = take(p)
    assert isinstance(refusal, VlmError) and "2 of 2 requests in flight" in refusal.words
    a.release("ok")
    assert not isinstance(take(p), VlmError)
    assert p.status()["keys"][0]["in_flight"] == 2 and b


def test_a_release_counts_what_became_of_the_request_once(clock):
    p = pool(clock, keys=KEYS[:1], concurrency=10)
    for outcome in ("ok", "ok", "client_error", "server_error", "timeout", "broken"):
        lease = take(p)
        lease.release(outcome)
        lease.release("ok")  # a second release is ignored
    counts = p.status()["keys"][0]["counts"]
    assert counts == {
        "requests": 6,
        "ok": 2,
        "status_429": 0,
        "status_4xx": 1,
        "status_5xx": 1,
        "timeouts": 1,
        "connection_errors": 1,
    }
    assert p.status()["keys"][0]["in_flight"] == 0


# -- 429 and Retry-After ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header, rest",
    [
        ("7", 7.0),
        ("2.5", 2.5),
        ("Thu, 28 May 2026 20:26:52 GMT", 12.0),  # a date 12 s after WALL
        (None, 30.0),  # no header: VLM_COOLDOWN_S
        ("soon", 30.0),  # does not parse: VLM_COOLDOWN_S
        ("Thu, 28 May 2026 20:26:52", 30.0),  # a date without its zone: not believed
        ("0", RETRY_AFTER_MIN_S),  # "now" would send every waiting request back at once
        ("-5", RETRY_AFTER_MIN_S),
        ("Thu, 28 May 2020 20:26:52 GMT", RETRY_AFTER_MIN_S),  # long past
        ("86400", RETRY_AFTER_MAX_S),  # a day: bounded
        ("nan", 30.0),
    ],
)
def test_retry_after_is_read_as_seconds_or_a_date_within_bounds(header, rest):
    assert retry_after_s(header, 30.0, WALL) == pytest.approx(rest)


def test_a_429_rests_the_key_until_its_retry_after_and_another_takes_the_requests(clock):
    p = pool(clock, strategy="priority", keys=KEYS[:2], cooldown_s=30)
    take(p).release("rate_limited", status=429, retry_after="7")
    status = p.status()["keys"][0]
    assert status["state"] == "cooling" and status["until"] == "2026-05-28T20:26:47Z"
    assert status["reason"].startswith("429 at 2026-05-28T20:26:40Z") and status["counts"]["status_429"] == 1
    clock.now += 6.9
    assert take(p).label == "key-2"  # priority or not, key-1 rests
    clock.now += 0.1
    assert take(p).label == "key-1"
    assert p.status()["keys"][0]["state"] == "ok"


def test_when_every_key_rests_the_refusal_says_until_when(clock):
    p = pool(clock, cooldown_s=30)
    for retry_after in ("20", "9", None):
        take(p).release("rate_limited", status=429, retry_after=retry_after)
    refusal = take(p)
    assert refusal.reason == "rate_limited"
    assert refusal.words == "all 3 keys cooling down until 2026-05-28T20:26:49Z after 429s"  # the soonest
    one = pool(clock, keys=KEYS[:1])
    take(one).release("rate_limited", retry_after="5")
    assert take(one).words.startswith("key-1 is cooling down until ")


# -- 401 / 403 ------------------------------------------------------------------------------------------------------


def test_a_401_disables_the_key_for_good_with_its_reason_in_words(clock):
    p = pool(clock, strategy="priority")
    take(p).release("refused", status=401)
    clock.now += 3600
    assert [take(p).label for _ in range(2)] == ["key-2", "key-2"]
    status = p.status()["keys"][0]
    assert status["state"] == "disabled"
    assert status["reason"] == "refused with 401 at 2026-05-28T20:26:40Z: check the key"


def test_when_every_key_is_disabled_the_refusal_says_each_ones_reason(clock):
    p = pool(clock, concurrency=1)
    leases = [take(p) for _ in range(3)]
    for lease, status in zip(leases, (401, 403, 401), strict=True):
        lease.release("refused", status=status)
    refusal = take(p)
    assert refusal.reason == "unauthorized"
    assert refusal.words == (
        "every key is disabled: key-1 refused with 401 at 2026-05-28T20:26:40Z: check the key; "
        "key-2 refused with 403 at 2026-05-28T20:26:40Z: check the key; "
        "key-3 refused with 401 at 2026-05-28T20:26:40Z: check the key"
    )


def test_an_anonymous_slot_refused_says_the_endpoint_wants_a_key(clock):
    p = pool(clock, keys=[])
    take(p).release("refused", status=401)
    refusal = take(p)
    assert refusal.reason == "unauthorized" and "the endpoint wants a key (VLM_API_KEYS)" in refusal.words


# -- POST /ask's share -----------------------------------------------------------------------------------------------


def test_asks_hold_at_most_their_share_and_rule_questions_find_the_rest(clock):
    p = pool(clock, keys=KEYS[:2], concurrency=2, ask_share=0.5)  # 4 in flight at most, asks 2
    asks = [take(p, "ask"), take(p, "ask")]
    assert all(not isinstance(a, VlmError) for a in asks)
    refusal = take(p, "ask")
    assert refusal.reason == "rate_limited"
    assert (
        refusal.words
        == "questions (POST /ask) hold their share of the VLM: 2 of 4 requests in flight (VLM_ASK_SHARE=0.5)"
    )
    rule, describe = take(p, "rule"), take(p, "describe")
    assert not isinstance(rule, VlmError) and not isinstance(describe, VlmError)
    asks[0].release("ok")
    assert not isinstance(take(p, "ask"), VlmError)
    assert p.status()["ask_in_flight"] == 2


def test_the_ask_share_is_at_least_one_and_shrinks_with_disabled_keys(clock):
    small = pool(clock, keys=KEYS[:1], concurrency=1, ask_share=0.1)
    assert small.status()["ask_limit"] == 1
    p = pool(clock, strategy="priority", concurrency=2, ask_share=0.5)
    assert p.status()["ask_limit"] == 3
    take(p).release("refused", status=401)
    assert p.status()["ask_limit"] == 2


# -- waiting and threads -----------------------------------------------------------------------------------------------


def test_acquire_waits_for_a_release_from_another_thread():
    p = KeyPool(KEYS[:1], concurrency=1)
    held = p.acquire("rule", deadline=float("inf"))
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(p.acquire("rule", deadline=float("inf"))), daemon=True)
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive() and p.status()["waiting"] == 1  # nothing usable: it waits
    held.release("ok")
    waiter.join(10)
    assert got and got[0].label == "key-1"


def test_acquire_fails_at_once_when_waiting_cannot_help():
    # every key disabled, or every key resting past the deadline: no wait, the words at once
    disabled = KeyPool(KEYS[:1])
    disabled.acquire("rule", deadline=float("inf")).release("refused", status=401)
    resting = KeyPool(KEYS[:2], cooldown_s=600)
    for _ in range(2):
        resting.acquire("rule", deadline=float("inf")).release("rate_limited", retry_after="600")
    with pytest.raises(VlmError, match="every key is disabled"):
        disabled.acquire("rule", deadline=float("inf"))
    with pytest.raises(VlmError, match="all 2 keys cooling down until"):
        resting.acquire("rule", deadline=time.monotonic() + 300)
    # while one rests only until before the deadline, acquire waits for it instead
    soon = KeyPool(KEYS[:1])
    soon.acquire("rule", deadline=float("inf")).release("rate_limited", retry_after="0.5")
    assert soon.acquire("rule", deadline=time.monotonic() + 300).label == "key-1"


def test_close_fails_every_waiting_acquire_with_closed():
    p = KeyPool(KEYS[:1], concurrency=1)
    p.acquire("rule", deadline=float("inf"))
    errors: list = []

    def wait() -> None:
        try:
            p.acquire("ask", deadline=float("inf"))
        except VlmError as error:
            errors.append(error)

    waiters = [threading.Thread(target=wait, daemon=True) for _ in range(3)]
    for waiter in waiters:
        waiter.start()
    for _ in range(1000):  # at most 10 s
        if p.status()["waiting"] == 3:
            break
        threading.Event().wait(0.01)
    p.close()
    for waiter in waiters:
        waiter.join(10)
    assert [e.reason for e in errors] == ["closed"] * 3


def test_many_threads_never_exceed_a_keys_concurrency_and_every_count_adds_up():
    p = KeyPool(KEYS, concurrency=2, strategy="least_loaded")
    lock = threading.Lock()
    now = {label: 0 for label in p.labels}
    most = dict(now)

    def work() -> None:
        for _ in range(200):
            lease = p.acquire("describe", deadline=float("inf"))
            with lock:
                now[lease.label] += 1
                most[lease.label] = max(most[lease.label], now[lease.label])
            with lock:
                now[lease.label] -= 1
            lease.release("ok")

    threads = [threading.Thread(target=work) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    keys = p.status()["keys"]
    assert max(most.values()) <= 2
    assert sum(k["counts"]["requests"] for k in keys) == sum(k["counts"]["ok"] for k in keys) == 12 * 200
    assert all(k["in_flight"] == 0 for k in keys) and p.status()["waiting"] == 0


def test_bad_settings_are_refused_in_words():
    with pytest.raises(ValueError, match="VLM_KEY_STRATEGY"):
        KeyPool(KEYS, strategy="random")
    with pytest.raises(ValueError, match="empty key"):
        KeyPool([SecretStr("a"), SecretStr(" ")])
