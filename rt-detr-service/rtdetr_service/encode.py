"""JPEG encoding: nvJPEG through torchvision on CUDA, libjpeg-turbo through OpenCV on the CPU."""

from __future__ import annotations

import logging
import threading

import cv2
import numpy as np
import torch

log = logging.getLogger(__name__)


class JpegEncoder:
    """encode(bgr_image, quality) -> JPEG bytes, on the GPU when one is in use."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self._gpu = self.device.type == "cuda"
        # Each publisher thread encodes on a CUDA stream of its own: on the default stream an
        # encode would queue behind the next inference batch, adding a batch time of latency.
        self._streams = threading.local()
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
            stream = getattr(self._streams, "stream", None)
            if stream is None:
                stream = self._streams.stream = torch.cuda.Stream(self.device)
            with torch.cuda.stream(stream):
                chw = torch.from_numpy(np.ascontiguousarray(image)).to(self.device)
                chw = chw.permute(2, 0, 1).flip(0).contiguous()
                return self._encode_jpeg(chw, quality=quality).cpu().numpy().tobytes()
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise RuntimeError("OpenCV failed to encode a JPEG")
        return buf.tobytes()
