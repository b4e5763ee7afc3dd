"""The baseline: the pipeline as the system spec sketches it, one thread per session.

Each session thread reads its stream in order (paced at the source frame rate, as a live camera
delivers it) and, for every frame: BGR → PIL image → `RTDetrImageProcessor` → the one shared
`RTDetrV2ForObjectDetection` at batch 1 → `post_process_object_detection` → boxes drawn with
OpenCV → `cv2.imencode` JPEG → base64 → `json.dumps` of the frame_result message.

Choices, so the comparison is fair and the sketch stays recognisable:
- One model shared by every thread (as the sketch loads it once), guarded by a lock: PyTorch
  modules are not documented as thread-safe, and the GPU runs one batch-1 pass at a time anyway.
- Same weights, device and dtype as the service (fp16 on CUDA, fp32 on the CPU), same input size.
- No frame is skipped: a thread slower than the camera falls behind, and because latency is
  measured from the moment the camera delivered the frame (its paced arrival time), a growing
  backlog shows as growing latency. The clock does not restart when the clip loops.
- Latency ends when the JSON message is ready to send: the socket send itself is not counted,
  which favours the baseline (the service's latency is taken at a real WebSocket client).

    python bench/baseline.py --clip CLIP --model DIR --streams 1,2,4 --out results.json
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import sys
import threading
import time
from pathlib import Path

import av
import cv2
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import FULL_RATE, bounded, percentiles_ms, rss_mb, thirds  # noqa: E402

log = logging.getLogger("baseline")


class SharedModel:
    """The sketch's `model(pil_image)`: HF processor + RT-DETRv2 at batch 1, one instance for all threads."""

    def __init__(self, model_dir: str, device: str, input_size: int, cpu_threads: int = 0) -> None:
        from transformers import RTDetrImageProcessor, RTDetrV2ForObjectDetection
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        if cpu_threads:
            torch.set_num_threads(cpu_threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.processor = RTDetrImageProcessor(size={"height": input_size, "width": input_size})
        self.model = RTDetrV2ForObjectDetection.from_pretrained(model_dir).to(self.device, self.dtype).eval()
        self.names = self.model.config.id2label
        self._lock = threading.Lock()

    @torch.inference_mode()
    def __call__(self, image: Image.Image, threshold: float) -> dict:
        inputs = self.processor(images=image, return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, self.dtype)
        with self._lock:
            outputs = self.model(pixel_values=pixels)
            result = self.processor.post_process_object_detection(
                outputs, threshold=threshold, target_sizes=[(image.height, image.width)]
            )[0]
        return {k: v.float().cpu().tolist() for k, v in result.items()}


def _draw(image: np.ndarray, result: dict, names: dict) -> list[dict]:
    detections = []
    for score, label, box in zip(result["scores"], result["labels"], result["boxes"], strict=False):
        x1, y1, x2, y2 = (int(v) for v in box)
        name = names.get(int(label), str(int(label)))
        cv2.rectangle(image, (x1, y1), (x2, y2), (0, 255, 0), 2)
        cv2.putText(image, f"{name} {score:.2f}", (x1, max(0, y1 - 5)), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 255, 0), 2)
        detections.append(
            {
                "class_id": int(label),
                "class_name": name,
                "bbox": [round(float(v), 1) for v in box],
                "confidence": round(float(score), 4),
            }
        )
    return detections


class BaselineSession:
    """One thread: read in order → model → draw → imencode → base64 → JSON, for every frame."""

    def __init__(
        self, clip: str, model: SharedModel, name: str, jpeg_quality: int = 75, threshold: float = 0.5
    ) -> None:
        self.clip = clip
        self.model = model
        self.name = name
        self.quality = jpeg_quality
        self.threshold = threshold
        self.fps = 0.0
        # (json ready, camera delivered, decoded) wall times, one row per published frame
        self.records: list[tuple[float, float, float]] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"baseline-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            start: float | None = None
            index = 0
            while not self._stop.is_set():
                with av.open(self.clip) as container:
                    stream = container.streams.video[0]
                    stream.thread_type = "AUTO"
                    self.fps = float(stream.average_rate or stream.guessed_rate or 30)
                    for frame in container.decode(stream):
                        if start is None:
                            start = time.time()
                        arrival = start + index / self.fps
                        index += 1
                        delay = arrival - time.time()
                        if delay > 0 and self._stop.wait(delay):
                            return
                        if self._stop.is_set():
                            return
                        self._process(frame.to_ndarray(format="bgr24"), index, arrival)
        except Exception as exc:  # noqa: BLE001 - reported in the results, not a silent dead thread
            log.exception("baseline session %s crashed", self.name)
            self.error = repr(exc)

    def _process(self, bgr: np.ndarray, index: int, arrival: float) -> None:
        decoded = time.time()
        pil = Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        result = self.model(pil, self.threshold)
        detections = _draw(bgr, result, self.model.names)
        ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        message = json.dumps(
            {
                "type": "frame_result",
                "session_id": self.name,
                "timestamp": decoded,
                "frame_index": index,
                "detections": detections,
                "annotated_frame": base64.b64encode(jpeg.tobytes()).decode(),
            },
            separators=(",", ":"),
        )
        del message  # the sketch would now `await websocket.send_text(message)`
        self.records.append((time.time(), arrival, decoded))


def run_count(model: SharedModel, clip: str, streams: int, warmup: float, seconds: float, src_fps: float) -> dict:
    """Run `streams` baseline sessions; measure fps and latency over `seconds` after `warmup`."""
    sessions = [BaselineSession(clip, model, f"s{i}") for i in range(streams)]
    for session in sessions:
        session.start()
    rss_samples = []
    begin = time.time()
    window_start = begin + warmup
    window_end = window_start + seconds
    while time.time() < window_end:
        time.sleep(1.0)
        if time.time() >= window_start:
            rss_samples.append(rss_mb())
    for session in sessions:
        session.stop()
    for session in sessions:
        session.join(30)
    per_stream, all_done, all_latency = [], [], []
    for session in sessions:
        rows = np.asarray([r for r in session.records if window_start <= r[0] < window_end], np.float64).reshape(-1, 3)
        fps = rows.shape[0] / seconds
        latency = rows[:, 0] - rows[:, 1]
        all_done.append(rows[:, 0])
        all_latency.append(latency)
        per_stream.append(
            {
                "fps": round(fps, 2),
                "latency_ms": percentiles_ms(latency),
                "decode_to_json_ms": percentiles_ms(rows[:, 0] - rows[:, 2]),
                "error": session.error,
            }
        )
    done = np.concatenate(all_done)
    latency = np.concatenate(all_latency)
    windows = thirds(done, latency, window_start, window_end)
    fps_values = [s["fps"] for s in per_stream]
    # Full rate with a growing backlog is not full rate: the frames arrive ever later.
    sustained = (
        min(fps_values) >= FULL_RATE * src_fps
        and bounded(windows) is not False
        and not any(s["error"] for s in per_stream)
    )
    return {
        "streams": streams,
        "fps_min": min(fps_values),
        "fps_mean": round(float(np.mean(fps_values)), 2),
        "sustained": bool(sustained),
        "latency_ms": percentiles_ms(latency),
        "latency_thirds_ms": windows,
        "latency_bounded": bounded(windows),
        "rss_mb": round(float(np.mean(rss_samples)), 1) if rss_samples else None,
        "per_stream": per_stream,
    }


def sweep(
    model: SharedModel,
    clip: str,
    counts: list[int],
    warmup: float,
    seconds: float,
    src_fps: float,
    keep_going: bool = False,
    progress=lambda results: None,
) -> list[dict]:
    """Run each stream count in turn, stopping after the first that does not sustain full rate."""
    results = []
    for streams in counts:
        result = run_count(model, clip, streams, warmup, seconds, src_fps)
        results.append(result)
        progress(results)
        lat = result["latency_ms"]
        print(
            f"baseline {streams:>3} streams: {result['fps_min']:.1f} fps/stream (min), p50 {lat['p50']} ms, "
            f"p99 {lat['p99']} ms, sustained={result['sustained']}",
            file=sys.stderr,
            flush=True,
        )
        if not result["sustained"] and not keep_going:
            break
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", required=True)
    parser.add_argument("--model", required=True, help="weights directory (save_pretrained format)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--streams", default="1,2,4", help="comma-separated stream counts")
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--input-size", type=int, default=640)
    parser.add_argument("--cpu-threads", type=int, default=0)
    parser.add_argument("--keep-going", action="store_true", help="do not stop at the first count that fails")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with av.open(args.clip) as container:
        stream = container.streams.video[0]
        src_fps = float(stream.average_rate or stream.guessed_rate or 30)
    model = SharedModel(args.model, args.device, args.input_size, args.cpu_threads)
    # Warm up the model once (first CUDA/cuDNN calls) so the first count does not pay for it.
    model(Image.new("RGB", (640, 480)), 1.0)
    counts = [int(c) for c in args.streams.split(",") if c.strip()]
    results = {
        "device": str(model.device),
        "dtype": str(model.dtype).removeprefix("torch."),
        "gpu": torch.cuda.get_device_name(model.device) if model.device.type == "cuda" else None,
        "source_fps": src_fps,
        "counts": [],
    }

    def save(counts: list[dict]) -> None:
        # after every count, so that a crash or a time limit keeps what was measured
        results["counts"] = counts
        if args.out:
            partial = Path(args.out + ".partial")
            partial.write_text(json.dumps(results, indent=2))
            partial.replace(args.out)

    save(sweep(model, args.clip, counts, args.warmup, args.duration, src_fps, args.keep_going, save))
    if not args.out:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
