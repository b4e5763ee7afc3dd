"""What the reader pays per frame: decoding, BGR conversion, and frames held back by the decoder.

    PYTHONPATH=rt-detr-service python bench/decode_cost.py CLIP.mp4 [--threads 16]

Prints, for slice and frame threading, ms per frame to decode with and without the BGR
conversion, and how many packets the decoder takes in before its first frame comes out (each
is one frame interval of added latency at the camera's rate).
"""

from __future__ import annotations

import argparse
import time

import av


def decode(path: str, thread_type: str, threads: int, convert: bool) -> tuple[float, int]:
    """(ms per frame, packets in before the first frame out)."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = thread_type
        stream.codec_context.thread_count = threads
        frames = packets = 0
        held_back = None
        started = time.perf_counter()
        for packet in container.demux(stream):
            packets += 1
            for frame in packet.decode():
                if held_back is None:
                    held_back = packets - 1
                if convert:
                    frame.to_ndarray(format="bgr24")
                frames += 1
        elapsed = time.perf_counter() - started
    return elapsed * 1000 / max(frames, 1), held_back or 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clip")
    parser.add_argument("--threads", type=int, default=0, help="decoder threads (0 = one per core)")
    args = parser.parse_args()
    print(f"{'threading':9s} {'decode ms':>10s} {'+BGR ms':>8s} {'held back':>10s}")
    for thread_type in ("SLICE", "FRAME"):
        plain, held = decode(args.clip, thread_type, args.threads, convert=False)
        converted, _ = decode(args.clip, thread_type, args.threads, convert=True)
        print(f"{thread_type:9s} {plain:10.2f} {converted:8.2f} {held:>10d}")


if __name__ == "__main__":
    main()
