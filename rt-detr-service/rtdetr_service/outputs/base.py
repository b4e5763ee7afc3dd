"""The sink interface: what every output of the results pipeline implements.

A session's publisher calls `handle()` on every sink for every published frame (and for the
event changes of frames that never came: a stalled camera still ends its events). `handle()`
runs on that session's publisher thread, so it must never block: a sink that does I/O puts the
item on its own bounded queue (`QueuedSink`) and drops, counted, when the queue is full. That
queue is fair between sessions (`FairQueue`): a session that floods it drops its own oldest
items, not its neighbours'.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol, Sequence

from rtdetr_service.core.fairqueue import FairQueue
from rtdetr_service.core.results import Published

log = logging.getLogger(__name__)
DEGRADED_FOR_S = 60.0
ENDED = "the writer thread ended; nothing is written"


@dataclass(frozen=True, slots=True)
class SinkStats:
    """One sink's counters, read by /metrics, /ready and GET /api/v1/outputs."""

    name: str
    state: str = "ok"  # ok | degraded | failing
    handled: int = 0  # items taken (queued, or done inline)
    sent: int = 0  # items written / delivered
    failed: int = 0  # items whose write failed
    dropped: int = 0  # items refused because the sink could not keep up
    queued: int = 0
    queue_size: int = 0
    last_error: str | None = None
    restarts: int = 0  # times its writer loop crashed (a bug, not a failed write) and was restarted
    detail: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "state": self.state,
            "handled": self.handled,
            "sent": self.sent,
            "failed": self.failed,
            "dropped": self.dropped,
            "queued": self.queued,
            "queue_size": self.queue_size,
            "last_error": self.last_error,
            "restarts": self.restarts,
            **self.detail,
        }


class Sink(Protocol):
    name: str

    def handle(self, item: Published) -> None:
        """Take one item; must not block (queue it, or do only per-session CPU work)."""
        ...

    def session_ended(self, session_id: str) -> None:
        """Forget whatever is kept for this session."""
        ...

    def close(self, timeout: float) -> None:
        """Flush what is queued (bounded by timeout) and release resources; idempotent."""
        ...

    def stats(self) -> SinkStats: ...


def republish(targets: Sequence[Sink], item: Published, what: str) -> int:
    """An item a sink made of its own (an update with its words or identity) to the other outputs: each
    takes it without blocking, and one's failure is its own, logged with `what` it was taking. Returns
    how many failed."""
    failed = 0
    for sink in targets:
        try:
            sink.handle(item)
        except Exception:  # noqa: BLE001 - one output's failure must not keep the others from it
            failed += 1
            log.exception("sink %s: taking %s failed", sink.name, what)
    return failed


class QueuedSink:
    """Base of sinks that do I/O: a bounded queue, one writer thread, drops counted.

    Subclasses implement `accept(item)` (cheap, on the publisher thread: pick what to queue, or
    None to skip) and `write(batch)` (on the writer thread); a sink that makes several entries of
    an item calls `offer` for each. A failing write is counted and logged once per burst; it
    never ends the thread. Anything else that escapes the loop (a bug in a hook) is caught by
    its supervisor, said in words (`failing`, `last_error`, `restarts`), and the loop restarts
    after a backoff; a thread that ended anyway while not stopping reads as `failing`. Hooks a
    sink may override, all on the writer thread: `idle()` before every wait for entries (the
    first at start), `after_write(batch)` after a write that returned, `given_up(count)` for
    what `drain()` had no time to write, and `ready()`, asked before each take: while it says no,
    entries wait in the queue (a sink whose resource is still loading); and one on the offering
    thread, `dropped_entry(entry)`, for an entry the full queue pushed out.
    """

    name = "queued"
    wait_s = 0.2  # the longest the writer waits for an entry before it calls idle() again
    restart_backoff_s: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0)  # after each crash in a row

    def __init__(self, *, queue_size: int = 1024, batch_max: int = 64) -> None:
        self._queue: FairQueue = FairQueue(queue_size)
        self._queue_size = queue_size
        self._batch_max = batch_max
        self._stop = threading.Event()
        self._deadline = math.inf  # once stopping, the writer takes no entry after this (monotonic)
        self._thread = threading.Thread(target=self._supervise, name=f"sink-{self.name}", daemon=True)
        self._lock = threading.Lock()
        self.handled = 0
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self.last_error: str | None = None
        self._failing = False
        self._last_drop = float("-inf")
        self.restarts = 0
        self._crashes_in_a_row = 0

    def start(self) -> None:
        self._thread.start()

    # -- publisher side ----------------------------------------------------------------------

    def accept(self, item: Published):
        """What to queue for this item (None: nothing)."""
        return item

    def handle(self, item: Published) -> None:
        entry = self.accept(item)
        if entry is not None:
            self.offer(entry, item.session.session_id)

    def weight(self, entry) -> int:
        """How many messages an entry stands for in the counters."""
        return 1

    def offer(self, entry, session_id: str) -> None:
        """Queue one entry of a session. When the queue is full, the oldest entry of the session
        with the most waiting makes room (counted as dropped): whoever floods loses its own."""
        weight = self.weight(entry)
        with self._lock:
            self.handled += weight
        pushed_out = self._queue.put_nowait(entry, session_id)
        if pushed_out is not None:
            self._count_dropped(self.weight(pushed_out))
            self.dropped_entry(pushed_out)

    def dropped_entry(self, entry) -> None:
        """Called on the offering thread with an entry the queue dropped to make room (counted already):
        a sink that remembers what it queued forgets it here."""

    def _count_dropped(self, n: int) -> None:
        with self._lock:
            self.dropped += n
            self._last_drop = time.monotonic()

    def session_ended(self, session_id: str) -> None:
        pass

    # -- writer side -------------------------------------------------------------------------

    def write(self, batch: list) -> None:
        raise NotImplementedError

    def idle(self) -> None:
        """Called before every wait for entries, the first time at start: periodic work goes here."""

    def ready(self) -> bool:
        """Whether the writer may take entries now; it may wait up to `wait_s` to say so."""
        return True

    def after_write(self, batch: list) -> None:
        """After a write that returned: its entries count as sent, and a failing burst ends."""
        with self._lock:
            self.sent += sum(self.weight(entry) for entry in batch)
        if self._failing:
            log.info("sink %s: writing again", self.name)
        self._failing = False

    def given_up(self, count: int) -> None:
        """Count the messages `drain()` had no time to write, as dropped."""
        with self._lock:
            self.dropped += count

    def _supervise(self) -> None:
        """Run the loop; restart it after a backoff whenever something escapes it."""
        while True:
            try:
                self._run()
                return
            except Exception as exc:  # noqa: BLE001 - the output's thread must outlive a bug in one hook
                delay = self._crashed(exc)
            if self._stop.is_set():
                return  # stopping: what is left is drain()'s to give up
            self._stop.wait(delay)

    def _crashed(self, exc: BaseException) -> float:
        """Count and say a crash of the loop; the backoff before the restart."""
        with self._lock:
            self.restarts += 1
            delay = self.restart_backoff_s[min(self._crashes_in_a_row, len(self.restart_backoff_s) - 1)]
            self._crashes_in_a_row += 1
            self.last_error = f"the writer loop crashed and restarts in {delay:g} s: {type(exc).__name__}: {exc}"[:500]
            first_of_burst = not self._failing
            self._failing = True
        if first_of_burst:
            log.exception("sink %s: %s", self.name, self.last_error)
        return delay

    def _run(self) -> None:
        while True:
            self.idle()
            stopping = self._stop.is_set()
            if stopping and time.monotonic() >= self._deadline:
                return  # what is left is drain()'s to give up
            if not self.ready():
                if stopping:
                    return  # it will not be ready in time: what is left is drain()'s to give up
                continue
            batch = self._take(wait=not stopping)
            if batch:
                self._write_counted(batch)
            elif stopping:
                return

    def _take(self, wait: bool) -> list:
        """The next batch, in the queue's fair order; empty when none came within `wait_s`."""
        try:
            first = self._queue.get(timeout=self.wait_s) if wait else self._queue.get_nowait()
        except queue.Empty:
            return []
        batch = [first]
        while len(batch) < self._batch_max:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _write_counted(self, batch: list) -> None:
        try:
            self.write(batch)
        except Exception as exc:  # noqa: BLE001 - an output's failure costs its items, never the thread
            with self._lock:
                self.failed += sum(self.weight(entry) for entry in batch)
                self.last_error = f"{type(exc).__name__}: {exc}"[:500]
            if not self._failing:
                log.warning("sink %s: writing %d item(s) failed: %s", self.name, len(batch), self.last_error)
            self._failing = True
            return
        self._crashes_in_a_row = 0
        self.after_write(batch)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the writer once it has written everything queued; waits for that at most `timeout`."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def drain(self, timeout: float) -> bool:
        """Stop the writer after it has written what is queued, for at most `timeout` seconds; what
        is still queued then goes to `given_up`. True once the writer has ended (or never started)."""
        self._deadline = min(self._deadline, time.monotonic() + timeout)
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        left = 0
        while True:
            try:
                left += self.weight(self._queue.get_nowait())
            except queue.Empty:
                break
        if left:
            self.given_up(left)
        return not self._thread.is_alive()

    def stats(self) -> SinkStats:
        ended = self.thread_ended()
        with self._lock:
            # Degraded while drops are recent: one burst an hour ago is history, not a state.
            recent_drop = time.monotonic() - self._last_drop < DEGRADED_FOR_S
            state = "failing" if self._failing or ended else ("degraded" if recent_drop else "ok")
            return SinkStats(
                name=self.name,
                state=state,
                handled=self.handled,
                sent=self.sent,
                failed=self.failed,
                dropped=self.dropped,
                queued=self._queue.qsize(),
                queue_size=self._queue_size,
                last_error=ENDED if ended else self.last_error,
                restarts=self.restarts,
            )

    def thread_ended(self) -> bool:
        """True when the writer thread started and ended while no one stopped it: nothing is written."""
        return self._thread.ident is not None and not self._thread.is_alive() and not self._stop.is_set()
