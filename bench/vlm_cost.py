"""What a description costs the local VLM provider (`VLM_PROVIDER=transformers`): seconds per request
at batch 1 and 4, with 1 and 2 pictures a request, through `load_vlm` and `LocalVlm.generate` as the
service calls them (JPEG checks and decoding, chat template, tiling, greedy generation, decoding).

`--arch tiny` is the tests' tiny random SmolVLM: the figure is the plumbing's cost. `--arch smolvlm-256m`
is a random-weight model of the default VLM_MODEL's architecture (SmolVLM-256M: 256 M parameters);
it computes what the trained checkpoint computes per token, but random weights rarely write the
end-of-answer token, so every answer runs to `--max-tokens` (a trained model often stops sooner):
an upper bound for that many tokens. Pictures are 768×432 noise JPEGs (a 16:9 snapshot at the
default VLM_IMAGE_MAX_PX: rounded up to 1024×1024, 2×2 tiles and the global view for SmolVLM).

    PYTHONPATH=rt-detr-service .venv/bin/python bench/vlm_cost.py --arch tiny --threads 2 --rounds 3
    PYTHONPATH=rt-detr-service .venv/bin/python bench/vlm_cost.py --arch smolvlm-256m --device cuda --max-tokens 64
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "rt-detr-service"), str(ROOT / "tests")]

from rtdetr_service.core.vlm import VlmAnswer, VlmRequest  # noqa: E402
from rtdetr_service.inference.settings import VlmSettings  # noqa: E402
from rtdetr_service.inference.vlm.loading import load_vlm  # noqa: E402

BATCHES = (1, 4)
PICTURES = (1, 2)
PROMPTS = (
    "Describe what the person in the picture is doing, in one sentence.",
    "Is a vehicle parked in front of the gate? Say why.",
    "What colour is the car, and which way is it going?",
    "Describe the scene for a security log, briefly.",
)


def snapshot(seed: int, size=(768, 432)) -> bytes:
    """A noise JPEG (the heaviest to decode) of a snapshot's size."""
    from PIL import Image

    image = Image.effect_noise(size, 60 + seed).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


def seconds_per_request(vlm, batch: int, pictures: int, rounds: int, max_tokens: int) -> tuple[float, float]:
    """Median seconds per request of `rounds` calls of `batch` requests (after one warm-up), and tokens
    read per request."""
    requests = [
        VlmRequest(
            PROMPTS[i % len(PROMPTS)], tuple(snapshot(i * 2 + p) for p in range(pictures)), max_tokens=max_tokens
        )
        for i in range(batch)
    ]
    vlm.generate(requests)
    samples = []
    read = vlm.status()["input_tokens"]
    for _ in range(rounds):
        started = time.perf_counter()
        answers = vlm.generate(requests)
        samples.append((time.perf_counter() - started) / batch)
        assert all(isinstance(answer, VlmAnswer) for answer in answers), answers
    return statistics.median(samples), (vlm.status()["input_tokens"] - read) / (rounds * batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=("tiny", "smolvlm-256m"), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()

    from tiny_model import SMOLVLM_256M, TINY_VLM, save_tiny_vlm

    with tempfile.TemporaryDirectory() as folder:
        path = save_tiny_vlm(Path(folder) / args.arch, arch=SMOLVLM_256M if args.arch != "tiny" else TINY_VLM)
        settings = VlmSettings(
            vlm_provider="transformers",
            vlm_model=str(path),
            vlm_device=args.device,
            vlm_threads=args.threads,
            vlm_batch=max(BATCHES),
            vlm_max_tokens=args.max_tokens,
            vlm_timeout_s=600,
        )
        started = time.perf_counter()
        vlm = load_vlm(settings)
        load_s = time.perf_counter() - started
        status = vlm.status()
        print(
            f"{args.arch}: {status['device']} {status['dtype']}, threads {args.threads}, "
            f"{args.max_tokens} new tokens, median of {args.rounds} rounds; load {load_s:.1f} s"
        )
        print("| pictures a request | s/request, batch 1 | s/request, batch 4 | tokens read a request |")
        print("| ---: | ---: | ---: | ---: |")
        for pictures in PICTURES:
            cells, read = [], 0.0
            for batch in BATCHES:
                seconds, read = seconds_per_request(vlm, batch, pictures, args.rounds, args.max_tokens)
                cells.append(f"{seconds:.3f}")
            print(f"| {pictures} | {' | '.join(cells)} | {read:.0f} |", flush=True)
        vlm.close()


if __name__ == "__main__":
    main()
