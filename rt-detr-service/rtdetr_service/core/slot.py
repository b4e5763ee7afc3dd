"""A size-1 slot that keeps only the newest item: the rule for live video."""

from __future__ import annotations

import threading
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class LatestSlot(Generic[T]):
    """Holds at most one item; a put replaces the unread item and counts it as dropped."""

    def __init__(self, on_put: Callable[[], None] | None = None) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._item: T | None = None
        self._closed = False
        self._on_put = on_put
        self.dropped = 0
        self.put_count = 0

    def put(self, item: T) -> bool:
        """Store item, replacing any unread one. Returns True if an older item was dropped."""
        with self._cond:
            if self._closed:
                return False
            replaced = self._item is not None
            if replaced:
                self.dropped += 1
            self._item = item
            self.put_count += 1
            self._cond.notify_all()
        if self._on_put is not None:
            self._on_put()
        return replaced

    def take(self) -> T | None:
        """Remove and return the item, or None at once if the slot is empty."""
        with self._cond:
            item, self._item = self._item, None
            return item

    def get(self, timeout: float | None = None) -> T | None:
        """Wait up to timeout for an item; None on timeout or when closed."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        """Wake every waiter; later puts are ignored."""
        with self._cond:
            self._closed = True
            self._item = None
            self._cond.notify_all()

    @property
    def empty(self) -> bool:
        """True when no unread item waits (a hint: it may change at once)."""
        return self._item is None

    @property
    def closed(self) -> bool:
        return self._closed


class ModelSlot(Generic[T]):
    """A model another thread loads (the app's loader thread): set once it is there, or why it could
    not be; whoever uses it waits without blocking anyone and can say, in words, why it is not there."""

    def __init__(self, what: str, meanwhile: str = "requests wait") -> None:
        self._what = what  # "the image encoder", "the vision-language model"
        self._meanwhile = meanwhile  # what happens to the work while it is not there
        self._loaded = threading.Event()
        self._lock = threading.Lock()
        self._model: T | None = None
        self._error: str | None = None

    def set(self, model: T) -> None:
        with self._lock:
            self._model, self._error = model, None
        self._loaded.set()

    def fail(self, words: str) -> None:
        with self._lock:
            self._error = words

    @property
    def failed(self) -> bool:
        with self._lock:
            return self._model is None and self._error is not None

    def get(self) -> T | None:
        with self._lock:
            return self._model

    def wait(self, timeout: float) -> T | None:
        self._loaded.wait(timeout)
        return self.get()

    def waiting_for(self) -> str | None:
        """Why the model is not there, in words; None once it is."""
        with self._lock:
            if self._model is not None:
                return None
            if self._error is not None:
                return f"{self._what} failed to load ({self._error}): {self._meanwhile}"
            return f"{self._what} is loading: requests wait in the queue"
