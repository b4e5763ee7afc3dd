"""Given an ultralytics RT-DETR `.pt` checkpoint, when MODEL names it, then the same service
serves it: boxes in source pixels, class names from the checkpoint, honest about training."""

from __future__ import annotations

import os

import numpy as np
import pytest
from websockets.sync.client import connect

from rtdetr_service.inference.detector import UltralyticsRTDetr
from rtdetr_service.inference.loading import LoadOptions, load_detector

from support import frame_results, make_settings, run_service


@pytest.fixture(scope="module")
def rtdetr_pt(tmp_path_factory):
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import RTDETR

    # The rtdetr-l architecture with random weights, saved the way ultralytics saves checkpoints.
    path = tmp_path_factory.mktemp("ultralytics") / "rt-detr.pt"
    RTDETR("rtdetr-l.yaml").save(str(path))
    return path


def test_loader_picks_ultralytics_for_pt(rtdetr_pt):
    detector = load_detector(str(rtdetr_pt), LoadOptions(device="cpu", input_size=320))
    assert isinstance(detector, UltralyticsRTDetr)
    assert detector.info.backend == "ultralytics"
    assert detector.info.trained is False  # no training record in the checkpoint
    assert len(detector.info.class_names) == 80

    images = [np.full((240, 320, 3), 90, np.uint8), np.full((480, 640, 3), 30, np.uint8)]
    results = detector.detect(images, [0.0, 0.0])
    assert len(results) == 2 and results[0] and results[1]
    for image, detections in zip(images, results, strict=False):
        h, w = image.shape[:2]
        for det in detections:
            x1, y1, x2, y2 = det.bbox
            assert 0 <= x1 <= x2 <= w + 1e-3 and 0 <= y1 <= y2 <= h + 1e-3
            assert det.class_name == detector.info.class_names[det.class_id]
    assert detector.detect(images, [1.0, 1.0]) == [[], []]


def test_missing_pt_is_a_clear_error(tmp_path):
    from rtdetr_service.inference.loading import ModelLoadError

    with pytest.raises(ModelLoadError, match="does not exist"):
        load_detector(str(tmp_path / "nope.pt"), LoadOptions(device="cpu"))


def test_service_streams_with_the_ultralytics_backend(rtdetr_pt, rtsp_url):
    service = run_service(make_settings(rtdetr_pt))
    try:
        with service.client() as client:
            response = client.post("/api/v1/video/start", json={"stream_url": rtsp_url, "confidence_threshold": 0.0})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["model"]["backend"] == "ultralytics" and body["model"]["trained"] is False
            with connect(service.ws_base + body["websocket_path"], open_timeout=10) as ws:
                results = frame_results(ws, 2, recv_timeout=30)
            assert len(results) == 2 and results[0]["detections"]
            client.post("/api/v1/video/stop", json={"session_id": body["session_id"]})
    finally:
        service.stop()
