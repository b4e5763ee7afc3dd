"""Presence between replicas: each replica's word is trusted for its time to live, replaced by its
next message, and a replica that dies stops counting by itself."""

from __future__ import annotations

import pytest

from rtdetr_service.outputs import messages
from rtdetr_service.outputs.bus.link import check_session_id, session_of, subject
from rtdetr_service.outputs.bus.owner import Presence


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_viewers_add_up_over_replicas_and_expire_with_their_ttl():
    clock = Clock()
    presence = Presence(clock)
    presence.update(messages.presence_message("b", {"s1": 2}, ttl_s=6))
    clock.now += 3
    presence.update(messages.presence_message("c", {"s1": 1, "s2": 1}, ttl_s=6))
    assert presence.viewers("s1") == 3 and presence.viewers("s2") == 1 and presence.viewers("s3") == 0

    clock.now += 3.5  # b said nothing for 6.5 s: it may have died
    assert presence.viewers("s1") == 1
    clock.now += 3
    assert presence.viewers("s1") == 0 and presence.viewers("s2") == 0


def test_a_replicas_next_message_replaces_what_it_said():
    presence = Presence(Clock())
    presence.update(messages.presence_message("b", {"s1": 2, "s2": 1}, ttl_s=6))
    presence.update(messages.presence_message("b", {"s2": 1}, ttl_s=6))  # its viewers of s1 left
    assert presence.viewers("s1") == 0 and presence.viewers("s2") == 1


@pytest.mark.parametrize(
    "message",
    [{"replica": "b"}, {"replica": "b", "ttl_s": 6, "sessions": []}, {"replica": 1, "ttl_s": 6, "sessions": {}}],
)
def test_what_is_not_a_presence_message_is_refused(message):
    with pytest.raises((ValueError, KeyError, TypeError)):
        Presence(Clock()).update(message)


def test_subjects_carry_the_session_and_refuse_ids_that_would_break_them():
    assert subject("2ed8e393", "frames") == "rtdetr.s.2ed8e393.frames"
    assert session_of(subject("2ed8e393", "control")) == "2ed8e393"
    for bad in ("", "a.b", "a*", "a>", "a b"):
        with pytest.raises(ValueError):
            check_session_id(bad)


def test_the_binary_frame_splits_back_into_header_and_jpeg():
    header = {"type": "frame_result", "frame_index": 3}
    assert messages.split_frame_binary(messages.frame_binary(header, b"\xff\xd8jpeg")) == (header, b"\xff\xd8jpeg")
    assert messages.split_frame_binary(messages.frame_binary(header, None)) == (header, None)
    with pytest.raises(ValueError):
        messages.split_frame_binary(b"\x00\x00\x01\x00{}")
