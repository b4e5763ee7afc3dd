"""Given known logits and boxes, when post-processed, then scores, labels and source-pixel boxes are exact."""

import math

import numpy as np
import torch

from rtdetr_service.inference.detector import postprocess, to_detections


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_top_scores_become_boxes_in_source_pixels():
    # given: 2 images, 3 queries, 4 classes; query 1 of image 0 is class 2 at 0.9
    logits = torch.full((2, 3, 4), _logit(0.01))
    logits[0, 1, 2] = _logit(0.9)
    logits[0, 0, 3] = _logit(0.6)
    logits[1, 2, 0] = _logit(0.8)
    boxes = torch.tensor(
        [
            [[0.25, 0.25, 0.5, 0.5], [0.5, 0.5, 0.2, 0.4], [0.1, 0.1, 0.1, 0.1]],
            [[0.5, 0.5, 1.0, 1.0], [0.5, 0.5, 0.5, 0.5], [0.9, 0.9, 0.4, 0.4]],
        ]
    )
    sizes = torch.tensor([[720, 1280], [480, 640]])  # (height, width)

    # when
    scores, labels, xyxy = postprocess(logits, boxes, sizes, top_k=2)

    # then
    assert torch.allclose(scores[0], torch.tensor([0.9, 0.6]), atol=1e-5)
    assert labels[0].tolist() == [2, 3]
    assert torch.allclose(xyxy[0, 0], torch.tensor([0.4 * 1280, 0.3 * 720, 0.6 * 1280, 0.7 * 720]), atol=1e-3)
    assert torch.allclose(xyxy[0, 1], torch.tensor([0.0, 0.0, 0.5 * 1280, 0.5 * 720]), atol=1e-3)
    # image 1: box at the edge is clipped to the image (0.9 +- 0.2 -> 0.7..1.0)
    assert labels[1, 0].item() == 0
    assert torch.allclose(xyxy[1, 0], torch.tensor([0.7 * 640, 0.7 * 480, 640.0, 480.0]), atol=1e-3)


def test_threshold_and_names():
    scores = np.array([0.9, 0.6, 0.3], np.float32)
    labels = np.array([0, 2, 1])
    boxes = np.array([[0, 0, 10, 10], [1, 1, 5, 5], [2, 2, 3, 3]], np.float32)
    dets = to_detections(scores, labels, boxes, 0.5, ("person", "bicycle", "car"))
    assert [(d.class_name, round(d.confidence, 2)) for d in dets] == [("person", 0.9), ("car", 0.6)]
    assert dets[0].bbox == (0.0, 0.0, 10.0, 10.0)
    assert to_detections(scores, labels, boxes, 0.95, ("a", "b", "c")) == []
