"""The newest-frame slot: replaces, counts drops, never blocks a producer, wakes consumers."""

import threading
import time

from rtdetr_service.core.slot import LatestSlot


def test_keeps_only_newest_and_counts_drops():
    slot = LatestSlot[int]()
    assert slot.put(1) is False
    assert slot.put(2) is True
    assert slot.put(3) is True
    assert slot.take() == 3
    assert slot.take() is None
    assert slot.dropped == 2 and slot.put_count == 3


def test_get_waits_for_a_put_and_close_wakes_it():
    slot = LatestSlot[str]()
    got = []
    consumer = threading.Thread(target=lambda: got.append(slot.get(timeout=5)))
    consumer.start()
    slot.put("frame")
    consumer.join(2)
    assert got == ["frame"]

    waiter = threading.Thread(target=lambda: got.append(slot.get(timeout=30)))
    waiter.start()
    time.sleep(0.05)
    slot.close()
    waiter.join(2)
    assert not waiter.is_alive() and got[-1] is None
    assert slot.put("late") is False and slot.take() is None


def test_on_put_callback_runs_for_every_put():
    calls = []
    slot = LatestSlot[int](on_put=lambda: calls.append(1))
    for i in range(5):
        slot.put(i)
    assert len(calls) == 5
