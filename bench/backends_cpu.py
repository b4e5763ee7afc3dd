"""Per-frame latency of each CPU backend on the same model, rounds interleaved in one process.

PYTHONPATH=rt-detr-service .venv/bin/python bench/backends_cpu.py --rounds 5 --threads 2
PYTHONPATH=rt-detr-service .venv/bin/python bench/backends_cpu.py --threads 1 --busy 1 --backends torch:fp32
PYTHONPATH=rt-detr-service .venv/bin/python bench/backends_cpu.py --threads 2 --ceiling   # + matrix-product rates

RT-DETRv2-S (r18vd) with conditioned random weights (`condition_random_weights`: the speed of a
trained model, whose activations are not vanishingly small) at 640x640, batch 1. Interleaving the
rounds spreads a busy machine's noise over every backend alike; the spread is printed, not hidden.
Each backend's rate is also given in GFLOP/s (the network's multiply-adds x 2 per frame over the
time of a whole detect call); `--ceiling` adds what a large fp32 and bf16 matrix product reaches
on the same threads with torch and with OpenVINO, the most any backend can expect of the cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_cpu import gflop_per_frame

from rtdetr_service.inference.loading import LoadOptions, load_detector
from rtdetr_service.inference.random_weights import condition_random_weights, r18vd_config, random_weights_model

VARIANTS = (("torch", "fp32"), ("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=3, help="timed frames per backend per round")
    parser.add_argument("--threads", type=int, default=0, help="inference threads (0 = the service's default)")
    parser.add_argument("--input-size", type=int, default=640)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--backends", default=",".join(f"{b}:{p}" for b, p in VARIANTS), help="e.g. torch:fp32,openvino:fp32"
    )
    parser.add_argument("--busy", type=int, default=0, help="busy-loop processes competing for the cores while timing")
    parser.add_argument("--ceiling", action="store_true", help="also time fp32/bf16 matrix products on these threads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from rtdetr_service.inference.backends import default_cpu_threads

    # 0: each backend's own default (the service's CPU_THREADS=0); torch's pool as the service sets it.
    torch.set_num_threads(args.threads or default_cpu_threads("torch"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "r18vd"
        network = condition_random_weights(random_weights_model(r18vd_config()).eval())
        network.save_pretrained(folder)
        gflop = gflop_per_frame(lambda x: network(pixel_values=x), args.input_size)
        detectors = {}
        variants = [tuple(item.split(":")) for item in args.backends.split(",")]
        for backend, precision in variants:
            started = time.monotonic()
            detectors[f"{backend} {precision}"] = load_detector(
                str(folder),
                LoadOptions(
                    device="cpu",
                    input_size=args.input_size,
                    backend=backend,
                    cpu_precision=precision,
                    cache_dir=Path(tmp) / "cache",
                    threads=args.threads,
                ),
            )
            threads = detectors[f"{backend} {precision}"].info.cpu_threads
            print(
                f"{backend} {precision}: loaded (export included) in {time.monotonic() - started:.1f} s, "
                f"{threads} threads",
                flush=True,
            )
        frame = (np.random.default_rng(0).random((720, 1280, 3)) * 255).astype(np.uint8)
        for detector in detectors.values():
            detector.detect([frame], [0.5])  # warm-up
        times: dict[str, list[float]] = {name: [] for name in detectors}
        # Other load, as a decoder or another process would make it: plain busy loops.
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
        try:
            _rounds(args, detectors, frame, times)
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()
    first = next(iter(times))
    base = statistics.median(times[first])
    threads = {name: detector.info.cpu_threads for name, detector in detectors.items()}
    shown = args.threads or ", ".join(f"{name} {count}" for name, count in threads.items())
    print(
        f"\nthreads: {shown}; {args.busy} busy processes, {args.input_size}x{args.input_size}, batch 1, "
        f"{args.rounds} interleaved rounds"
    )
    print(f"| backend | ms per frame: median (min-max) | vs {first} | GFLOP/s ({gflop:g} GFLOP a frame) |")
    print("| --- | --- | --- | --- |")
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"| {name} | {median:.0f} ({min(values):.0f}-{max(values):.0f}) | {base / median:.1f}x "
            f"| {gflop / median * 1000:.0f} |"
        )
    ceiling = matmul_rates(args.threads or default_cpu_threads("openvino")) if args.ceiling else None
    if ceiling:
        rates = ", ".join(f"{name} {value}" for name, value in ceiling.items())
        print(f"\nmatrix product 2048x2048 on the same threads, GFLOP/s: {rates}")
    if args.json:
        figures = {"threads": threads, "busy": args.busy, "gflop_per_frame": gflop, "ms": times, "matmul": ceiling}
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


def matmul_rates(threads: int, n: int = 2048, repeats: int = 10) -> dict:
    """GFLOP/s of an n x n matrix product in fp32 and bf16, by torch and by OpenVINO, on `threads`."""
    import openvino as ov
    import openvino.opset13 as ops

    def rate(run) -> int:
        for _ in range(3):
            run()
        started = time.perf_counter()
        for _ in range(repeats):
            run()
        return round(2 * n**3 * repeats / (time.perf_counter() - started) / 1e9)

    out = {}
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for name, dtype in (("torch fp32", torch.float32), ("torch bf16", torch.bfloat16)):
            a, b = torch.rand(n, n, dtype=dtype), torch.rand(n, n, dtype=dtype)
            out[name] = rate(lambda a=a, b=b: a @ b)
    finally:
        torch.set_num_threads(saved)
    x = ops.parameter([n, n], ov.Type.f32)
    weights = ops.constant(np.random.default_rng(0).random((n, n), dtype=np.float32))
    product = ov.Model([ops.matmul(x, weights, False, False)], [x])
    pixels = np.random.default_rng(1).random((n, n), dtype=np.float32)
    for name, hint in (("openvino fp32", "f32"), ("openvino bf16", "bf16")):
        config = {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        request = ov.Core().compile_model(product, "CPU", config).create_infer_request()
        out[name] = rate(lambda request=request: request.infer([pixels]))
    return out


def _rounds(args, detectors, frame, times) -> None:
    """Each round times every backend in turn, so slow phases of a busy machine hit them alike."""
    for _ in range(args.rounds):
        for name, detector in detectors.items():
            for _ in range(args.per_round):
                started = time.perf_counter()
                detector.detect([frame], [0.5])
                times[name].append((time.perf_counter() - started) * 1000)


if __name__ == "__main__":
    raise SystemExit(main())
