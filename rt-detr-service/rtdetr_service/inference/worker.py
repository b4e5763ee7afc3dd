"""One inference worker per device: the newest frame of every session, batched into one forward pass."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Protocol, Sequence

from rtdetr_service.core.types import Detection, Frame
from rtdetr_service.inference.detector import Detector

log = logging.getLogger(__name__)


class BatchClient(Protocol):
    """What the worker needs of a session."""

    id: str

    def take_frame(self) -> Frame | None:
        """The newest unprocessed frame, or None (also while paused)."""
        ...

    @property
    def confidence_threshold(self) -> float: ...

    def deliver(self, frame: Frame, detections: list[Detection], inference_s: float) -> None:
        """Receive this frame's detections; must not block."""
        ...


class InferenceWorker:
    """Owns the inference thread. Sessions register, `notify()` when a frame is ready, and get
    results through `deliver`. Frames never queue here: each session offers only its newest."""

    def __init__(
        self,
        detector: Detector,
        *,
        max_batch: int,
        batch_wait_s: float,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.detector = detector
        self._max_batch = max_batch
        self._batch_wait = batch_wait_s
        self._on_batch = on_batch
        self._clients: dict[str, BatchClient] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inference-worker", daemon=True)
        self._rotation = 0
        self.batches = 0
        self.errors = 0
        self.last_error: str | None = None

    def register(self, client: BatchClient) -> None:
        with self._lock:
            self._clients[client.id] = client

    def unregister(self, client_id: str) -> None:
        with self._lock:
            self._clients.pop(client_id, None)

    def notify(self) -> None:
        """A session has a new frame (called from reader threads)."""
        self._wake.set()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- the loop --------------------------------------------------------------------------

    def _clients_in_turn(self) -> list[BatchClient]:
        # Rotate the starting client so that, with more sessions than max_batch, none starves.
        with self._lock:
            clients = list(self._clients.values())
        if not clients:
            return clients
        self._rotation = (self._rotation + 1) % len(clients)
        return clients[self._rotation :] + clients[: self._rotation]

    def _gather(self) -> list[tuple[BatchClient, Frame]]:
        clients = self._clients_in_turn()
        batch: list[tuple[BatchClient, Frame]] = []
        waiting: list[BatchClient] = []
        for client in clients:
            if len(batch) >= self._max_batch:
                break
            frame = self._take(client)
            if frame is None:
                waiting.append(client)
            else:
                batch.append((client, frame))
        # A short wait lets sessions whose frame is just being decoded join this batch: one pass
        # for N cameras costs far less than N passes.
        deadline = time.monotonic() + self._batch_wait
        while batch and waiting and len(batch) < self._max_batch and not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wake.wait(remaining)
            self._wake.clear()
            still_waiting = []
            for client in waiting:
                frame = self._take(client) if len(batch) < self._max_batch else None
                if frame is None:
                    still_waiting.append(client)
                else:
                    batch.append((client, frame))
            waiting = still_waiting
        return batch

    def _take(self, client: BatchClient) -> Frame | None:
        try:
            return client.take_frame()
        except Exception as exc:  # noqa: BLE001 - one session's fault must not empty every batch
            self._failed(f"Session {client.id} could not hand over a frame: {exc}")
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                batch = self._gather()
                if not batch:
                    continue
                # Frames left unread by a full batch must not wait for the next reader notify.
                self._wake.set()
                self._infer(batch)
            except Exception as exc:  # noqa: BLE001 - this thread serves every session: it must not die
                self._failed(f"Inference worker error: {exc}")
                time.sleep(0.1)

    def _failed(self, message: str) -> None:
        self.errors += 1
        self.last_error = message
        log.exception("%s", message)

    def _infer(self, batch: Sequence[tuple[BatchClient, Frame]]) -> None:
        ready: list[tuple[BatchClient, Frame]] = []
        images = []
        for client, frame in batch:
            try:
                images.append(frame.image)
            except Exception as exc:  # noqa: BLE001 - one undecodable picture costs that frame only
                self._failed(f"Frame {frame.index} of session {client.id} could not be converted: {exc}")
                continue
            ready.append((client, frame))
        if not ready:
            return
        thresholds = [client.confidence_threshold for client, _ in ready]
        started = time.monotonic()
        try:
            results = self.detector.detect(images, thresholds)
        except Exception as exc:  # noqa: BLE001 - one bad batch (e.g. CUDA OOM) must not kill the worker
            self._failed(f"Inference failed: {exc}")
            time.sleep(0.1)
            return
        elapsed = time.monotonic() - started
        self.batches += 1
        for (client, frame), detections in zip(ready, results, strict=False):
            try:
                client.deliver(frame, detections, elapsed)
            except Exception:  # noqa: BLE001 - one session's failure must not stop the others
                log.exception("session %s failed to take its results", client.id)
        if self._on_batch is not None:
            self._on_batch(len(ready), elapsed)
