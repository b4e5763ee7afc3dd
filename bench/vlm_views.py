"""What the VLM stage's pictures cost, and on which thread to encode them: a view cut (the object with
context, shrunk to VLM_IMAGE_MAX_PX, an RGB copy) against the same view cut and JPEG-encoded, and an
alert's view (the whole frame shrunk, the box drawn) with and without its encoding; then how often an
event's best view changes in the real event lifecycle (each change would pay an encoding on the
publisher thread, where only one request per event is ever sent).

Synthetic 1920x1080 frames (noise, the worst case for JPEG), boxes of a walking person's size.

    PYTHONPATH=rt-detr-service .venv/bin/python bench/vlm_views.py [--rounds 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from rtdetr_service.analytics.events import EventLifecycle
from rtdetr_service.core.types import Detection, Frame
from rtdetr_service.outputs.vlm.views import alert_view, cut_view, jpeg

WIDTH, HEIGHT = 1920, 1080
BOXES = {"person 180x420": (800.0, 300.0, 980.0, 720.0), "car 520x300": (600.0, 500.0, 1120.0, 800.0)}


def timed(fn, rounds: int) -> float:
    """Median milliseconds of `rounds` calls, interleaved with nothing else (one after another)."""
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        fn()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def best_changes(seconds: float = 8.0, fps: float = 30.0) -> tuple[int, int]:
    """Snapshots (best-view changes handed to the sinks) of one person walking with rising confidence,
    and the describe requests that life makes (one)."""
    life = EventLifecycle("bench", "cam", end_after_s=1.0)
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    snapshots = 0
    n = int(seconds * fps)
    for i in range(n):
        t = i / fps
        det = Detection(0, "person", (100.0 + i * 5, 300.0, 280.0 + i * 5, 720.0), 0.5 + 0.45 * i / n, 1)
        snapshots += sum(c.snapshot is not None for c in life.update(Frame(image, i, 1_700_000_000.0 + t, t), [det]))
    snapshots += sum(c.snapshot is not None for c in life.close_all())
    return snapshots, 1


def _row(what: str, max_px: int, view: np.ndarray, cut_ms: float, encode_ms: float) -> dict:
    return {
        "what": what,
        "max_px": max_px,
        "shape": list(view.shape[:2]),
        "cut_ms": round(cut_ms, 3),
        "encode_ms": round(encode_ms, 3),
        "jpeg_kb": round(len(jpeg(view)) / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    frame = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    rows = []
    for max_px in (384, 768):
        for name, box in BOXES.items():
            cut_ms = timed(lambda b=box, m=max_px: cut_view(frame, b, m, 0.25), args.rounds)
            view = cut_view(frame, box, max_px, 0.25)
            encode_ms = timed(lambda v=view: jpeg(v), args.rounds)
            rows.append(_row(f"view of a {name}", max_px, view, cut_ms, encode_ms))
        alert_ms = timed(lambda m=max_px: alert_view(frame, BOXES["person 180x420"], m), args.rounds)
        view = alert_view(frame, BOXES["person 180x420"], max_px)
        encode_ms = timed(lambda v=view: jpeg(v), args.rounds)
        rows.append(_row("alert frame, box drawn", max_px, view, alert_ms, encode_ms))
    snapshots, requests = best_changes()
    for row in rows:
        print(
            f"{row['what']:<28} max_px {row['max_px']:>4} {row['shape'][1]:>4}x{row['shape'][0]:<4} "
            f"cut {row['cut_ms']:7.3f} ms  encode {row['encode_ms']:7.3f} ms  {row['jpeg_kb']:6.1f} KB"
        )
    print(f"one 8 s walk: {snapshots} best-view changes handed to the sinks, {requests} describe request")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"rows": rows, "best_changes": snapshots, "requests": requests}, out, indent=1)


if __name__ == "__main__":
    main()
