"""Session states: starting -> running <-> reconnecting -> stopped | failed."""

import pytest

from rtdetr_service.sessions.session import SessionState as S
from rtdetr_service.sessions.session import can_transition

ALLOWED = {
    (S.STARTING, S.RUNNING),
    (S.STARTING, S.STOPPED),
    (S.STARTING, S.FAILED),
    (S.RUNNING, S.RECONNECTING),
    (S.RUNNING, S.STOPPED),
    (S.RUNNING, S.FAILED),
    (S.RECONNECTING, S.RUNNING),
    (S.RECONNECTING, S.STOPPED),
    (S.RECONNECTING, S.FAILED),
    (S.FAILED, S.STOPPED),
}


@pytest.mark.parametrize("current", list(S))
@pytest.mark.parametrize("new", list(S))
def test_transitions(current, new):
    expected = current == new or (current, new) in ALLOWED
    assert can_transition(current, new) is expected


def test_stopped_is_final():
    assert not any(can_transition(S.STOPPED, s) for s in S if s != S.STOPPED)
