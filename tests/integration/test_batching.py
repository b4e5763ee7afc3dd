"""Given the real (tiny) RT-DETRv2, batching must not change results, and the shared worker must
serve every session even when there are more sessions than one batch holds."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from rtdetr_service.core.slot import LatestSlot
from rtdetr_service.core.types import Frame
from rtdetr_service.inference.loading import LoadOptions, load_detector
from rtdetr_service.inference.worker import InferenceWorker


@pytest.fixture(scope="module")
def detector(tiny_model_dir):
    return load_detector(str(tiny_model_dir), LoadOptions(device="cpu", input_size=320))


def _images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    sizes = [(240, 320), (480, 640), (360, 640), (720, 1280)]
    return [rng.integers(0, 255, (*sizes[i % len(sizes)], 3), dtype=np.uint8) for i in range(n)]


def test_a_batch_gives_each_image_what_it_gets_alone(detector):
    images = _images(4)
    batched = detector.detect(images, [0.0] * 4)
    for image, together in zip(images, batched, strict=True):
        (alone,) = detector.detect([image], [0.0])
        assert len(alone) == len(together)
        for a, b in zip(alone[:20], together[:20], strict=True):
            assert a.class_id == b.class_id
            assert abs(a.confidence - b.confidence) < 1e-4
            assert np.allclose(a.bbox, b.bbox, atol=0.05)


class _Camera:
    """A session as the worker sees it: a newest-frame slot and a results list."""

    def __init__(self, name: str, image: np.ndarray, worker_notify) -> None:
        self.id = name
        self.confidence_threshold = 0.3
        self.slot = LatestSlot[Frame](on_put=worker_notify)
        self.image = image
        self.delivered: list[tuple[int, int]] = []
        self.got = threading.Event()

    def offer(self, index: int) -> None:
        self.slot.put(Frame(self.image, index, time.time(), time.monotonic()))

    def take_frame(self):
        return self.slot.take()

    def deliver(self, frame, detections, inference_s) -> None:
        self.delivered.append((frame.index, len(detections)))
        self.got.set()


def test_worker_serves_more_sessions_than_a_batch_holds(detector):
    batches: list[int] = []
    worker = InferenceWorker(detector, max_batch=2, batch_wait_s=0.005, on_batch=lambda n, s: batches.append(n))
    cameras = [_Camera(f"cam{i}", img, worker.notify) for i, img in enumerate(_images(5))]
    for camera in cameras:
        worker.register(camera)
    worker.start()
    try:
        for index in range(1, 4):
            for camera in cameras:
                camera.got.clear()
                camera.offer(index)
            for camera in cameras:
                assert camera.got.wait(30), f"{camera.id} starved"
    finally:
        assert worker.stop(5)
    assert max(batches) <= 2 and sum(batches) == 15
    assert any(n == 2 for n in batches)  # frames of different sessions really were batched
    for camera in cameras:
        assert [i for i, _ in camera.delivered] == [1, 2, 3]


def test_a_failing_session_does_not_stop_the_others(detector):
    worker = InferenceWorker(detector, max_batch=4, batch_wait_s=0.005)
    good = _Camera("good", _images(1)[0], worker.notify)
    bad = _Camera("bad", _images(1)[0], worker.notify)
    bad.deliver = lambda *a: (_ for _ in ()).throw(RuntimeError("viewer exploded"))
    for camera in (bad, good):
        worker.register(camera)
    worker.start()
    try:
        for index in (1, 2):
            bad.offer(index)
            good.offer(index)
            assert good.got.wait(30)
            good.got.clear()
    finally:
        worker.stop(5)
    assert [i for i, _ in good.delivered] == [1, 2]
    assert worker.alive is False
