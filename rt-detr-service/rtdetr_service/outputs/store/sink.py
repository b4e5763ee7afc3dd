"""The event store sink: hands each session's event changes to the store's own writer thread."""

from __future__ import annotations

from rtdetr_service.core.results import Published
from rtdetr_service.outputs.base import SinkStats
from rtdetr_service.outputs.store.event_store import EventStore


class EventStoreSink:
    name = "event_store"

    def __init__(self, store: EventStore) -> None:
        self._store = store

    def handle(self, item: Published) -> None:
        if item.events:
            self._store.submit(item.events)  # non-blocking: a full queue drops and counts

    def session_ended(self, session_id: str) -> None:
        pass

    def close(self, timeout: float = 5.0) -> None:
        pass  # the store outlives the sink: the app stops it after every session has ended

    def stats(self) -> SinkStats:
        status = self._store.status()
        return SinkStats(
            name=self.name,
            state=status["state"],
            handled=status["written"] + status["dropped"] + status["queued"],
            sent=status["written"],
            failed=status["errors"],
            dropped=status["dropped"],
            queued=status["queued"],
            queue_size=status["queue_size"],
            last_error=status["last_error"],
            restarts=status["restarts"],
            detail={"backend": status["backend"], "detail": status["detail"]},
        )
