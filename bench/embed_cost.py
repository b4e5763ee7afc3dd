"""What embedding costs on this CPU: ms per crop at batch 1, 8 and 32, and per text, for each CPU
backend (torch eager, OpenVINO, ONNX Runtime), with the tiny test SigLIP and with a random-weight
model of the default EMBED_MODEL's architecture (SigLIP 2 ViT-B/16 at 224 px: the figure that
matters; random weights compute exactly what trained ones do). Also the preprocessing alone, and
how far each backend's vectors lie from torch fp32's for the same 32 crops (the least cosine): bf16
(`--precisions fp32,bf16`, OpenVINO only; what CPU_PRECISION=auto picks on a CPU with bf16
instructions) is a bounded drift, not parity.

    PYTHONPATH=rt-detr-service .venv/bin/python bench/embed_cost.py --threads 2 --rounds 3
    PYTHONPATH=rt-detr-service .venv/bin/python bench/embed_cost.py --backends openvino --precisions fp32,bf16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "rt-detr-service"), str(ROOT / "tests")]

from rtdetr_service.inference.embedder import EmbedOptions, build_embedder  # noqa: E402

BATCHES = (1, 8, 32)
TEXTS = ["a person in a red jacket", "white van", "a dog on the lawn next to a parked bicycle", "car"]


def crops(count: int, seed: int = 0) -> list[np.ndarray]:
    """Crops of the sizes a 1080p camera's objects give (40-400 px a side)."""
    rng = np.random.default_rng(seed)
    return [
        (rng.random((int(rng.integers(40, 400)), int(rng.integers(40, 300)), 3)) * 255).astype(np.uint8)
        for _ in range(count)
    ]


def timed(call, rounds: int) -> float:
    """Median seconds of `rounds` calls after one warm-up."""
    call()
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def measure(
    label: str, folder: Path, backend: str, precision: str, threads: int, rounds: int, cache: Path, reference
) -> None:
    started = time.perf_counter()
    options = EmbedOptions(backend=backend, device="cpu", cpu_precision=precision, threads=threads, cache_dir=cache)
    embedder = build_embedder(str(folder), options)
    load_s = time.perf_counter() - started
    gallery = crops(32, seed=1)
    least_cos = float((embedder.embed_images(gallery) * reference.embed_images(gallery)).sum(1).min())
    cells = []
    for batch in BATCHES:
        images = crops(batch)
        seconds = timed(lambda images=images: embedder.embed_images(images), rounds)
        cells.append(f"{seconds * 1000 / batch:.1f}")
    text_s = timed(lambda: embedder.embed_texts(TEXTS), rounds)
    prep_s = timed(lambda: embedder.pixels(crops(32)), rounds)
    print(
        f"| {label} | {backend} {embedder.info.precision} | {' | '.join(cells)} | {text_s * 1000 / len(TEXTS):.1f} | "
        f"{prep_s * 1000 / 32:.2f} | {load_s:.1f} | {least_cos:.5f} |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", default="torch,openvino,onnxruntime")
    parser.add_argument("--precisions", default="fp32", help="fp32,bf16: bf16 is measured on OpenVINO only")
    parser.add_argument("--skip-base", action="store_true", help="only the tiny model")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from tiny_model import bench_encoders

    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        models = bench_encoders(scratch, base=not args.skip_base)
        print(f"threads {args.threads}, rounds {args.rounds}; ms per crop at batch {', '.join(map(str, BATCHES))}")
        print(
            "| model | backend | "
            + " | ".join(f"batch {b}" for b in BATCHES)
            + " | ms/text | prep ms/crop | load s | least cos vs torch fp32 |"
        )
        print("| --- | --- |" + " ---: |" * (len(BATCHES) + 4))
        for label, folder in models.items():
            reference = build_embedder(str(folder), EmbedOptions(backend="torch", device="cpu", cpu_precision="fp32"))
            for backend in args.backends.split(","):
                for precision in args.precisions.split(","):
                    if precision == "bf16" and backend != "openvino":
                        continue  # torch eager and ONNX Runtime run the encoder in fp32 on a CPU
                    cache = scratch / "cache"
                    measure(label, folder, backend, precision, args.threads, args.rounds, cache, reference)


if __name__ == "__main__":
    main()
