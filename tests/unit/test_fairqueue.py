"""One output queue for every session, and still no session can crowd out another."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from rtdetr_service.core.fairqueue import FairQueue
from rtdetr_service.outputs.base import QueuedSink


def test_a_flooding_key_pushes_out_its_own_oldest_items_only():
    q: FairQueue[str] = FairQueue(4)
    assert q.put_nowait("quiet-1", "quiet") is None
    pushed_out = [q.put_nowait(f"flood-{i}", "flood") for i in range(10)]
    # the bound holds, the flood lost its oldest, the quiet key lost nothing
    assert q.qsize() == 4
    assert pushed_out == [None] * 3 + [f"flood-{i}" for i in range(7)]
    assert q.depth("quiet") == 1 and q.depth("flood") == 3
    assert q.put_nowait("quiet-2", "quiet") == "flood-7"  # room for the quiet key comes out of the longest queue


def test_a_full_queue_of_equals_drops_the_callers_own_oldest():
    q: FairQueue[str] = FairQueue(2)
    q.put_nowait("a-1", "a")
    q.put_nowait("b-1", "b")
    assert q.put_nowait("a-2", "a") == "a-1"  # a tie: not the neighbour's item
    assert sorted([q.get_nowait(), q.get_nowait()]) == ["a-2", "b-1"]


def test_keys_take_turns_and_each_keeps_its_order():
    q: FairQueue[str] = FairQueue(100)
    for i in range(5):
        q.put_nowait(f"a{i}", "a")
    q.put_nowait("b0", "b")
    q.put_nowait("b1", "b")
    taken = [q.get_nowait() for _ in range(7)]
    assert taken == ["a0", "b0", "a1", "b1", "a2", "a3", "a4"]
    with pytest.raises(queue.Empty):
        q.get_nowait()


def test_get_waits_for_a_put_and_times_out_when_none_comes():
    q: FairQueue[int] = FairQueue(1)
    started = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.05)
    assert time.monotonic() - started >= 0.05
    threading.Timer(0.05, q.put_nowait, args=(7, "k")).start()
    assert q.get(timeout=5) == 7


class HeldSink(QueuedSink):
    """A QueuedSink whose output (a list) accepts nothing until released."""

    name = "held"

    def __init__(self, queue_size: int) -> None:
        super().__init__(queue_size=queue_size, batch_max=1)
        self.release = threading.Event()
        self.written: list = []

    def write(self, batch: list) -> None:
        self.release.wait(10)
        self.written.extend(batch)


def test_a_stalled_output_keeps_every_item_of_the_quiet_session_and_counts_the_floods_drops():
    sink = HeldSink(queue_size=16)
    sink.start()
    try:
        sink.offer(("flood", -1), "flood")  # the writer takes it and stalls
        deadline = time.monotonic() + 5
        while sink.stats().queued and time.monotonic() < deadline:
            time.sleep(0.01)
        for i in range(500):
            sink.offer(("flood", i), "flood")
            if i % 100 == 0:
                sink.offer(("quiet", i // 100), "quiet")
        stats = sink.stats()
        assert stats.queued == 16 and stats.handled == 506
        assert stats.dropped == 506 - 16 - 1 and stats.state == "degraded"

        sink.release.set()
        deadline = time.monotonic() + 5
        while sink.stats().queued and time.monotonic() < deadline:
            time.sleep(0.01)
        quiet = [i for who, i in sink.written if who == "quiet"]
        assert quiet == [0, 1, 2, 3, 4]  # all five, in order
        assert len(sink.written) == 17 and sink.stats().sent == 17
    finally:
        sink.release.set()
        sink.close(2)
