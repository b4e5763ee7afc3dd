"""The CUDA code paths: fp16 inference, device pre/post-processing, nvJPEG. They run wherever
torch sees a GPU (`make test` on a GPU host) and are skipped, with the reason shown, elsewhere."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import av
import cv2
import numpy as np
import pytest
import torch
from file_camera import FileCamera
from websockets.sync.client import connect

from rtdetr_service.inference.loading import LoadOptions, load_detector, warm_up
from rtdetr_service.outputs.encode import JpegEncoder
from rtdetr_service.sessions.session import SessionOptions
from rtdetr_service.web.routes.ws import viewer_path

from support import frame_results, make_settings, run_service

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _image(h: int = 720, w: int = 1280) -> np.ndarray:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    cv2.rectangle(image, (100, 100), (400, 500), (0, 0, 255), -1)
    return image


def test_fp16_cuda_matches_fp32_cpu(tiny_model_dir):
    cpu = load_detector(str(tiny_model_dir), LoadOptions(device="cpu", input_size=320))
    gpu = load_detector(str(tiny_model_dir), LoadOptions(device="cuda", half=True, input_size=320))
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
    gpu = load_detector(str(tiny_model_dir), LoadOptions(device="cuda", input_size=320))
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


def _scene(seed: int, h: int = 720, w: int = 1280) -> np.ndarray:
    """A smooth picture unique to `seed`: JPEG keeps it within a few grey levels, so a JPEG made
    from the wrong buffer, or copied out before it was complete, is told apart at once."""
    rng = np.random.default_rng(seed)
    image = np.empty((h, w, 3), np.uint8)
    image[:] = rng.integers(20, 235, 3, dtype=np.uint8)
    x, y = int(rng.integers(0, w - 300)), int(rng.integers(0, h - 300))
    cv2.rectangle(image, (x, y), (x + 300, y + 300), tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
    return image


def test_nvjpeg_from_many_threads_while_the_model_runs(tiny_model_dir):
    # given the worker's situation: one thread keeps the model busy on the GPU while several
    # publisher threads encode JPEGs (torchvision's nvJPEG has produced corrupt JPEGs here when
    # the caller's streams and its own were not ordered)
    detector = load_detector(str(tiny_model_dir), LoadOptions(device="cuda", input_size=640))
    encoder = JpegEncoder("cuda")
    busy = threading.Event()
    stop = threading.Event()

    def infer():
        batch = [_image(1080, 1920)] * 8
        while not stop.is_set():
            detector.detect(batch, [0.5] * 8)
            busy.set()

    bad: list[str] = []

    def publish(thread: int):
        for i in range(30):
            image = _scene(thread * 1000 + i)
            decoded = cv2.imdecode(np.frombuffer(encoder.encode(image, 90), np.uint8), cv2.IMREAD_COLOR)
            if decoded is None or decoded.shape != image.shape:
                bad.append(f"thread {thread} image {i}: not a JPEG of the source size")
            elif (error := float(np.abs(decoded.astype(np.int16) - image).mean())) > 3.0:
                bad.append(f"thread {thread} image {i}: mean error {error:.1f}")

    inference = threading.Thread(target=infer)
    inference.start()
    try:
        assert busy.wait(60)
        publishers = [threading.Thread(target=publish, args=(t,)) for t in range(6)]
        for t in publishers:
            t.start()
        for t in publishers:
            t.join(120)
    finally:
        stop.set()
        inference.join(60)
    # then every JPEG is the picture its thread asked for
    assert not bad, bad[:5]


def _clip(path, width: int = 320, height: int = 240, fps: int = 15, seconds: float = 2.0) -> str:
    """A short camera-like H.264 clip (libx264, no B-frames, 1 s GOP), written with PyAV."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = fps
        stream.options = {"preset": "veryfast", "tune": "zerolatency"}
        ys = np.linspace(40, 200, height, dtype=np.uint8)[:, None, None]
        for i in range(int(fps * seconds)):
            image = np.broadcast_to(ys, (height, width, 3)).copy()
            x = 10 + (i * 7) % (width - 110)
            cv2.rectangle(image, (x, 60), (x + 100, 200), (0, 0, 255), -1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


def _start_on_file(service, clip: str):
    """A session on `clip`, paced at its frame rate and looped, through the manager as POST /start
    makes one (the HTTP route only takes network URLs), like bench/bench_pipeline.py does."""
    options = SessionOptions(stream_url=clip, enable_drawing=True, confidence_threshold=0.5)
    start = service.app.state.manager.start(options, reader_factory=FileCamera)
    # The manager is thread-safe and the session's hub calls reach the service's loop from any
    # thread, so the coroutine may run on a loop of its own, off the service's.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, start).result(timeout=60)


def test_service_on_cuda_end_to_end(tiny_model_dir, tmp_path):
    # given the service on the GPU with two sessions on a paced, looping H.264 file (the same
    # StreamReader as for cameras, as FileCamera; GPU images have no GStreamer for the RTSP test camera)
    clip = _clip(tmp_path / "clip.mp4")
    torch.cuda.synchronize()
    service = run_service(make_settings(tiny_model_dir, device="cuda", max_batch=4))
    try:
        with service.client() as client:
            ready = client.get("/ready").json()
            assert ready["model"]["device"].startswith("cuda") and ready["model"]["dtype"] == "float16"
            assert ready["jpeg_encoder"] == "nvjpeg"
            baseline = torch.cuda.memory_allocated()
            sessions = [_start_on_file(service, clip) for _ in range(2)]
            for session in sessions:
                with connect(service.ws_base + viewer_path(session), open_timeout=10) as ws:
                    frames = frame_results(ws, 20, seconds=30)
                # then frames arrive over a real WebSocket, annotated by nvJPEG at the source size
                assert len(frames) >= 20
                jpeg = base64.b64decode(frames[-1]["annotated_frame"])
                assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (240, 320, 3)
            for session in sessions:
                assert client.post("/api/v1/video/stop", json={"session_id": session.id}).status_code == 200
            # and stopping gives back the GPU memory the sessions used
            torch.cuda.synchronize()
            time.sleep(0.5)
            assert torch.cuda.memory_allocated() <= baseline + (1 << 20)
    finally:
        service.stop()
