"""How many VLM requests the `openai` provider gets answered per second through its key pool, against
a local chat-completions server (tests/chat_server.py, each answer after `--latency` seconds of
"generation"), with 1, 2 and 4 keys at a per-key QPS limit: answered per second against the pool's
limit (keys × QPS), the most one key's requests the server counted in any one second, and the
provider's CPU per request (the process's CPU time, the server's threads included).
A row without a QPS limit shows what the pool and httpx cost on their own.

    PYTHONPATH=rt-detr-service .venv/bin/python bench/vlm_pool.py --keys 1 2 4 --qps 5 --seconds 6
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "rt-detr-service"), str(ROOT / "tests")]

from rtdetr_service.core.vlm import VlmAnswer, VlmRequest  # noqa: E402
from rtdetr_service.inference.settings import VlmSettings  # noqa: E402
from rtdetr_service.inference.vlm.openai import OpenAiVlm  # noqa: E402

from chat_server import ChatServer, Reply  # noqa: E402

JPEG = b"\xff\xd8\xff\xe0" + bytes(30_000) + b"\xff\xd9"  # the size of a 768-px JPEG crop, about


def run(keys: int, qps: float, requests: int, latency: float, concurrency: int) -> dict:
    names = tuple(f"sk-bench-{number:02d}-0123456789abcdef" for number in range(keys))
    with ChatServer(names) as server:
        for name in names:
            server.script(name, Reply(text="A person walks to the gate.", delay_s=latency))
        provider = OpenAiVlm(
            VlmSettings(
                vlm_provider="openai",
                vlm_model="bench",
                vlm_base_url=server.base_url,
                vlm_api_keys=",".join(names),
                vlm_key_qps=qps,
                vlm_key_concurrency=concurrency,
                vlm_timeout_s=600,
            )
        )
        try:
            cpu0, start = time.process_time(), time.monotonic()
            answers = provider.generate([VlmRequest("describe", (JPEG,), "describe")] * requests)
            wall, cpu = time.monotonic() - start, time.process_time() - cpu0
        finally:
            provider.close()
        arrivals = sorted(seen.at for seen in server.seen)
        per_key = [[seen.at for seen in server.by_key(name)] for name in names]
    answered = sum(isinstance(answer, VlmAnswer) for answer in answers)
    busiest = max(_busiest(times) for times in per_key)
    limit = keys * qps if qps else None
    return {
        "keys": keys,
        "qps_per_key": qps,
        "limit_per_s": limit,
        "requests": requests,
        "answered": answered,
        "wall_s": round(wall, 2),
        "answered_per_s": round(answered / wall, 2),
        # the rate the server saw, from its first request to its last
        "seen_per_s": round((len(arrivals) - 1) / (arrivals[-1] - arrivals[0]), 2),
        "busiest_second_per_key": busiest,
        "cpu_ms_per_request": round(1000 * cpu / requests, 2),
    }


def _busiest(times: list[float]) -> int:
    """The most requests the server saw from one key in any one second (a window at each arrival)."""
    return max((sum(1 for t in times if first <= t < first + 1.0) for first in times), default=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--qps", type=float, default=5.0, help="the limit per key (VLM_KEY_QPS)")
    parser.add_argument("--seconds", type=float, default=6.0, help="requests enough for this long at the limit")
    parser.add_argument("--latency", type=float, default=0.2, help="the server's seconds per answer")
    parser.add_argument("--concurrency", type=int, default=4, help="VLM_KEY_CONCURRENCY")
    parser.add_argument("--unlimited", type=int, default=400, help="requests of the row without a QPS limit (0: none)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    rows = [
        run(keys, args.qps, int(keys * args.qps * args.seconds), args.latency, args.concurrency) for keys in args.keys
    ]
    if args.unlimited:
        rows.append(run(1, 0.0, args.unlimited, 0.0, args.concurrency))
    print(
        "| keys | limit/s | requests | answered/s | seen by the server/s | busiest second of a key | CPU ms/request |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        limit = row["limit_per_s"] if row["limit_per_s"] is not None else "none"
        print(
            f"| {row['keys']} | {limit} | {row['requests']} | {row['answered_per_s']} | {row['seen_per_s']} | "
            f"{row['busiest_second_per_key']} | {row['cpu_ms_per_request']} |"
        )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
