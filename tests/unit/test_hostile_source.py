"""Given hostile or broken stream servers (real sockets on loopback), when the reader opens them,
then it says timeout for timeouts and refusal for refusals, obeys the destination policy (on
redirects too), and a stop interrupts FFmpeg at once."""

from __future__ import annotations

import ipaddress
import threading
import time

import pytest

from rtdetr_service.ingest.reader import StreamReader
from rtdetr_service.ingest.urls import DENIED_WORDS, DestinationPolicy, StreamError, StreamErrorKind

from hostile_servers import garbage, header_flood, redirect_to, silent, trickle


def _reader(url: str, *, open_timeout: float = 2.0, policy: DestinationPolicy | None = None) -> StreamReader:
    return StreamReader(
        url,
        on_frame=lambda frame: None,
        on_state=lambda state, error: None,
        open_timeout=open_timeout,
        read_timeout=1.0,
        reconnect_min=0.1,
        reconnect_max=0.5,
        policy=policy,
    )


def _open_error(reader: StreamReader) -> tuple[StreamError, float]:
    started = time.monotonic()
    with pytest.raises(StreamError) as info:
        reader.open()
    return info.value, time.monotonic() - started


@pytest.mark.parametrize("behaviour", [silent, trickle, header_flood], ids=["silent", "trickle", "header-flood"])
def test_a_server_that_never_completes_its_answer_is_a_timeout(fake_servers, behaviour):
    error, took = _open_error(_reader(fake_servers(behaviour).url, open_timeout=2.0))
    assert error.kind == StreamErrorKind.TIMEOUT, error
    assert "Timed out after" in str(error) and "OPEN_TIMEOUT_S=2" in str(error)
    assert "Invalid data" not in str(error)
    assert took < 4.0


def test_refusal_and_bad_data_are_not_timeouts(fake_servers):
    error, took = _open_error(_reader("rtsp://127.0.0.1:1/camera"))
    assert error.kind == StreamErrorKind.UNAVAILABLE and "Connection refused" in str(error)
    error, took = _open_error(_reader(fake_servers(garbage).url))
    assert error.kind == StreamErrorKind.UNAVAILABLE, error
    assert took < 1.5


def test_stop_interrupts_an_open_at_once(fake_servers):
    # given an open waiting on a silent camera, with a long open timeout
    reader = _reader(fake_servers(silent).url, open_timeout=30.0)
    threading.Timer(0.5, reader.stop).start()
    error, took = _open_error(reader)
    # then stop() ends it within moments, not after OPEN_TIMEOUT_S
    assert took < 2.0
    assert "Stopped while opening" in str(error)


def test_the_policy_checks_every_resolved_address():
    policy = DestinationPolicy()
    assert not policy.permits("169.254.169.254")
    assert not policy.permits("::ffff:169.254.169.254")  # the same address in IPv6 clothes
    assert not policy.permits("fe80::1%eth0")
    assert not policy.permits("fd00:ec2::254")
    assert policy.permits("127.0.0.1") and policy.permits("10.1.2.3") and policy.permits("::1")
    only_lan = DestinationPolicy(allowed=(ipaddress.ip_network("10.0.0.0/8"),))
    assert only_lan.permits("10.1.2.3") and not only_lan.permits("127.0.0.1")
    # the URL opened names the address checked (no second DNS answer), credentials kept
    assert policy.pin("rtsp://user:p%40ss@localhost:8554/cam") in (
        "rtsp://user:p%40ss@127.0.0.1:8554/cam",
        "rtsp://user:p%40ss@[::1]:8554/cam",
    )
    with pytest.raises(StreamError) as info:
        policy.pin("rtsp://169.254.169.254/latest/meta-data")
    assert info.value.kind == StreamErrorKind.DENIED and str(info.value) == DENIED_WORDS


def test_a_denied_destination_is_never_connected_to(fake_servers):
    target = fake_servers(silent, host="127.0.0.2")
    policy = DestinationPolicy(denied=(ipaddress.ip_network("127.0.0.2/32"),))
    error, took = _open_error(_reader(target.url, policy=policy))
    assert error.kind == StreamErrorKind.DENIED and str(error) == DENIED_WORDS
    assert took < 0.5
    time.sleep(0.2)
    assert target.connections == 0


def test_a_redirect_to_a_denied_destination_is_not_followed(fake_servers):
    # given a camera on an allowed address that redirects to a denied one
    target = fake_servers(silent, host="127.0.0.2")
    camera = fake_servers(redirect_to(target.url))
    policy = DestinationPolicy(denied=(ipaddress.ip_network("127.0.0.2/32"),))
    error, took = _open_error(_reader(camera.url, policy=policy, open_timeout=5.0))
    # then the open fails with the policy's words, at once, and nothing was sent to the target
    assert error.kind == StreamErrorKind.DENIED and str(error) == DENIED_WORDS
    assert took < 2.0
    time.sleep(0.3)
    assert bytes(target.received) == b""
    assert camera.connections == 1


def test_a_redirect_to_an_allowed_destination_is_followed(fake_servers):
    target = fake_servers(silent)
    camera = fake_servers(redirect_to(target.url))
    error, _ = _open_error(_reader(camera.url, policy=DestinationPolicy(), open_timeout=1.5))
    assert error.kind == StreamErrorKind.TIMEOUT  # it went there, and the target never answered
    assert target.received.startswith(b"OPTIONS") or target.received.startswith(b"DESCRIBE")
