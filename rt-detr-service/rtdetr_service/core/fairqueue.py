"""A bounded queue shared by every session, where one session cannot crowd out the others.

Each output (and the event store) has one queue and one writer thread for the whole service. With
a plain FIFO, a session that produces a flood (a random-weight model opens hundreds of events a
second; a busy scene) fills it, and every other session's items are then refused. Here each key
(a session) has its own FIFO inside the one bound: when the bound is reached, the oldest item of
the longest FIFO is dropped to make room, so whoever floods pays for it; and the writer takes
the keys in turn, so a long backlog of one session does not delay another's next item.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict, deque
from typing import Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    """FIFO per key under one total bound; `get` round-robin over keys. Thread-safe.

    `put_nowait` never blocks and never refuses: it returns the item dropped to make room (the
    oldest of the longest queue, perhaps the caller's own), or None. `get` and `get_nowait` raise
    `queue.Empty` as `queue.Queue` does.
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self._queues: OrderedDict[str, deque[T]] = OrderedDict()  # in turn order: the next key first
        self._size = 0
        self._ready = threading.Condition(threading.Lock())

    def put_nowait(self, item: T, key: str) -> T | None:
        with self._ready:
            dropped = None
            if self._size >= self.maxsize:
                longest = max(self._queues, key=lambda k: len(self._queues[k]))
                if len(self._queues.get(key, ())) >= len(self._queues[longest]):
                    longest = key  # a tie: the caller's own oldest goes, not a neighbour's
                dropped = self._pop(longest)
            self._queues.setdefault(key, deque()).append(item)
            self._size += 1
            self._ready.notify()
            return dropped

    def get(self, timeout: float | None = None) -> T:
        with self._ready:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._size:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise queue.Empty
                self._ready.wait(left)
            return self._next()

    def get_nowait(self) -> T:
        with self._ready:
            if not self._size:
                raise queue.Empty
            return self._next()

    def qsize(self) -> int:
        with self._ready:
            return self._size

    def depth(self, key: str) -> int:
        """How many items of `key` wait."""
        with self._ready:
            return len(self._queues.get(key, ()))

    def _next(self) -> T:
        key = next(iter(self._queues))
        item = self._pop(key)
        if key in self._queues:
            self._queues.move_to_end(key)  # its turn is over
        return item

    def _pop(self, key: str) -> T:
        items = self._queues[key]
        item = items.popleft()
        if not items:
            del self._queues[key]
        self._size -= 1
        return item
