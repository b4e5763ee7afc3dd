"""A burst of history reads (the events list, 500 events a page) against a real service with a
3000-event history: the event loop keeps answering /health meanwhile, and the lists themselves are
answered whole and unchanged."""

from __future__ import annotations

import collections
import json
import statistics
import subprocess
import sys
import threading
import traceback

import numpy as np
import pytest

from rtdetr_service.analytics.events import EventLifecycle
from rtdetr_service.core.types import Detection, Frame

from support import make_settings, run_service, wait_until

EVENTS = 3000
BURST = 60  # concurrent GET /api/v1/events?limit=500
PER_FRAME = 100  # new tracks per frame of the history
ZONES = tuple(f"zone-{i:02d}" for i in range(16))  # each event is in all: larger answers to encode
START = 1_780_000_000.0


# Readers and the /health probe in a process of their own: in the service's they would take its GIL.
# It prints the probe's seconds before the burst and while the burst was in flight, and the statuses.
BURST_SCRIPT = """
import collections, json, sys, time
from concurrent.futures import ThreadPoolExecutor
import httpx
base, key, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
probe = httpx.Client(base_url=base, timeout=60)
def health():
    started = time.monotonic()
    assert probe.get("/health").status_code == 200
    return time.monotonic() - started
def read(_):
    answer = httpx.get(base + "/api/v1/events", params={"limit": 500}, headers={"apikey": key}, timeout=60)
    return answer.status_code if len(answer.json()["events"]) == 500 else -1
before = [health() for _ in range(30)]
with ThreadPoolExecutor(count) as pool:
    pages = [pool.submit(read, i) for i in range(count)]
    during = []
    while not all(page.done() for page in pages):
        during.append(health())
statuses = collections.Counter(str(page.result()) for page in pages)
print(json.dumps({"before": before, "during": during, "statuses": statuses}))
"""


@pytest.fixture(scope="module")
def history_service(tiny_model_dir):
    """A service of its own whose store holds EVENTS events, written by the real writer."""
    service = run_service(make_settings(tiny_model_dir))
    store = service.app.state.event_store
    life = EventLifecycle("history-1", "gate", end_after_s=5.0, snapshot_interval_s=1.0, update_interval_s=5.0)
    image = np.zeros((24, 32, 3), dtype=np.uint8)
    box = (3.0, 4.0, 16.0, 20.0)
    for frame_index in range(EVENTS // PER_FRAME):
        tracks = range(frame_index * PER_FRAME, (frame_index + 1) * PER_FRAME)
        detections = [Detection(0, "person", box, 0.7, track) for track in tracks]
        at = START + frame_index
        zones = dict.fromkeys(tracks, ZONES)
        assert store.submit(life.update(Frame(image, frame_index, at, 0.0), detections, zones_of=zones)) == 0
        # submit() drops what does not fit its queue: the next frame waits for this one to be written.
        assert wait_until(lambda at=at: len(store.query(after=at, limit=PER_FRAME)[0]) == PER_FRAME, timeout=30)
    yield service
    service.stop()


def _loop_samples(loop_thread: int, done: threading.Event, seen: collections.Counter) -> None:
    """Counts what the event loop's thread runs, every 2 ms: encoding answers, or anything else."""
    while not done.wait(0.002):
        frame = sys._current_frames().get(loop_thread)
        names = {f.name for f in traceback.extract_stack(frame)} if frame is not None else set()
        seen["encoding" if names & {"serialize_response", "jsonable_encoder"} else "other"] += 1


def test_a_burst_of_history_reads_does_not_hold_the_event_loop(history_service):
    done, on_loop = threading.Event(), collections.Counter()
    sampler = threading.Thread(target=_loop_samples, args=(history_service.thread.ident, done, on_loop))
    sampler.start()
    try:
        burst = subprocess.run(
            [sys.executable, "-c", BURST_SCRIPT, history_service.base_url, history_service.api_key, str(BURST)],
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        done.set()
        sampler.join()
    assert burst.returncode == 0, burst.stderr
    seen = json.loads(burst.stdout)
    assert seen["statuses"] == {"200": BURST}, "every list answered, with 500 events"
    before, during = statistics.median(seen["before"]), seen["during"]
    # The cause itself: the loop thread was never seen turning a list into JSON (it used to, for each).
    assert on_loop["other"] > 100 and on_loop["encoding"] == 0, on_loop
    # The effect, as a ratio within the run: with the encoding on the loop, /health's median in the
    # burst was 20-350 ms (~1 ms before); off it, /health only shares the CPU with two threads (1-20 ms).
    assert len(during) >= 3, during
    assert statistics.median(during) < 5 * before + 0.03, (
        f"/health took {statistics.median(during):.3f} s (median) in the burst, {before:.3f} s before"
    )


def test_the_list_answer_is_the_json_fastapi_would_have_made(history_service):
    with history_service.client() as client:
        page = client.get("/api/v1/events", params={"limit": 3})
    body = page.json()
    assert page.status_code == 200 and page.headers["content-type"] == "application/json"
    assert len(body["events"]) == 3 and body["next_cursor"]
    # FastAPI's own rendering of a returned dict (starlette's JSONResponse.render)
    assert page.content == json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
