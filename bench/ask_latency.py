"""POST /api/v1/ask latency for 10 and 100 candidates (recall_limit 10 and 100, top_k 10), through the real
route: the app under uvicorn in this process, `--events` stored events (1 000 by default) each with a
snapshot file where the store keeps them and an image vector (written in bulk), one in four with a
description and its text vector (so recall ranks both sides and fuses them, as a search by words
does), the tests' tiny random SigLIP as the encoder (EMBED_*), and as the vision-language model:

- `transformers`: the tests' tiny random SmolVLM (`save_tiny_vlm`) run locally, VLM_MAX_TOKENS
  `--max-tokens`: the local provider's plumbing and a small model's generation;
- `openai`: the openai provider against tests/chat_server.py answering every request at once with a
  verdict: the plumbing of a hosted model (key pool, HTTP, JSON) without its generation time.

Each round asks one question per candidate count (the counts interleaved, after one warm-up ask
each); p50/p99 of the whole request as the client sees it, the route's own `took_s`, and its split:
recall (the question's embedding, then the fused vector search with the events' documents),
snapshots (each candidate's file read and shrunk to VLM_IMAGE_MAX_PX) and the VLM calls. The split
is timed by wrapping, in this process, the route's own steps (`ask._recall`, `ask.shrunk_snapshot`)
and the loaded encoder's and model's methods; asks run one at a time, so each second is the ask's.
`other` is took_s less the split: verdict checks, ranking, JSON and threads handing over.

Snapshots are `--snapshot-size` JPEGs of a synthetic scene (gradients, boxes, mild noise, as heavy to
decode as a camera frame), 20 different pictures hard-linked under the events' paths: the files the
route reads are real, the disk holds 20. Vectors are random (only the cost is measured).

    PYTHONPATH=rt-detr-service .venv/bin/python bench/ask_latency.py --events 1000 --rounds 10 --out ask.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(BENCH), str(ROOT / "rt-detr-service"), str(ROOT / "tests")]

import cv2  # noqa: E402
import httpx  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from measure import percentiles_ms  # noqa: E402

from rtdetr_service.outputs.store.schema import events_table  # noqa: E402
from rtdetr_service.web.routes import ask  # noqa: E402

from chat_server import ChatServer, Reply  # noqa: E402
from scripted_detector import ScheduledWalks  # noqa: E402
from support import make_settings, run_service  # noqa: E402
from tiny_model import save_tiny_siglip, save_tiny_vlm  # noqa: E402

QUESTIONS = (
    "is someone carrying a ladder?",
    "is a person wearing a red jacket?",
    "is the car parked in front of the gate?",
    "is someone climbing the fence?",
    "is a dog running on the lawn?",
)
PICTURES = 20  # different snapshots; the events' files are links to them
DESCRIBED = 4  # one event in DESCRIBED has a description and its text vector
KEY = "sk-bench-ask-0123456789abcdef"
VERDICT = '{"answer": "no", "score": 0.1, "reason": "Nothing is carried."}'
PARTS = ("embed", "search", "snapshots", "vlm")


class Split:
    """Seconds spent in each step of the ask in flight (asks run one at a time here)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds: dict[str, float] = defaultdict(float)

    def reset(self) -> None:
        with self._lock:
            self.seconds = defaultdict(float)

    def timed(self, part: str, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self.seconds[part] += time.perf_counter() - started

        return wrapper


def scene(seed: int, width: int, height: int) -> bytes:
    """A JPEG of a synthetic scene of a camera frame's weight: a gradient, a few boxes, mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([(x * 200 // width), (y * 200 // height), np.full_like(x, 40 + 8 * seed)], -1)
    image = image.astype(np.uint8)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width - 80)), int(rng.integers(0, height - 120))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        cv2.rectangle(image, (x0, y0), (x0 + int(rng.integers(40, 200)), y0 + int(rng.integers(60, 300))), colour, -1)
    noisy = np.clip(image.astype(np.int16) + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8)
    ok, data = cv2.imencode(".jpg", noisy, [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return data.tobytes()


def event_row(n: int, event_id: str, now: float, snapshot_path: str) -> dict:
    start = now - 86_400 + 60 * n
    described = n % DESCRIBED == 0
    return {
        "id": event_id,
        "session_id": f"s-{n % 4}",
        "camera": f"cam-{n % 4}",
        "track_id": n,
        "label": "person" if n % 3 else "car",
        "class_id": 0 if n % 3 else 2,
        "start_time": start,
        "end_time": start + 8,
        "last_seen": start + 8,
        "best_confidence": 0.8,
        "best_bbox": "[400.0, 200.0, 560.0, 560.0]",
        "best_time": start + 2,
        "frame_width": 1280,
        "frame_height": 720,
        "zones": "[]",
        "rules": "[]",
        "updated_at": start + 8,
        "snapshot_path": snapshot_path,
        "snapshot_bytes": 0,
        "description": f"a bench description of event {n}" if described else None,
        "description_model": "bench" if described else None,
    }


def fill(service, data_dir: Path, events: int, size: tuple[int, int]) -> dict:
    """`events` ended events in the service's store: rows, snapshot files, image vectors and, for one in
    DESCRIBED, a description's text vector; all in bulk."""
    state = service.app.state
    store, index, embedder = state.event_store, state.vector_index, state.embedder.get()
    pictures = data_dir / "snapshots" / "pictures"
    pictures.mkdir(parents=True, exist_ok=True)
    sources = []
    for seed in range(PICTURES):
        source = pictures / f"{seed}.jpg"
        source.write_bytes(scene(seed, *size))
        sources.append(source)
    folder = data_dir / "snapshots" / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    ids = [uuid.uuid4().hex for _ in range(events)]
    rows = []
    now = time.time()
    for n, event_id in enumerate(ids):
        rel = f"snapshots/bench/{event_id}.jpg"
        os.link(sources[n % PICTURES], data_dir / rel)
        rows.append(event_row(n, event_id, now, rel))
    with store.database.engine.begin() as conn:
        conn.execute(sa.insert(events_table), rows)
    dim = len(embedder.embed_texts(["dimension"])[0])
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((events, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    assert index.upsert_many(embedder.model_id, list(zip(ids, vectors, strict=True))) == events
    said = [(ids[n], vectors[(n + 1) % events]) for n in range(0, events, DESCRIBED)]
    assert index.texts.upsert_many(embedder.model_id, said) == len(said)
    return {"snapshot_bytes_each": sum(s.stat().st_size for s in sources) // PICTURES, "described": len(said)}


@contextlib.contextmanager
def instrumented(service, split: Split):
    """Time the route's steps and the loaded models' calls (see the module docstring); the route's own
    functions are put back after, so the next provider's run wraps them once."""
    state = service.app.state
    embedder, vlm = state.embedder.get(), state.vlm.get()
    embedder.embed_texts = split.timed("embed", embedder.embed_texts)
    vlm.generate = split.timed("vlm", vlm.generate)
    steps = {"_recall": ask._recall, "shrunk_snapshot": ask.shrunk_snapshot}
    ask._recall = split.timed("search", steps["_recall"])
    ask.shrunk_snapshot = split.timed("snapshots", steps["shrunk_snapshot"])
    try:
        yield
    finally:
        for name, step in steps.items():
            setattr(ask, name, step)


def asked(client: httpx.Client, question: str, candidates: int, top_k: int) -> tuple[dict, float]:
    body = {"question": question, "recall_limit": candidates, "top_k": top_k}
    started = time.perf_counter()
    answer = client.post("/api/v1/ask", json=body)
    total = time.perf_counter() - started
    if answer.status_code != 200:
        raise RuntimeError(f"ask answered {answer.status_code}: {answer.text[:500]}")
    return answer.json(), total


def measure(service, split: Split, args) -> list[dict]:
    """Rounds of one ask per candidate count, interleaved; the percentiles of each count."""
    samples: dict[int, list[dict]] = {n: [] for n in args.candidates}
    headers = {"apikey": service.api_key}
    with httpx.Client(base_url=service.base_url, headers=headers, timeout=600) as client:
        for candidates in args.candidates:  # warm-up: first calls of the model, the caches, the threads
            asked(client, QUESTIONS[0], candidates, args.top_k)
        for round_ in range(args.rounds):
            for candidates in args.candidates:
                split.reset()
                body, total = asked(client, QUESTIONS[round_ % len(QUESTIONS)], candidates, args.top_k)
                parts = {part: split.seconds.get(part, 0.0) for part in PARTS}
                if body["checked"] + body["failed"] != candidates:
                    raise RuntimeError(f"{candidates} candidates, {body['checked']} checked: {body['notices']}")
                samples[candidates].append({"total": total, "took": body["took_s"], **parts})
    rows = []
    for candidates, runs in samples.items():
        row = {"candidates": candidates, "top_k": args.top_k, "rounds": len(runs)}
        for name in ("total", "took", *PARTS):
            row[f"{name}_ms"] = percentiles_ms([run[name] for run in runs])
        row["recall_ms"] = percentiles_ms([run["embed"] + run["search"] for run in runs])
        row["other_ms"] = percentiles_ms([run["took"] - sum(run[p] for p in PARTS) for run in runs])
        rows.append(row)
    return rows


def run(provider: str, models: dict[str, Path], scratch: Path, args) -> list[dict]:
    data_dir = scratch / f"data-{provider}"
    vlm = {
        "transformers": dict(vlm_provider="transformers", vlm_model=str(models["vlm"]), vlm_device="cpu"),
        "openai": dict(vlm_provider="openai", vlm_model="bench", vlm_api_keys=KEY),
    }[provider]
    with ChatServer((KEY,)) as chat:
        chat.script(KEY, Reply(text=VERDICT))
        if provider == "openai":
            vlm["vlm_base_url"] = chat.base_url
        settings = make_settings(
            scratch / "no-detector",  # the scripted detector below: no camera runs
            data_dir=data_dir,
            embed_enabled="true",
            embed_model=str(models["siglip"]),
            embed_backend="torch",
            embed_threads=args.threads,
            vlm_max_tokens=args.max_tokens,
            vlm_threads=args.threads,
            **vlm,
        )
        service = run_service(settings, detector_factory=lambda _s: ScheduledWalks())
        try:
            ready = _wait_ready(service)
            filled = fill(service, data_dir, args.events, args.snapshot_size)
            split = Split()
            with instrumented(service, split):
                rows = measure(service, split, args)
        finally:
            service.stop()
    common = {"provider": provider, "events": args.events, "vlm_model": ready["vlm"]["model_id"]} | filled
    common["snapshot_size"] = "x".join(map(str, args.snapshot_size))
    return [common | row for row in rows]


def _wait_ready(service, timeout: float = 120.0) -> dict:
    """/ready once search and the VLM both answer."""
    deadline = time.monotonic() + timeout
    state: dict = {}
    with service.client() as client:
        while time.monotonic() < deadline:
            state = client.get("/ready").json()
            if state.get("search", {}).get("state") == "ready" and state.get("vlm", {}).get("state") == "ready":
                return state
            time.sleep(0.2)
    raise RuntimeError(f"search or the VLM did not become ready: {state}")


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.partition("x")
    return int(width), int(height)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--candidates", type=int, nargs="+", default=[10, 100], help="recall_limit of each ask")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=10)
    providers = ["transformers", "openai"]
    parser.add_argument("--providers", nargs="+", default=providers, choices=providers)
    parser.add_argument("--max-tokens", type=int, default=32, help="VLM_MAX_TOKENS (the tiny model rarely stops)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the encoder and the local model")
    parser.add_argument("--snapshot-size", type=_size, default=(1280, 720), help="WIDTHxHEIGHT of each snapshot")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="ask-bench-") as folder:
        scratch = Path(folder)
        models = {"siglip": save_tiny_siglip(scratch / "tiny-siglip"), "vlm": save_tiny_vlm(scratch / "tiny-vlm")}
        for provider in args.providers:
            for row in run(provider, models, scratch, args):
                print(json.dumps(row), flush=True)
                results.append(row)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
