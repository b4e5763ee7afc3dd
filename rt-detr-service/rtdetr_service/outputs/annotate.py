"""Drawing detections onto frames: boxes, labels and confidences, a stable colour per class."""

from __future__ import annotations

import colorsys
from typing import Sequence

import cv2
import numpy as np

from rtdetr_service.core.types import Detection


def class_colour(class_id: int) -> tuple[int, int, int]:
    """A BGR colour that is the same for a class on every frame, session and run."""
    hue = (class_id * 0.618033988749895) % 1.0  # golden-ratio steps keep neighbours apart
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(b * 255), int(g * 255), int(r * 255)


class Annotator:
    """annotate(image, detections) -> new image; styling is fixed at construction, no state between calls."""

    def __init__(self, thickness: int | None = None, font_scale: float | None = None) -> None:
        self._thickness = thickness
        self._font_scale = font_scale
        self._font = cv2.FONT_HERSHEY_SIMPLEX

    def annotate(self, image: np.ndarray, detections: Sequence[Detection]) -> np.ndarray:
        out = image.copy()
        h, w = out.shape[:2]
        # Scale line and text with the picture so labels stay legible from 320p to 4K.
        thickness = self._thickness or max(1, round(min(h, w) / 360))
        scale = self._font_scale or max(0.4, min(h, w) / 1000)
        for det in detections:
            colour = class_colour(det.class_id)
            x1, y1, x2, y2 = (int(round(v)) for v in det.bbox)
            cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness, cv2.LINE_AA)
            label = f"{det.class_name} {det.confidence:.2f}"
            if det.track_id is not None:
                label = f"#{det.track_id} {label}"
            (tw, th), base = cv2.getTextSize(label, self._font, scale, max(1, thickness - 1))
            top = y1 - th - base - 2 if y1 - th - base - 2 >= 0 else y1
            cv2.rectangle(out, (x1, top), (x1 + tw + 4, top + th + base + 2), colour, -1)
            cv2.putText(
                out, label, (x1 + 2, top + th + 1), self._font, scale, (0, 0, 0), max(1, thickness - 1), cv2.LINE_AA
            )
        return out
