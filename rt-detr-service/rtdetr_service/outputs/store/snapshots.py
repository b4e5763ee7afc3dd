"""The event store's snapshots on disk: one annotated JPEG per event, and their total size.

A snapshot lives at `<data_dir>/snapshots/<yyyy-mm-dd>/<event_id>.jpg`, the date (UTC) of the
event's start, so one event keeps one file however often its best view improves. Files are
written beside their place and renamed over it: a reader sees the old view or the new one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import cv2

from rtdetr_service.core.results import EventRecord, SnapshotRequest
from rtdetr_service.outputs.annotate import Annotator

log = logging.getLogger(__name__)


class SnapshotFiles:
    """The snapshot files under one data directory, and the bytes the store has on record for them."""

    def __init__(self, data_dir: Path, jpeg_quality: int) -> None:
        self.data_dir = data_dir
        self._jpeg_quality = jpeg_quality
        self._annotator = Annotator()
        self._lock = threading.Lock()
        self._total_bytes = 0

    @staticmethod
    def relative_path(record: EventRecord) -> str:
        """Where an event's snapshot lives, relative to the data directory."""
        day = time.strftime("%Y-%m-%d", time.gmtime(record.start_time))
        return f"snapshots/{day}/{record.id}.jpg"

    def write(self, record: EventRecord, request: SnapshotRequest) -> tuple[str, int, int]:
        """Draw, encode and atomically write an event's snapshot; (relative path, size, size change).
        On failure a partial file may be left for `remove_partial`."""
        rel = self.relative_path(record)
        path = self.data_dir / rel
        image = self._annotator.annotate(request.frame.image, [request.detection])
        encoded, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self._jpeg_quality])
        if not encoded:
            raise RuntimeError("JPEG encoding failed")
        data = buffer.tobytes()
        path.parent.mkdir(parents=True, exist_ok=True)
        old = path.stat().st_size if path.exists() else 0
        tmp = self._partial(path)
        with open(tmp, "wb") as out:
            out.write(data)
        os.replace(tmp, path)  # a reader sees the old snapshot or the new one, never half of one
        return rel, len(data), len(data) - old

    def remove_partial(self, record: EventRecord) -> None:
        """Remove what a failed `write` of this event's snapshot may have left; never raises (the
        folder may be gone, a file, or unreadable: the failure that brought us here is the news)."""
        try:
            self._partial(self.data_dir / self.relative_path(record)).unlink(missing_ok=True)
        except OSError as exc:
            log.debug("event store: cannot remove a partial snapshot: %s", exc)

    @staticmethod
    def _partial(path: Path) -> Path:
        return path.with_name(f".{path.name}.tmp")

    def path(self, rel: str) -> Path:
        """The file at a path relative to the data directory."""
        return self.data_dir / rel

    def remove(self, rel: str | None) -> None:
        """Remove a snapshot file (None: there is none); a file that cannot go is logged, not raised."""
        if rel is None:
            return
        try:
            (self.data_dir / rel).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("event store: cannot remove %s: %s", rel, exc)

    def remove_empty_days(self) -> None:
        """Remove the day folders that no snapshot is left in."""
        root = self.data_dir / "snapshots"
        if not root.is_dir():
            return
        for day in root.iterdir():
            try:
                if day.is_dir() and not any(day.iterdir()):
                    day.rmdir()
            except OSError:
                pass  # a snapshot arrived meanwhile, or it is not ours to remove

    # -- the bytes on record ------------------------------------------------------------------

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return self._total_bytes

    def set_total_bytes(self, total: int) -> None:
        """What the database says the snapshots on record weigh."""
        with self._lock:
            self._total_bytes = total

    def add_bytes(self, change: int) -> None:
        """Snapshots written (or rewritten smaller: a negative change)."""
        with self._lock:
            self._total_bytes += change

    def forget_bytes(self, size: int) -> None:
        """A snapshot of `size` bytes removed with its event."""
        with self._lock:
            self._total_bytes = max(0, self._total_bytes - size)
