"""The CUDA code paths: fp16 inference, device pre/post-processing, nvJPEG. They run wherever
torch sees a GPU (`make test` on a GPU host) and are skipped, with the reason shown, elsewhere."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from rtdetr_service.detector import load_detector, warm_up
from rtdetr_service.encode import JpegEncoder

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _image(h: int = 720, w: int = 1280) -> np.ndarray:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    cv2.rectangle(image, (100, 100), (400, 500), (0, 0, 255), -1)
    return image


def test_fp16_cuda_matches_fp32_cpu(tiny_model_dir):
    cpu = load_detector(str(tiny_model_dir), device="cpu", input_size=320)
    gpu = load_detector(str(tiny_model_dir), device="cuda", half=True, input_size=320)
    assert gpu.info.device.startswith("cuda") and gpu.info.dtype == "float16"
    image = _image()
    (on_cpu,) = cpu.detect([image], [0.0])
    (on_gpu,) = gpu.detect([image], [0.0])
    # fp16 may reorder near-ties, so match each of the CPU's top detections by class and box
    for det in on_cpu[:5]:
        assert any(
            g.class_id == det.class_id
            and (_iou(g.bbox, det.bbox) > 0.8 or np.allclose(g.bbox, det.bbox, atol=2.0))
            and abs(g.confidence - det.confidence) < 0.02
            for g in on_gpu
        ), det


def _iou(a, b) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def test_batches_of_mixed_sizes_on_the_gpu(tiny_model_dir):
    gpu = load_detector(str(tiny_model_dir), device="cuda", input_size=320)
    warm_up(gpu, max_batch=4)
    images = [_image(720, 1280), _image(1080, 1920), _image(480, 640)]
    results = gpu.detect(images, [0.0, 0.0, 0.0])
    for image, detections in zip(images, results, strict=True):
        h, w = image.shape[:2]
        assert detections and all(0 <= d.bbox[0] <= d.bbox[2] <= w and 0 <= d.bbox[3] <= h for d in detections)


def test_nvjpeg_encoder():
    encoder = JpegEncoder("cuda")
    assert encoder.backend == "nvjpeg"
    image = _image(1080, 1920)
    jpeg = encoder.encode(image, 80)
    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == image.shape
    # colours survive the BGR -> RGB -> JPEG round trip (the red box stays red)
    b, g, r = decoded[300, 250].astype(int)
    assert r > 180 and g < 80 and b < 80
