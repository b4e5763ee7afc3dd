"""The webhook sink against real local HTTP receivers: signed bodies, retries, redirects, dead ends,
and receivers that abuse the sender (an endless answer, a trickled one, none at all)."""

from __future__ import annotations

import json
import socket
import time
import tracemalloc

import pytest

from rtdetr_service.analytics.events import EventLifecycle
from rtdetr_service.core.results import Alert, Published, SessionView
from rtdetr_service.core.types import Detection, FrameResult
from rtdetr_service.outputs.settings import WebhookSettings
from rtdetr_service.outputs.webhook import WebhookSink

from feeds import T0, blank_frame, handle_durations
from hostile_servers import http_huge_answer, http_trickle, silent
from servers import WebhookReceiver
from support import free_port, wait_until

SECRET = "shared-webhook-secret"
TOKEN = "path-token-9f2c"  # a secret in the URL path: it must never be logged
VIEW = SessionView("session-1", "gate", enable_drawing=False, jpeg_quality=75)


@pytest.fixture
def receivers(closing):
    def make(statuses=(), **kwargs) -> WebhookReceiver:
        return closing(WebhookReceiver(SECRET, statuses, path=f"/hook/{TOKEN}", **kwargs))

    return make


@pytest.fixture
def sinks(start_sink):
    def make(urls, *, backoff_s: float = 0.05, backoff_max_s: float = 0.2, **values) -> WebhookSink:
        values.setdefault("timeout_s", 2.0)
        settings = WebhookSettings(urls=urls, secret=SECRET, **values)
        return start_sink(WebhookSink(settings, backoff_s=backoff_s, backoff_max_s=backoff_max_s))

    return make


def person(track: int, confidence: float = 0.6) -> Detection:
    return Detection(0, "person", (10.0, 5.0, 20.0, 30.0), confidence, track)


def event_steps() -> tuple[Published, Published]:
    """A real life: a person appears (new), then is gone past end_after_s (end)."""
    events = EventLifecycle("session-1", "gate", end_after_s=1.0)
    f = blank_frame(0.0)
    tracked = (person(7),)
    new = events.update(f, list(tracked))
    end = events.tick(T0 + 2.0)
    assert [c.kind for c in new] == ["new"] and [c.kind for c in end] == ["end"]
    alert = Alert(
        "person",
        0.6,
        (10.0, 5.0, 20.0, 30.0),
        0,
        T0,
        track_id=7,
        kind="enter",
        rule="door",
        zone="porch",
        event_id=new[0].event.id,
    )
    first = Published(VIEW, FrameResult("session-1", f, tracked, 0.01), (alert,), tuple(new))
    return first, Published(VIEW, None, (), tuple(end))


def test_events_and_alerts_arrive_signed_in_their_schemas(receivers, sinks):
    receiver = receivers()
    sink = sinks([receiver.url])
    first, second = event_steps()

    sink.handle(first)
    sink.handle(second)

    assert wait_until(lambda: len(receiver.received()) == 3)
    got = receiver.received()
    assert all(r["verified"] for r in got) and all(r["path"] == f"/hook/{TOKEN}" for r in got)
    new, alert, end = (json.loads(r["body"]) for r in got)
    assert new["schema"] == "rtdetr.event.v1" and new["type"] == "new" and new["before"] is None
    assert (new["session_id"], new["camera"]) == ("session-1", "gate")
    assert new["after"]["label"] == "person" and new["after"]["track_id"] == 7 and new["after"]["active"]
    assert alert["schema"] == "rtdetr.alert.v1" and alert["timestamp"] == T0
    assert alert["alert"]["rule"] == "door" and alert["alert"]["event_id"] == new["after"]["id"]
    assert end["type"] == "end" and end["before"]["active"] and not end["after"]["active"]
    assert end["after"]["id"] == new["after"]["id"] and end["after"]["end_time"] is not None
    assert len({r["delivery"] for r in got}) == 3
    assert wait_until(lambda: sink.stats().sent == 3)
    assert sink.stats().state == "ok" and sink.stats().failed == 0


def test_a_wrong_secret_does_not_verify(receivers):
    receiver = receivers()
    sink = WebhookSink(WebhookSettings(urls=[receiver.url], secret="not-the-shared-secret"))
    sink.start()
    try:
        sink.handle(event_steps()[1])
        assert wait_until(lambda: len(receiver.received()) == 1)
        assert not receiver.received()[0]["verified"]
    finally:
        sink.close(1.0)


def test_5xx_is_retried_with_the_same_delivery_id_and_a_fresh_signature(receivers, sinks):
    receiver = receivers([503, 503])
    sink = sinks([receiver.url], max_retries=3)

    sink.handle(event_steps()[1])

    assert wait_until(lambda: sink.stats().sent == 1)
    got = receiver.received()
    assert len(got) == 3 and all(r["verified"] for r in got)
    assert len({r["delivery"] for r in got}) == 1 and len({r["body"] for r in got}) == 1
    stats = sink.stats()
    assert stats.failed == 0 and stats.detail["retries"] == 2


def test_retries_are_bounded(receivers, sinks):
    receiver = receivers([503] * 10)
    sink = sinks([receiver.url], max_retries=2)

    sink.handle(event_steps()[1])

    assert wait_until(lambda: sink.stats().failed == 1)
    time.sleep(0.3)
    assert len(receiver.received()) == 3
    assert sink.stats().state == "failing" and "HTTP 503" in sink.stats().last_error


def test_4xx_is_not_retried_and_the_url_token_is_never_shown(receivers, sinks, caplog):
    caplog.set_level("DEBUG")
    receiver = receivers([400])
    sink = sinks([receiver.url], max_retries=3)

    sink.handle(event_steps()[1])

    assert wait_until(lambda: sink.stats().failed == 1)
    time.sleep(0.3)
    assert len(receiver.received()) == 1
    stats = sink.stats()
    assert "HTTP 400" in stats.last_error and stats.detail["retries"] == 0
    shown = caplog.text + json.dumps(stats.as_dict()) + repr(stats)
    assert TOKEN not in shown and "127.0.0.1" in shown


def test_a_redirect_is_not_followed(receivers, sinks):
    elsewhere = receivers()
    redirecting = receivers([302], location=elsewhere.url)
    sink = sinks([redirecting.url])

    sink.handle(event_steps()[1])

    assert wait_until(lambda: sink.stats().failed == 1)
    time.sleep(0.3)
    assert len(redirecting.received()) == 1 and elsewhere.received() == []
    assert "302" in sink.stats().last_error


def test_a_dead_receiver_costs_drops_not_publisher_time(receivers, sinks):
    alive = receivers()
    dead_url = f"http://127.0.0.1:{free_port()}/hook/{TOKEN}"  # nothing listens: connection refused
    sink = sinks([dead_url, alive.url], queue_size=4, max_retries=3)
    item = event_steps()[1]

    durations = handle_durations(sink, [item] * 200)

    assert max(durations) < 0.010
    dead, live = sink.stats().detail["destinations"]
    assert dead["dropped"] > 150 and dead["queued"] <= 4
    # The live receiver has its own queue: it drops only what its own thread could not keep up with.
    assert wait_until(lambda: len(alive.received()) == sink.stats().detail["destinations"][1]["sent"] > 0)
    assert wait_until(lambda: sink.stats().detail["destinations"][0]["failed"] >= 1)
    stats = sink.stats()
    assert stats.state == "failing" and stats.dropped >= dead["dropped"]
    assert "ConnectError" in stats.last_error and TOKEN not in stats.last_error


def test_close_returns_within_its_timeout_when_the_receiver_hangs():
    # A receiver that accepts connections and never answers: every request waits for its timeout.
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(16)
        url = f"http://127.0.0.1:{hole.getsockname()[1]}/hook"
        sink = WebhookSink(WebhookSettings(urls=[url], secret=SECRET, timeout_s=10.0, queue_size=8))
        sink.start()
        for _ in range(8):
            sink.handle(event_steps()[1])
        time.sleep(0.1)  # the first request is in flight

        started = time.monotonic()
        sink.close(0.5)
        took = time.monotonic() - started

        assert took < 0.8
        assert sink.stats().dropped >= 7  # what was still queued is given up, counted
        sink.close(0.5)  # idempotent


def test_settings_are_checked_before_anything_starts():
    with pytest.raises(ValueError, match="WEBHOOK_SECRET"):
        WebhookSink(WebhookSettings(urls=["http://127.0.0.1:9/hook"], secret=""))
    with pytest.raises(ValueError, match="WEBHOOK_URLS") as info:
        WebhookSink(WebhookSettings(urls=[f"ftp://127.0.0.1/{TOKEN}"], secret=SECRET))
    assert TOKEN not in str(info.value)


def test_a_huge_answer_costs_a_few_kb_and_the_message_counts_as_sent(fake_servers, sinks):
    # A 2xx is a delivery; what follows its first few KB is never read.
    receiver = fake_servers(http_huge_answer(declared=256 * 2**20, at_most=32 * 2**20))
    sink = sinks([receiver.http_url])

    tracemalloc.start()
    try:
        sink.handle(event_steps()[1])
        assert wait_until(lambda: sink.stats().sent + sink.stats().failed == 1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    stats = sink.stats()
    assert (stats.sent, stats.failed, stats.state) == (1, 0, "ok")
    assert peak < 2**20, f"{peak / 2**20:.1f} MiB allocated while one answer came in"
    assert wait_until(lambda: receiver.open_for)  # the sink hung up before the receiver stopped sending
    assert receiver.sent < 32 * 2**20


TRICKLES = {
    "body": http_trickle(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", [b"1\r\na\r\n"] * 20),
    "headers": http_trickle(b"", [bytes([c]) for c in b"HTTP/1.1 200 OK\r\nX-Slow: aaaaaaaaaaaaaaaa"]),
    "nothing": silent,
}


@pytest.mark.parametrize("answer", TRICKLES)
def test_a_request_ends_at_its_timeout_however_the_answer_trickles(fake_servers, sinks, answer):
    receiver = fake_servers(TRICKLES[answer])
    sink = sinks([receiver.http_url], timeout_s=1.0, max_retries=0)

    for _ in range(3):
        sink.handle(event_steps()[1])

    assert wait_until(lambda: sink.stats().failed == 3, 8.0)
    assert wait_until(lambda: len(receiver.open_for) == 3)
    assert receiver.connections == 3  # the next message got its own request each time
    assert max(receiver.open_for) < 1.6, receiver.open_for
    stats = sink.stats()
    assert stats.state == "failing" and stats.last_error.endswith(
        "no complete answer from 127.0.0.1:%d within 1.0 s" % receiver.port
    )


def test_a_receiver_that_never_accepts_costs_the_connect_timeout(closing):
    # A full accept queue: the kernel drops further handshakes, as a host behind a silent firewall does.
    full = closing(socket.socket())
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    closing(socket.create_connection(full.getsockname(), timeout=1.0))  # the one place in the queue
    url = f"http://127.0.0.1:{full.getsockname()[1]}/hook"
    sink = closing(WebhookSink(WebhookSettings(urls=[url], secret=SECRET, timeout_s=1.0, max_retries=0)), 1.0)
    sink.start()

    started = time.monotonic()
    sink.handle(event_steps()[1])

    assert wait_until(lambda: sink.stats().failed == 1, 5.0)
    assert time.monotonic() - started < 1.6
    assert sink.stats().last_error.endswith(f"could not connect to 127.0.0.1:{full.getsockname()[1]} within 1.0 s")


def test_one_connection_carries_every_message(fake_servers, sinks):
    receiver = fake_servers(http_trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", []))
    sink = sinks([receiver.http_url], timeout_s=1.0)

    for _ in range(3):
        sink.handle(event_steps()[1])
        assert wait_until(lambda: sink.stats().handled == sink.stats().sent)
    time.sleep(1.2)  # past the timeout: nothing cuts the idle connection
    sink.handle(event_steps()[1])

    assert wait_until(lambda: sink.stats().sent == 4)
    assert receiver.connections == 1 and sink.stats().failed == 0
