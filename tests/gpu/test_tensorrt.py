"""TensorRT on NVIDIA: fp16 engine parity with torch fp16 and batches of mixed sizes within the
optimisation profile. Skipped, with the reason shown, without a CUDA GPU or the tensorrt package
(`pip install tensorrt` on the GPU host: it is not in requirements.txt)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from rtdetr_service.inference.loading import LoadOptions, load_detector

from tiny_model import ARCHITECTURES, build

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="needs the tensorrt package"),
    pytest.mark.timeout(600),
]

MAX_BATCH = 4
# fp16 against torch fp16 (the same graph types, other kernels): measured on no GPU yet; bounds
# from the fp16-vs-fp32 tolerance of test_cuda_paths.
SCORE, BOX_PX = 0.02, 4.0


def _frames() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [(rng.random((h, w, 3)) * 255).astype(np.uint8) for h, w in ((720, 1280), (480, 640), (240, 320))]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("trt-models")
    return {arch: build(root / arch, arch, conditioned=True) for arch in ARCHITECTURES}


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_fp16_engine_matches_torch_fp16(models, tmp_path, architecture):
    # Given a small conditioned random model loaded through torch fp16 and through TensorRT fp16
    model_dir = str(models[architecture])
    reference = load_detector(model_dir, LoadOptions(device="cuda", half=True, input_size=320, backend="torch"))
    engine = load_detector(
        model_dir,
        LoadOptions(
            device="cuda", half=True, input_size=320, backend="tensorrt", max_batch=MAX_BATCH, cache_dir=tmp_path
        ),
    )
    assert (engine.info.backend, engine.info.dtype) == ("tensorrt", "float16")
    images = _frames()
    # Then the top detections of each frame are found again: same class, box and score within bounds
    for ref_dets, dets in zip(reference.detect(images, [0.0] * 3), engine.detect(images, [0.0] * 3), strict=True):
        for det in sorted(ref_dets, key=lambda d: -d.confidence)[:10]:
            same = [o for o in dets if o.class_id == det.class_id]
            nearest = min(same, key=lambda o: max(abs(a - b) for a, b in zip(o.bbox, det.bbox, strict=True)))
            assert max(abs(a - b) for a, b in zip(nearest.bbox, det.bbox, strict=True)) <= BOX_PX
            assert abs(nearest.confidence - det.confidence) <= SCORE


def test_batches_of_mixed_sizes_and_the_cached_engine(models, tmp_path):
    model_dir = str(models["rt_detr_v2"])
    engine = load_detector(
        model_dir,
        LoadOptions(device="cuda", input_size=320, backend="tensorrt", max_batch=MAX_BATCH, cache_dir=tmp_path),
    )
    images = _frames() + [_frames()[0][::-1].copy()]
    alone = [engine.raw([image]) for image in images]
    for size in (1, 2, 3, MAX_BATCH):  # every batch size in the profile, in one engine
        logits, boxes = engine.raw(images[:size])
        for i in range(size):
            assert torch.allclose(logits[i], alone[i][0][0], atol=2e-2)
            assert torch.allclose(boxes[i], alone[i][1][0], atol=2e-3)
    with pytest.raises(ValueError, match="MAX_BATCH"):
        engine.raw(images * 2)
    (entry,) = list(tmp_path.iterdir())
    assert (entry / "model.plan").is_file()
    again = load_detector(
        model_dir,
        LoadOptions(device="cuda", input_size=320, backend="tensorrt", max_batch=MAX_BATCH, cache_dir=tmp_path),
    )
    assert list(tmp_path.iterdir()) == [entry]
    assert torch.allclose(again.raw(images[:1])[0], alone[0][0], atol=1e-3)
