"""The pictures the VLM stage sends: small copies cut on the publisher thread, JPEG-encoded on the stage's.

A description's pictures are the object with some context around it (`cut` from the embedding stage's
crops, padded more), never a frame: live views are the same pictures a few frames of the event's clip
would hold, without decoding a recording. A rule's picture is the whole frame that fired it, shrunk,
with the object's box drawn, so the model sees where it stands. Both are kept as small RGB arrays and
encoded only when the request is sent (bench/vlm_views.py: encoding each new best view on the
publisher thread costs it more than the cut itself, and most best views are replaced unsent).
"""

from __future__ import annotations

import cv2
import numpy as np

from rtdetr_service.outputs.embeddings.crops import cut

BOX_BGR = (0, 0, 255)  # the box the rule's question is about, drawn in red
JPEG_QUALITY = 85  # the model reads details a viewer's stream may blur; these pictures are few and small

__all__ = ["BOX_BGR", "JPEG_QUALITY", "alert_view", "cut_view", "jpeg"]


def cut_view(image_bgr: np.ndarray, bbox: tuple[float, float, float, float], max_px: int, context: float):
    """The object's box with `context` of its size around it on each side, at most `max_px` on its
    long side, as an RGB copy; None when no pixel of it is in the frame."""
    return cut(image_bgr, bbox, max_px, pad=context)


def alert_view(image_bgr: np.ndarray, bbox: tuple[float, float, float, float], max_px: int) -> np.ndarray:
    """The whole frame shrunk to at most `max_px` on its long side, the box drawn, as an RGB copy."""
    height, width = image_bgr.shape[:2]
    scale = min(1.0, max_px / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        interpolation = cv2.INTER_AREA if scale < 0.5 else cv2.INTER_LINEAR
        small = cv2.resize(image_bgr, size, interpolation=interpolation)
    else:
        small = image_bgr.copy()
    x1, y1, x2, y2 = (round(v * scale) for v in bbox)
    thickness = max(2, round(max(small.shape[:2]) / 300))
    cv2.rectangle(small, (x1, y1), (x2, y2), BOX_BGR, thickness)
    return cv2.cvtColor(small, cv2.COLOR_BGR2RGB)


def jpeg(image_rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """One view as JPEG bytes (libjpeg-turbo through OpenCV: a few small pictures, never worth a GPU trip)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV failed to encode a JPEG")
    return buf.tobytes()
