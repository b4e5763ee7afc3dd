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
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from rtdetr_service.core.fairqueue import FairQueue
from rtdetr_service.core.results import Published

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)
DEGRADED_FOR_S = 60.0


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


class QueuedSink:
    """Base of sinks that do I/O: a bounded queue, one writer thread, drops counted.

    Subclasses implement `accept(item)` (cheap, on the publisher thread: pick what to queue, or
    None to skip) and `write(batch)` (on the writer thread); a sink that makes several entries of
    an item calls `offer` for each. A failing write is counted and logged once per burst; it
    never ends the thread.
    """

    name = "queued"

    def __init__(self, *, queue_size: int = 1024, batch_max: int = 64) -> None:
        self._queue: FairQueue = FairQueue(queue_size)
        self._queue_size = queue_size
        self._batch_max = batch_max
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sink-{self.name}", daemon=True)
        self._lock = threading.Lock()
        self.handled = 0
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self.last_error: str | None = None
        self._failing = False
        self._last_drop = float("-inf")

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

    def _count_dropped(self, n: int) -> None:
        with self._lock:
            self.dropped += n
            self._last_drop = time.monotonic()

    def session_ended(self, session_id: str) -> None:
        pass

    # -- writer side -------------------------------------------------------------------------

    def write(self, batch: list) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            batch = [first]
            while len(batch) < self._batch_max:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._write_counted(batch)

    def _write_counted(self, batch: list) -> None:
        try:
            self.write(batch)
        except Exception as exc:  # noqa: BLE001 - an output's failure costs its items, never the thread
            with self._lock:
                self.failed += len(batch)
                self.last_error = f"{type(exc).__name__}: {exc}"[:500]
            if not self._failing:
                log.warning("sink %s: writing %d item(s) failed: %s", self.name, len(batch), self.last_error)
            self._failing = True
            return
        with self._lock:
            self.sent += len(batch)
        if self._failing:
            log.info("sink %s: writing again", self.name)
        self._failing = False

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def stats(self) -> SinkStats:
        with self._lock:
            # Degraded while drops are recent: one burst an hour ago is history, not a state.
            recent_drop = time.monotonic() - self._last_drop < DEGRADED_FOR_S
            state = "failing" if self._failing else ("degraded" if recent_drop else "ok")
            return SinkStats(
                name=self.name,
                state=state,
                handled=self.handled,
                sent=self.sent,
                failed=self.failed,
                dropped=self.dropped,
                queued=self._queue.qsize(),
                queue_size=self._queue_size,
                last_error=self.last_error,
            )
