"""What the publisher hands the sinks, for the sink tests: blank frames on a fixed clock, a real
event lifecycle turning detections into Published steps, and how long the sink took to take them."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterable

import numpy as np

from rtdetr_service.analytics.events import EventLifecycle
from rtdetr_service.core.results import Alert, Published, SessionView
from rtdetr_service.core.types import Detection, Frame, FrameResult

T0 = 1_700_000_000.0  # the wall clock of the first frame


def blank_frame(t: float, index: int = 0) -> Frame:
    """A black 64x48 frame `t` seconds after T0."""
    return Frame(np.zeros((48, 64, 3), np.uint8), index, T0 + t, t)


class CameraFeed:
    """A real event lifecycle feeding Published steps of one session, 10 frames a second, as the
    publisher does."""

    def __init__(self, view: SessionView) -> None:
        self.view = view
        self.events = EventLifecycle(view.session_id, view.camera, end_after_s=1.0)
        self.index = 0

    def step(self, detections: list[Detection], alerts: tuple[Alert, ...] = ()) -> Published:
        """The next frame with `detections` (and `alerts`), and the event changes they make."""
        frame = blank_frame(self.index * 0.1, self.index)
        self.index += 1
        changes = self.events.update(frame, detections)
        result = FrameResult(self.view.session_id, frame, tuple(detections), 0.01)
        return Published(self.view, result, alerts, tuple(changes))


def handle_durations(sink, items: Iterable[Published], pause_s: float = 0.0) -> list[float]:
    """How long each `sink.handle(item)` took, `pause_s` apart, with the garbage collector off: a
    collector pause is not the sink's time."""
    durations = []
    gc.disable()
    try:
        for item in items:
            began = time.perf_counter()
            sink.handle(item)
            durations.append(time.perf_counter() - began)
            time.sleep(pause_s)
    finally:
        gc.enable()
    return durations
