"""Recordings: the floor's one face over the recorders, their index and the retention sweep.

The web floor opens it beside the event store (it lives in the store's database) and hands it to
the session manager; each recording session gets a `Recorder` from it. The sweep runs on a
thread of its own (`recordings-sweep`), not on the event store's writer: deleting files of a full
disk must never hold back event rows, and events mode needs a sweep every few seconds, not the
event store's every ten minutes.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable

from rtdetr_service.outputs.recordings.index import RecordingIndex
from rtdetr_service.outputs.recordings.recorder import RECORDINGS_DIR, Recorder, remove_parts
from rtdetr_service.outputs.recordings.retention import RecordingPolicy, RecordingRetention, SweepResult
from rtdetr_service.outputs.recordings.settings import RecordingSettings
from rtdetr_service.outputs.store.schema import Database, words

log = logging.getLogger(__name__)

_GB = 1024**3


class Recordings:
    """Makes each session's recorder and keeps the recordings within their limits."""

    def __init__(
        self, settings: RecordingSettings, data_dir: Path, db: Database, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.data_dir = Path(data_dir)
        self.index = RecordingIndex(db, self.data_dir)
        self._clock = clock
        policy = RecordingPolicy(
            pre_s=settings.record_pre_s,
            post_s=settings.record_post_s,
            retain_s=settings.record_retain_days * 86400.0,
            events_retain_s=settings.record_events_retain_days * 86400.0,
            max_bytes=int(settings.record_max_gb * _GB),
            stale_part_s=self.stale_part_s,
        )
        self.retention = RecordingRetention(self.index, policy, clock)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sweep_loop, name="recordings-sweep", daemon=True)
        self.sweep_error: str | None = None
        self._clip_slots = threading.BoundedSemaphore(settings.record_clips_max)

    def clip_slot(self) -> bool:
        """Take one of the RECORD_CLIPS_MAX places for a clip or export being streamed; False when none
        is free. The caller gives it back with `clip_done()` when its stream ends, however it ends."""
        return self._clip_slots.acquire(blocking=False)

    def clip_done(self) -> None:
        self._clip_slots.release()

    @property
    def stale_part_s(self) -> float:
        """A part file no writer touched this long was left by a crash. A live one is written at every
        packet and closed at the latest RECORD_SEGMENT_MAX_S after it opened; replicas sharing DATA_DIR
        must not delete each other's."""
        return 2 * self.settings.record_segment_max_s + 60.0

    def start(self) -> int:
        """Delete part files a crash left, then start the sweep; returns how many part files went."""
        removed = remove_parts(self.data_dir / RECORDINGS_DIR, older_than=self._clock() - self.stale_part_s)
        if removed:
            log.warning("recordings: deleted %d unfinished segment(s) left by a crash", removed)
        self._thread.start()
        return removed

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread.ident:
            self._thread.join(timeout)

    def recorder(self, session_id: str, camera: str | None, mode: str) -> Recorder:
        """A new recorder for a session (not started)."""
        return Recorder(
            session_id,
            camera,
            mode=mode,
            settings=self.settings,
            data_dir=self.data_dir,
            index=self.index,
            clock=self._clock,
        )

    def sweep(self, now: float | None = None) -> SweepResult:
        """Run the retention sweep now."""
        return self.retention.sweep(now)

    def _sweep_loop(self) -> None:
        while not self._stop.wait(self.settings.record_sweep_s):
            try:
                self.sweep()
                self.sweep_error = None
            except Exception as exc:  # noqa: BLE001 - a database or disk down: tried again next time
                if self.sweep_error is None:
                    log.warning("recordings retention failed: %s", words(exc))
                self.sweep_error = words(exc)

    def status(self) -> dict:
        r = self.retention
        return {
            "deleted_unneeded": r.deleted_unneeded,
            "deleted_expired": r.deleted_expired,
            "deleted_over_size": r.deleted_over_size,
            "freed_bytes": r.freed_bytes,
            "removed_parts": r.removed_parts,
            "sweep_error": self.sweep_error,
        }
