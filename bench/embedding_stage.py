"""What the embedding stage costs a session's publisher thread per frame: cutting crops (the best view at
each snapshot, and up to EMBED_CROPS_PER_EVENT more over each life) and queuing early and end requests.

The real `EmbeddingStage.handle` on synthetic 1920x1080 frames with N people walking across the picture
(confidences rising, so snapshots come at the lifecycle's rate), each leaving after a few seconds and a
new one arriving, on phases of their own (not all in one frame), so events end and requests are
queued. The encoder is never loaded: this measures the publisher side only (the encoder's cost is its
own thread's, per crop).

    PYTHONPATH=rt-detr-service .venv/bin/python bench/embedding_stage.py [--frames 900] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from rtdetr_service.analytics.events import EventLifecycle
from rtdetr_service.core.results import Published, SessionView
from rtdetr_service.core.search import SearchFilters, SearchHit
from rtdetr_service.core.types import Detection, Frame, FrameResult
from rtdetr_service.outputs.embeddings.settings import EmbeddingSettings
from rtdetr_service.outputs.embeddings.stage import EmbedderSlot, EmbeddingParts, EmbeddingStage

WIDTH, HEIGHT, FPS = 1920, 1080, 30.0
LIFE_S = 4.0  # each person crosses the picture in this long, then the next one comes


class NoIndex:
    """Never reached: the encoder is not loaded, so nothing is written or decided."""

    texts = None  # no descriptions in the bench

    def upsert(self, event_id: str, vector: np.ndarray, model_id: str) -> None:
        raise AssertionError("the bench loads no encoder")

    def search(self, vector, model_id, filters: SearchFilters, limit: int, offset: int) -> list[SearchHit]:
        raise AssertionError("the bench loads no encoder")

    def deciding(self, label: str):
        raise AssertionError("the bench loads no encoder")


def run(people: int, frames: int, k: int) -> dict:
    settings = EmbeddingSettings(embed_crops_per_event=k, embed_queue_size=100_000)
    nothing = NoIndex()
    stage = EmbeddingStage(EmbeddingParts(settings, EmbedderSlot(), nothing, lambda ids: {}, nothing))
    view = SessionView("bench", "cam", enable_drawing=False, jpeg_quality=75)
    events = EventLifecycle("bench", "cam", end_after_s=1.0)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    per_life = int(LIFE_S * FPS)
    times = []
    for i in range(frames):
        t = i / FPS
        frame = Frame(image, i, 1_700_000_000.0 + t, t)
        detections = []
        for p in range(people):
            # Each person on its own phase: people come and go at different moments, as in a real scene.
            generation, step = divmod(i + p * per_life // people, per_life)
            x = 50 + (WIDTH - 250) * step / per_life
            y = 40 + (HEIGHT - 400) * p / max(1, people)
            confidence = 0.5 + 0.4 * step / per_life
            detections.append(Detection(0, "person", (x, y, x + 120, y + 300), confidence, generation * 1000 + p))
        changes = events.update(frame, detections)
        item = Published(view, FrameResult("bench", frame, tuple(detections), 0.01), (), tuple(changes))
        began = time.perf_counter()
        stage.handle(item)
        times.append(time.perf_counter() - began)
    kept = np.array(times[frames // 10 :]) * 1000
    stats = stage.stats()
    return {
        "people": people,
        "crops_per_event": k,
        "mean_ms": round(float(kept.mean()), 3),
        "p50_ms": round(float(np.percentile(kept, 50)), 3),
        "p99_ms": round(float(np.percentile(kept, 99)), 3),
        "share_of_30fps": round(float(kept.mean()) / (1000 / FPS), 4),
        "requests_queued": stats.queued,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=900)
    parser.add_argument("--json", help="write the rows here too")
    args = parser.parse_args()
    rows = [run(n, args.frames, k) for n in (10, 50) for k in (0, 2, 8)]
    print("| people | crops per event (K) | mean ms | p50 ms | p99 ms | share of 30 fps | requests queued |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['people']} | {r['crops_per_event']} | {r['mean_ms']:.3f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} "
            f"| {100 * r['share_of_30fps']:.1f} % | {r['requests_queued']} |"
        )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=2)


if __name__ == "__main__":
    main()
