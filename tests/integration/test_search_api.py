"""Search, identities and Re-ID end to end: the real service under uvicorn, the GStreamer camera (the
static SMPTE bars, so that a place in the picture always shows the same colours), a scripted detector
in place of the model (people walking across at times the test sets, each walk in its own band of
rows), and the tiny random-weight SigLIP loaded through the real loader (EMBED_ENABLED=true,
EMBED_MODEL=<its folder>). Everything after the detector is real: tracking, events, snapshots, the
embedding stage, Re-ID, the vector index in SQLite (sqlite-vec), the routes.

Random weights give no meaning, so the test holds what is known: two sessions on the same camera URL
(no camera names: two viewpoints to Re-ID) see the same walk at the same moment, so their crops are
all but the same picture, while another walk in another band shows other colours. REID_THRESHOLD is
0.9 here: the twin events score 1.0 against each other (to four places: both sessions decode the same
frames), the other band's about -0.1 under the conditioned random weights (measured over runs), so the
threshold separates them with room on both sides; the default 0.8 is meant for trained weights.
"""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from scripted_detector import ScheduledWalks
from support import make_settings, run_service, running_camera, start_session, wait_until
from tiny_model import save_tiny_siglip

pytestmark = pytest.mark.timeout(300)

TOP, BOTTOM = (0.05, 0.45), (0.70, 0.98)  # the bars, and the blocks under them


@pytest.fixture(scope="module")
def tiny_siglip(tmp_path_factory):
    return save_tiny_siglip(tmp_path_factory.mktemp("embed") / "tiny-siglip")


@pytest.fixture(scope="module")
def bars_camera():
    with running_camera(pattern="smpte") as camera:
        yield camera


def search_settings(tiny_model_dir, tiny_siglip, data_dir, **overrides):
    values = dict(
        data_dir=data_dir,
        event_end_after_s=1.0,
        track_keep_s=0.5,
        track_min_hits=2,
        embed_enabled="true",
        embed_model=str(tiny_siglip),
        embed_backend="torch",
        embed_early_s=1.0,
        reid_threshold=0.9,
    )
    values.update(overrides)
    return make_settings(tiny_model_dir, **values)


def ended_with_identity(client, session_id: str) -> list[dict]:
    events = client.get("/api/v1/events", params={"session_id": session_id}).json()["events"]
    return sorted((e for e in events if not e["active"] and e["global_id"]), key=lambda e: e["start_time"])


def search_ready(client) -> bool:
    return client.get("/ready").json().get("search", {}).get("state") == "ready"


@pytest.fixture(scope="module")
def walked(tiny_model_dir, tiny_siglip, bars_camera, tmp_path_factory):
    """Two sessions on one camera URL, two walks each (the top band, then the bottom), ended and linked."""
    detector = ScheduledWalks(walk_s=3.0)
    settings = search_settings(tiny_model_dir, tiny_siglip, tmp_path_factory.mktemp("search"))
    service = run_service(settings, detector_factory=lambda _s: detector)
    try:
        with service.client() as client:
            assert wait_until(lambda: search_ready(client), timeout=60), client.get("/ready").json()
            a = start_session(client, bars_camera.url)["session_id"]
            b = start_session(client, bars_camera.url)["session_id"]
            now = time.time()
            detector.add(now + 1.5, *TOP)
            detector.add(now + 7.0, *BOTTOM)
            found = wait_until(
                lambda: len(ended_with_identity(client, a)) >= 2 and len(ended_with_identity(client, b)) >= 2,
                timeout=40,
            )
            assert found, client.get("/api/v1/events").json()
            for session_id in (a, b):
                client.post("/api/v1/video/stop", json={"session_id": session_id})
            yield service, {"a": ended_with_identity(client, a), "b": ended_with_identity(client, b)}
    finally:
        service.stop()


def test_two_sessions_on_one_camera_url_get_one_global_id_and_similar_finds_the_twin(walked):
    service, events = walked
    (a_top, a_bottom), (b_top, b_bottom) = events["a"][:2], events["b"][:2]
    with service.client() as client:
        # Given the same walk seen by two sessions, then both events carry one global_id
        assert a_top["global_id"] == b_top["global_id"], (a_top, b_top)
        assert a_bottom["global_id"] == b_bottom["global_id"], (a_bottom, b_bottom)
        # When one is searched by example, then the other comes first (itself is never listed)
        answer = client.get("/api/v1/events/search", params={"similar_to": a_top["id"]})
        assert answer.status_code == 200, answer.text
        hits = answer.json()["events"]
        scores = {h["id"]: round(h["score"], 4) for h in hits}
        assert hits[0]["id"] == b_top["id"], scores
        assert a_top["id"] not in scores
        assert hits[0]["score"] > 0.9 > max(scores[a_bottom["id"]], scores[b_bottom["id"]]), scores
        assert answer.json()["trained"] is False and "random weights" in answer.json()["notice"]
