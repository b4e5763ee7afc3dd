"""Reindex throughput: stored events a second that `Reindexer` embeds from their snapshot files (read,
decoded, cropped, embedded in batches, upserted into the SQLite vector index), with the tiny test SigLIP
and a random-weight model of the default EMBED_MODEL's architecture (SigLIP 2 ViT-B/16 at 224 px: what
the trained checkpoint computes), at REINDEX_DUTY 1.0 (flat out) and 0.5 (the default), with the share
of one core the process used meanwhile.

    PYTHONPATH=rt-detr-service .venv/bin/python bench/reindex_speed.py --events 200 --threads 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "rt-detr-service"), str(ROOT / "tests")]

from rtdetr_service.analytics.events import EventLifecycle  # noqa: E402
from rtdetr_service.core.types import Detection, Frame  # noqa: E402
from rtdetr_service.inference.embedder import EmbedOptions, build_embedder  # noqa: E402
from rtdetr_service.outputs.embeddings.reindex import Reindexer, ReindexOptions  # noqa: E402
from rtdetr_service.outputs.embeddings.stage import EmbedderSlot  # noqa: E402
from rtdetr_service.outputs.store.event_store import EventStore  # noqa: E402


def fill(store: EventStore, count: int, width: int = 1280, height: int = 720) -> None:
    """`count` ended events, each with a snapshot of a 720p frame (noise: a JPEG of realistic weight)."""
    rng = np.random.default_rng(0)
    frame = (rng.random((height, width, 3)) * 255).astype(np.uint8)
    life = EventLifecycle("bench-session", "bench", end_after_s=1.0)
    t = time.time() - 3600
    for i in range(count):
        x, y = float(rng.integers(0, width - 200)), float(rng.integers(0, height - 300))
        box = (x, y, x + float(rng.integers(60, 200)), y + float(rng.integers(120, 300)))
        changes = life.update(Frame(frame, i, t + i, 0.0), [Detection(0, "person", box, 0.8, i + 1)])
        changes += life.close_all()
        store.submit(changes)
    deadline = time.monotonic() + 120
    while store.status()["written"] < 2 * count and time.monotonic() < deadline:
        time.sleep(0.1)


def run(label: str, folder: Path, backend: str, duty: float, args, scratch: Path) -> None:
    data = scratch / f"data-{label[:4]}-{backend}-{duty}"
    store = EventStore(None, data)
    store.start()
    fill(store, args.events)
    options = EmbedOptions(backend=backend, device="cpu", cpu_precision="fp32", threads=args.threads,
                           cache_dir=scratch / "cache")  # fmt: skip
    embedder = build_embedder(str(folder), options)
    embedder.embed_images([np.zeros((64, 64, 3), np.uint8)])  # warm-up, as the service's loader does
    slot = EmbedderSlot()
    slot.set(embedder)
    reindexer = Reindexer(store.vectors, store, slot, ReindexOptions(batch=args.batch, duty=duty))
    cpu0, wall0 = os.times(), time.monotonic()
    reindexer.start()
    while reindexer.running:
        time.sleep(0.1)
    wall = time.monotonic() - wall0
    cpu1 = os.times()
    progress = reindexer.progress()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    assert progress["state"] == "done" and progress["done"] == args.events, progress
    print(
        f"| {label} | {backend} | {duty} | {args.events} | {progress['done'] / wall:.1f} | "
        f"{wall * 1000 / args.events:.1f} | {cpu / wall:.2f} |",
        flush=True,
    )
    store.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backends", default="openvino,torch")
    parser.add_argument("--skip-base", action="store_true", help="only the tiny model")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from tiny_model import bench_encoders

    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        models = bench_encoders(scratch, base=not args.skip_base)
        print(f"batch {args.batch}, threads {args.threads}, {args.events} events with 720p snapshots")
        print("| model | backend | duty | events | events/s | ms/event | CPU cores used |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for label, folder in models.items():
            for backend in args.backends.split(","):
                for duty in (1.0, 0.5):
                    run(label, folder, backend, duty, args, scratch)


if __name__ == "__main__":
    main()
