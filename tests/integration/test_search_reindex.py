"""Reindex end to end: events stored while search was off get vectors of the encoder once it is on,
from their snapshot files; stopped half-way by a restart, the next run does only what is still missing.

The real service under uvicorn, the GStreamer camera, the scripted walkers, the tiny random-weight
SigLIP through the real loader; the vector index in SQLite. REINDEX_BATCH=1 and a small REINDEX_DUTY
make the first run slow enough (it rests 49 times as long as it works) to be stopped in its middle.
"""

from __future__ import annotations

import pytest

from rtdetr_service.web.schemas import ReindexAnswer

from scripted_detector import WalkingPeople
from support import make_settings, run_service, start_session, wait_until
from tiny_model import save_tiny_siglip

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def tiny_siglip(tmp_path_factory):
    return save_tiny_siglip(tmp_path_factory.mktemp("embed") / "tiny-siglip")


def settings_for(tiny_model_dir, data_dir, **overrides):
    values = dict(data_dir=data_dir, event_end_after_s=1.0, track_keep_s=0.5, track_min_hits=2, embed_backend="torch")
    values.update(overrides)
    return make_settings(tiny_model_dir, **values)


def ended(client) -> list[dict]:
    return [e for e in client.get("/api/v1/events", params={"limit": 500}).json()["events"] if not e["active"]]


def progress(client) -> dict:
    return client.get("/api/v1/events/reindex").json()


def test_reindex_embeds_events_stored_without_vectors_and_resumes_after_a_restart(
    tiny_model_dir, tiny_siglip, rtsp_url, tmp_path
):
    data = tmp_path / "data"
    # Given events stored while search was off
    walkers = WalkingPeople(rows=3)  # three events a walk
    service = run_service(settings_for(tiny_model_dir, data, embed_enabled="false"), lambda _s: walkers)
    try:
        with service.client() as client:
            session_id = start_session(client, rtsp_url)["session_id"]
            assert wait_until(lambda: len(ended(client)) >= 6, timeout=40), client.get("/api/v1/events").json()
            client.post("/api/v1/video/stop", json={"session_id": session_id})  # not run again after the restart
            assert wait_until(lambda: not any(e["active"] for e in client.get("/api/v1/events").json()["events"]))
            events = ended(client)
    finally:
        service.stop()
    with_snapshot = {e["id"] for e in events if e["has_snapshot"]}
    assert len(with_snapshot) >= 6

    # When the service comes back with search on, then an old event cannot be an example yet
    on = dict(embed_enabled="true", embed_model=str(tiny_siglip))
    slow = settings_for(tiny_model_dir, data, reindex_batch=1, reindex_duty=0.02, **on)
    service = run_service(slow, lambda _s: WalkingPeople())
    try:
        with service.client() as client:
            assert wait_until(lambda: client.get("/ready").json()["search"]["state"] == "ready", timeout=60)
            model_id = client.get("/ready").json()["search"]["model_id"]
            example = client.get("/api/v1/events/search", params={"similar_to": sorted(with_snapshot)[0]})
            assert (example.status_code, example.json()["error"]) == (409, "event_not_embedded"), example.text
            assert "reindex" in example.json()["detail"]
            # and a reindex starts, one at a time
            started = client.post("/api/v1/events/reindex")
            assert started.status_code == 202, started.text
            again = client.post("/api/v1/events/reindex")
            assert (again.status_code, again.json()["error"]) == (409, "reindex_running"), again.text
            assert wait_until(lambda: progress(client)["done"] >= 1, timeout=30), progress(client)
            half = progress(client)
            assert half["state"] == "running" and half["model_id"] == model_id
            assert half["done"] < len(with_snapshot) and half["rate_per_s"] > 0
            metrics = client.get("/metrics").text
            assert "rtdetr_reindex_running 1.0" in metrics and "rtdetr_reindex_done" in metrics
    finally:
        service.stop()  # mid-way: the shutdown stops the run
    index = service.app.state.vector_index
    done_before = len(events) - len(index.missing(model_id, 10_000))
    assert half["done"] <= done_before < len(with_snapshot)

    # When it restarts and reindexes again, then it embeds only what is still missing, and then nothing is
    service = run_service(settings_for(tiny_model_dir, data, **on), lambda _s: WalkingPeople())
    try:
        with service.client() as client:
            assert wait_until(lambda: client.get("/ready").json()["search"]["state"] == "ready", timeout=60)
            index = service.app.state.vector_index
            still_missing = {m.event_id for m in index.missing(model_id, 10_000)}
            assert len(still_missing) == len(events) - done_before
            assert client.post("/api/v1/events/reindex").status_code == 202
            assert wait_until(lambda: progress(client)["state"] == "done", timeout=60), progress(client)
            final = ReindexAnswer.model_validate(progress(client)).model_dump()
            assert final["done"] == len(still_missing & with_snapshot)  # nothing embedded twice
            assert final["skipped"] == len(still_missing - with_snapshot) and final["failed"] == 0
            assert not {m.event_id for m in index.missing(model_id, 10_000)} & with_snapshot
            assert index.count(model_id) == len(with_snapshot)
            # and the old events are found by example now
            similar = client.get("/api/v1/events/search", params={"similar_to": sorted(with_snapshot)[0]})
            assert similar.status_code == 200 and len(similar.json()["events"]) == len(with_snapshot) - 1
    finally:
        service.stop()
