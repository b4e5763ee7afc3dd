"""Cost per frame of the results stage: tracking + zone/line rules + event updates.

Runs the real Publisher analysis (the code a session's publisher thread runs for each frame,
sinks left out) on synthetic 1080p frames with N objects walking across the picture, four
64-point zones, two lines and a rule of each kind, and prints ms per frame against the 33.3 ms
interval of a 30 fps camera.

    PYTHONPATH=rt-detr-service .venv/bin/python bench/bench_results.py [--frames 600] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np

from rtdetr_service.analytics.events import EventLifecycle
from rtdetr_service.analytics.publisher import Publisher
from rtdetr_service.analytics.tracking import Tracker, TrackerOptions
from rtdetr_service.analytics.zones import ZoneConfig, ZoneEngine
from rtdetr_service.core.results import SessionView
from rtdetr_service.core.types import Detection, Frame, FrameResult

WIDTH, HEIGHT, FPS = 1920, 1080, 30.0


def _circle(cx: float, cy: float, r: float, n: int = 64) -> list[list[float]]:
    return [[cx + r * math.cos(2 * math.pi * i / n), cy + r * math.sin(2 * math.pi * i / n)] for i in range(n)]


ZONES = {
    "zones": [{"name": f"z{i}", "points": _circle(0.2 + 0.2 * i, 0.5, 0.15)} for i in range(4)],
    "lines": [{"name": "l0", "a": [0.33, 1.0], "b": [0.33, 0.0]}, {"name": "l1", "a": [0.66, 1.0], "b": [0.66, 0.0]}],
    "rules": [
        {"name": "enter", "kind": "enter", "zone": "z0"},
        {"name": "dwell", "kind": "dwell", "zone": "z1", "dwell_s": 2.0},
        {"name": "cross", "kind": "cross", "line": "l0", "direction": "in"},
        {"name": "crowd", "kind": "occupancy", "zone": "z2", "min_count": 5},
    ],
}


def detections_at(n: int, index: int) -> list[Detection]:
    """n people on a grid, each walking right at its own speed and wrapping around."""
    cols = max(1, int(math.sqrt(n * WIDTH / HEIGHT)))
    cell_w, cell_h = WIDTH / cols, HEIGHT / math.ceil(n / cols)
    out = []
    for k in range(n):
        row, col = divmod(k, cols)
        speed = 2.0 + (k % 5)
        x1 = (col * cell_w + index * speed) % (WIDTH - cell_w * 0.6)
        y1 = row * cell_h
        box = (x1, y1, x1 + cell_w * 0.5, y1 + cell_h * 0.8)
        out.append(Detection(0, "person", box, 0.6 + 0.3 * ((index + k) % 30) / 30))
    return out


def measure(n: int, frames: int) -> dict:
    publisher = Publisher(
        SessionView("bench", "bench", False, 75),
        tracker=Tracker(TrackerOptions(), activation_threshold=0.5, frame_rate=FPS),
        zones=ZoneEngine(ZoneConfig.from_dict(ZONES)),
        events=EventLifecycle("bench", "bench"),
        sinks=[],
    )
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    start = time.time()
    times = []
    changes = alerts = 0
    for index in range(frames):
        frame = Frame(image, index, start + index / FPS, time.monotonic())
        result = FrameResult("bench", frame, tuple(detections_at(n, index)), 0.0)
        began = time.perf_counter()
        item = publisher._analyse(result)  # the per-frame work of the publisher thread, sinks aside
        times.append(time.perf_counter() - began)
        changes += len(item.events)
        alerts += len(item.alerts)
    ms = np.asarray(times[frames // 10 :]) * 1000.0  # the first tenth warms caches and fills tracks
    return {
        "detections": n,
        "frames": frames,
        "mean_ms": round(float(ms.mean()), 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "share_of_30fps_interval": round(float(ms.mean()) / (1000.0 / FPS), 3),
        "event_changes": changes,
        "alerts": alerts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--counts", type=int, nargs="+", default=[10, 50, 200])
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    rows = [measure(n, args.frames) for n in args.counts]
    print(
        f"{'detections':>10} {'mean ms':>8} {'p50 ms':>7} {'p99 ms':>7} {'of 33.3 ms':>10} {'events':>7} {'alerts':>7}"
    )
    for r in rows:
        print(
            f"{r['detections']:>10} {r['mean_ms']:>8} {r['p50_ms']:>7} {r['p99_ms']:>7} "
            f"{r['share_of_30fps_interval']:>10.1%} {r['event_changes']:>7} {r['alerts']:>7}"
        )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=2)


if __name__ == "__main__":
    main()
