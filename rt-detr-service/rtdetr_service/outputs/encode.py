"""JPEG encoding: nvJPEG through torchvision on CUDA, libjpeg-turbo through OpenCV on the CPU."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import torch

log = logging.getLogger(__name__)


class JpegEncoder:
    """encode(bgr_image, quality) -> JPEG bytes, on the GPU when one is in use."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self._gpu = self.device.type == "cuda"
        if self._gpu:
            try:
                from torchvision.io import encode_jpeg

                self._encode_jpeg = encode_jpeg
                self.encode(np.zeros((16, 16, 3), np.uint8), 75)
            except Exception:  # noqa: BLE001 - a torchvision build without nvJPEG falls back to the CPU
                log.warning("nvJPEG unavailable; encoding JPEG on the CPU", exc_info=True)
                self._gpu = False

    @property
    def backend(self) -> str:
        return "nvjpeg" if self._gpu else "opencv"

    def encode(self, image: np.ndarray, quality: int) -> bytes:
        if self._gpu:
            return self._encode_on_gpu(image, quality)
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise RuntimeError("OpenCV failed to encode a JPEG")
        return buf.tobytes()

    def _encode_on_gpu(self, image: np.ndarray, quality: int) -> bytes:
        # Everything here runs on the legacy default stream, on purpose. torchvision's nvJPEG
        # wrapper encodes on a private stream and orders itself against the default stream only
        # (whatever stream the caller has made current), so a tensor prepared on a side stream
        # could be read before it is written, and the bitstream copied out before it is complete:
        # corrupt JPEGs under load. Inference runs on a stream of its own (detector.py), so nothing
        # slow waits on this one.
        with torch.cuda.device(self.device), torch.cuda.stream(torch.cuda.default_stream(self.device)):
            chw = torch.from_numpy(np.ascontiguousarray(image)).to(self.device)
            chw = chw.permute(2, 0, 1).flip(0).contiguous()
            # Older torchvision releases did not wait for the input at all: make it ready first.
            torch.cuda.current_stream(self.device).synchronize()
            return self._encode_jpeg(chw, quality=quality).cpu().numpy().tobytes()
