"""The one writer loop every I/O sink shares: its idle hook, its bounded drain, its failures."""

from __future__ import annotations

import threading
import time

from rtdetr_service.outputs.base import QueuedSink


class Recording(QueuedSink):
    """A sink whose writes take `write_s` each (or wait for `release`), recording what happened in order."""

    name = "recording"
    wait_s = 0.02

    def __init__(self, *, batch_max: int = 1, write_s: float = 0.0, weight: int = 1) -> None:
        super().__init__(queue_size=1024, batch_max=batch_max)
        self.write_s = write_s
        self.entry_weight = weight
        self.release: threading.Event | None = None
        self.fail_next = 0
        self.events: list = []
        self.given: list[int] = []

    def idle(self) -> None:
        self.events.append("idle")

    def write(self, batch: list) -> None:
        if self.release is not None:
            self.release.wait(10)
        time.sleep(self.write_s)
        if self.fail_next:
            self.fail_next -= 1
            raise OSError("disk full")
        self.events.append(("write", list(batch)))

    def weight(self, entry) -> int:
        return self.entry_weight

    def given_up(self, count: int) -> None:
        self.given.append(count)
        super().given_up(count)

    def wrote(self) -> list:
        return [entry for event in self.events if event != "idle" for entry in event[1]]


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_idle_runs_at_start_before_any_write_and_between_every_two_batches():
    sink = Recording()
    for i in range(3):
        sink.offer(i, "s")
    sink.start()
    try:
        assert wait_until(lambda: sink.wrote() == [0, 1, 2])
        assert sink.events[:6] == ["idle", ("write", [0]), "idle", ("write", [1]), "idle", ("write", [2])]
    finally:
        sink.close(1)


def test_idle_keeps_running_while_no_entries_come():
    sink = Recording()
    sink.start()
    try:
        # wait_s is 0.02: a writer with nothing to do still calls idle() every wait
        assert wait_until(lambda: sink.events.count("idle") >= 5, timeout=2)
        assert sink.wrote() == []
    finally:
        sink.close(1)


def test_drain_writes_everything_queued_when_there_is_time():
    sink = Recording(write_s=0.01)
    sink.start()
    for i in range(10):
        sink.offer(i, "s")

    assert sink.drain(5.0) is True

    assert sink.wrote() == list(range(10)) and sink.given == []
    stats = sink.stats()
    assert stats.sent == 10 and stats.dropped == 0 and stats.queued == 0


def test_drain_gives_up_what_it_had_no_time_for_counted_by_weight():
    sink = Recording(write_s=0.1, weight=2)
    sink.start()
    for i in range(30):
        sink.offer(i, "s")

    started = time.monotonic()
    sink.drain(0.35)
    assert time.monotonic() - started < 0.5

    assert sink.drain(1.0) is True  # the write in hand when time ran out ends, and nothing after it
    written = len(sink.wrote())
    assert 1 <= written <= 5
    assert sink.given == [2 * (30 - written)]  # once, every entry's weight
    stats = sink.stats()
    assert stats.dropped == 2 * (30 - written) and stats.sent == 2 * written and stats.queued == 0


def test_drain_returns_in_time_when_a_write_hangs_and_the_writer_then_takes_nothing_more():
    sink = Recording()
    sink.release = threading.Event()
    sink.start()
    for i in range(5):
        sink.offer(i, "s")
    assert wait_until(lambda: sink.stats().queued == 4)  # the first is in the hanging write

    started = time.monotonic()
    assert sink.drain(0.2) is False
    assert time.monotonic() - started < 0.5
    assert sink.given == [4]

    sink.release.set()
    assert sink.drain(1.0) is True  # again: legal, and the writer has ended
    assert sink.wrote() == [0] and sink.given == [4]


def test_drain_before_start_gives_up_everything_queued():
    sink = Recording()
    sink.offer("a", "s")
    sink.offer("b", "t")

    assert sink.drain(0.5) is True
    assert sink.given == [2] and sink.stats().dropped == 2


def test_close_lets_the_writer_finish_everything_queued_however_long_it_takes():
    sink = Recording(write_s=0.05)
    sink.start()
    for i in range(6):
        sink.offer(i, "s")

    started = time.monotonic()
    sink.close(0.05)
    assert time.monotonic() - started < 0.3

    assert wait_until(lambda: sink.wrote() == list(range(6)), timeout=5)
    assert sink.given == [] and sink.stats().dropped == 0


def test_a_failing_write_costs_its_batch_counted_by_weight_never_the_thread():
    sink = Recording(batch_max=3, weight=2)
    sink.fail_next = 1
    for i in range(3):
        sink.offer(i, "s")
    sink.start()
    try:
        assert wait_until(lambda: sink.stats().failed == 6)
        stats = sink.stats()
        assert stats.state == "failing" and stats.last_error == "OSError: disk full"

        sink.offer(3, "s")
        assert wait_until(lambda: sink.wrote() == [3])
        stats = sink.stats()
        assert stats.sent == 2 and stats.state == "ok"
    finally:
        sink.close(1)


def test_a_sink_that_counts_its_own_deliveries_is_not_counted_on_write():
    class Deferred(Recording):
        def after_write(self, batch: list) -> None:
            pass  # delivery reports would count them

    sink = Deferred()
    sink.offer("a", "s")
    sink.start()
    try:
        assert wait_until(lambda: sink.wrote() == ["a"])
        assert sink.stats().sent == 0
    finally:
        sink.close(1)


class Crashing(Recording):
    """A sink whose loop hooks raise (a bug, not a failed write): `idle_raises` times in idle(),
    `after_raises` times in after_write()."""

    name = "crashing"

    def __init__(self, *, idle_raises: int = 0, after_raises: int = 0) -> None:
        super().__init__()
        self.idle_raises = idle_raises
        self.after_raises = after_raises

    def idle(self) -> None:
        super().idle()
        if self.idle_raises:
            self.idle_raises -= 1
            raise RuntimeError("a bug in idle")

    def after_write(self, batch: list) -> None:
        if self.after_raises:
            self.after_raises -= 1
            raise KeyError("a bug after a write")
        super().after_write(batch)


def test_an_exception_out_of_the_loop_restarts_it_after_a_backoff_and_says_so():
    sink = Crashing(idle_raises=2)
    sink.restart_backoff_s = (0.05, 0.1)
    sink.start()
    try:
        # while it backs off, the sink says why in words and counts the restart
        assert wait_until(lambda: sink.stats().state == "failing", timeout=2)
        stats = sink.stats()
        assert "the writer loop crashed and restarts" in stats.last_error and "a bug in idle" in stats.last_error
        sink.offer("after", "s")
        assert wait_until(lambda: sink.wrote() == ["after"], timeout=3)
        assert sink.restarts == 2 and sink._thread.is_alive()
        assert wait_until(lambda: sink.stats().state == "ok", timeout=2)  # the next good write ends the burst
    finally:
        sink.close(1)


def test_a_bug_after_a_write_costs_no_later_item():
    sink = Crashing(after_raises=1)
    sink.restart_backoff_s = (0.01,)
    sink.start()
    try:
        for i in range(3):
            sink.offer(i, "s")
        assert wait_until(lambda: sink.wrote() == [0, 1, 2], timeout=3)
        assert sink.restarts == 1
    finally:
        sink.close(1)


def test_a_writer_thread_that_ended_while_not_stopping_is_failing_in_words():
    sink = Recording()
    sink._run = lambda: None  # the thread target is bound at construction: replace the loop itself
    sink._thread = threading.Thread(target=lambda: None, daemon=True)
    sink.start()
    sink._thread.join(1)
    stats = sink.stats()
    assert stats.state == "failing" and stats.last_error == "the writer thread ended; nothing is written"
    sink.close(1)
    assert sink.stats().state != "failing"  # a closed sink's ended thread is no fault
