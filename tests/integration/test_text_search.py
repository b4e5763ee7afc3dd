"""Search by words over what was seen and what was said, end to end: the real service under uvicorn with
the tiny random-weight SigLIP loaded through the real loader (EMBED_ENABLED=true), its embedding stage,
its reindex and its vector indexes in SQLite (sqlite-vec); and POST /ask, whose recall is the same
ranking (the scripted VLM answers its checks: what is under test there is which events it is shown).

Events are written into the service's store with plain SQL, descriptions included: the store's writer
does not keep descriptions yet (the VLM stage's helper adds that), so the test writes them the way it
will leave them, then hands the described record to the embedding stage as one more `update` change,
as the VLM stage will. Image vectors are set, not embedded: each event's is placed against the query's
own text vector (near it, or opposite), so where an event lands by what was seen is known.

What was said is the tiny model's own: its byte-level text tower puts "red umbrella" nearest to "a red
umbrella by the door" of the descriptions here (cosine 0.61 against at most 0.44, measured; the weights
are seeded, so the same every run).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace

import cv2
import numpy as np
import pytest
import sqlalchemy as sa

from rtdetr_service.core.results import EventChange, Published, SessionView
from rtdetr_service.outputs.store.schema import events_table
from rtdetr_service.web.schemas import AskAnswer, IdentityAnswer, ReindexAnswer, SearchAnswer

from scripted_detector import ScheduledWalks
from scripted_vlm import ScriptedVlm
from support import make_settings, run_service, wait_until
from tiny_model import save_tiny_siglip

pytestmark = pytest.mark.timeout(180)

UMBRELLA = "a red umbrella by the door"
SAID = {1: "a blue car parked in the street", 2: "a dog running on the lawn"}  # described by the VLM stage
LATER = {3: "a person in a grey coat walking"}  # described while search was away: left to a reindex
DOOR = {0, 6, 7}  # the camera "door": 3 of the 12


@pytest.fixture(scope="module")
def tiny_siglip(tmp_path_factory):
    return save_tiny_siglip(tmp_path_factory.mktemp("embed") / "tiny-siglip")


def snapshot(data_dir, n: int, event_id: str) -> str:
    """A small real JPEG where the store keeps snapshots, its grey level the event's number (so an ask's
    pictures can be told apart); its path relative to the data directory, as the row holds it."""
    rel = f"snapshots/test/{event_id}.jpg"
    path = data_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(".jpg", np.full((48, 64, 3), 10 + 20 * n, np.uint8))
    assert ok
    path.write_bytes(data.tobytes())
    return rel


def shown(request) -> int:
    """The number of the event whose snapshot a VLM request carries (its grey level)."""
    image = cv2.imdecode(np.frombuffer(request.images[0], np.uint8), cv2.IMREAD_GRAYSCALE)
    return round((float(image.mean()) - 10) / 20)


def row(n: int, event_id: str, now: float, description: str | None, snapshot_path: str) -> dict:
    start = now - 600 + n
    return {
        "id": event_id,
        "session_id": "s-1",
        "camera": "door" if n in DOOR else "street",
        "track_id": n,
        "label": "person",
        "class_id": 0,
        "start_time": start,
        "end_time": start + 5,
        "last_seen": start + 5,
        "best_confidence": 0.8,
        "best_bbox": "[1.0, 2.0, 30.0, 40.0]",
        "best_time": start + 1,
        "frame_width": 640,
        "frame_height": 480,
        "zones": "[]",
        "rules": "[]",
        "updated_at": start + 5,
        "description": description,
        "description_model": None if description is None else "scripted-vlm",
        "global_id": "walker-1" if n in (0, 1) else None,
        "snapshot_path": snapshot_path,
    }


def unit(vector: np.ndarray) -> np.ndarray:
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def search(client, **params) -> dict:
    answer = client.get("/api/v1/events/search", params=params)
    assert answer.status_code == 200, answer.text
    SearchAnswer.model_validate(answer.json())
    return answer.json()


@pytest.fixture(scope="module")
def stored(tiny_model_dir, tiny_siglip, tmp_path_factory):
    """The service, and 12 events: 0 says "a red umbrella" but looks unlike the words (its image vector
    is opposite them), 1-2 say other things, 3 is described but not yet embedded, 4-11 say nothing and
    look like the words (noise around them), 4 the most. Each has a snapshot; a scripted VLM answers asks."""
    data_dir = tmp_path_factory.mktemp("text-search")
    settings = make_settings(
        tiny_model_dir,
        data_dir=data_dir,
        embed_enabled="true",
        embed_model=str(tiny_siglip),
        embed_backend="torch",
        vlm_provider="transformers",
    )
    service = run_service(settings, detector_factory=lambda _s: ScheduledWalks(), vlm_factory=lambda _s: ScriptedVlm())
    try:
        with service.client() as client:

            def ready() -> bool:
                state = client.get("/ready").json()
                return state.get("search", {}).get("state") == "ready" and state.get("vlm", {}).get("state") == "ready"

            assert wait_until(ready, timeout=60), client.get("/ready").json()
        state = service.app.state
        embedder, store, index = state.embedder.get(), state.event_store, state.vector_index
        ids = [uuid.uuid4().hex for _ in range(12)]
        said = {0: UMBRELLA, **SAID, **LATER}
        now = time.time()
        with store.database.engine.begin() as conn:
            rows = [row(n, ids[n], now, said.get(n), snapshot(data_dir, n, ids[n])) for n in range(12)]
            conn.execute(sa.insert(events_table), rows)
        query = embedder.embed_texts(["red umbrella"])[0]
        noise = np.random.default_rng(5).standard_normal((12, len(query)))
        looks = {0: -query, 1: noise[1], 2: noise[2], 3: noise[3]}
        looks |= {n: query + 0.2 * (n - 3) * noise[n] / np.linalg.norm(noise[n]) for n in range(4, 12)}
        assert index.upsert_many(embedder.model_id, [(ids[n], unit(looks[n])) for n in range(12)]) == 12
        yield service, ids
    finally:
        service.stop()


def describe(service, event_id: str) -> None:
    """What the VLM stage does once it has described an event: the described record, as an update, to
    the outputs (here the embedding stage alone: the store's writer does not keep descriptions yet)."""
    records = service.app.state.event_store.records([event_id])
    record = records[event_id]
    assert record.description is not None  # read back from the row the test wrote
    stage = next(sink for sink in service.app.state.manager.sinks if sink.name == "embeddings")
    view = SessionView(record.session_id, record.camera, enable_drawing=False, jpeg_quality=75)
    before = replace(record, description=None, description_model=None)
    stage.handle(Published(view, None, (), (EventChange("update", record, before),)))


def test_an_event_that_looks_unlike_the_words_is_found_by_what_was_said(stored):
    service, ids = stored
    texts = service.app.state.vector_index.texts
    with service.client() as client:
        # Given no description embedded yet, then by what was seen the umbrella comes last
        before = search(client, q="red umbrella")["events"]
        assert [e["id"] for e in before][-1] == ids[0] and before[0]["id"] == ids[4]
        assert all(e["matched"] == ["image"] and e["text_score"] is None for e in before)
        # When the VLM stage's updates reach the embedding stage, then their descriptions are embedded
        for n in (0, *SAID):
            describe(service, ids[n])
        assert wait_until(lambda: all(texts.get(ids[n]) is not None for n in (0, *SAID)), timeout=30)
        assert texts.get(ids[3]) is None  # described, but no update came: the reindex's
        # and the umbrella is found through its description: first by what was said, on the first page
        answer = search(client, q="red umbrella", limit=3)
        hits = {e["id"]: e for e in answer["events"]}
        assert ids[0] in hits, [(e["id"], e["score"], e["matched"]) for e in answer["events"]]
        umbrella = hits[ids[0]]
        assert umbrella["matched"] == ["image", "description"]
        everything = search(client, q="red umbrella", limit=12)["events"]
        said = [e for e in everything if e["text_score"] is not None]
        assert max(said, key=lambda e: e["text_score"])["id"] == ids[0]
        assert umbrella["image_score"] == min(e["image_score"] for e in everything)  # it looks least like it
        # and the hits carry their descriptions, the others none
        assert (umbrella["description"], umbrella["description_model"]) == (UMBRELLA, "scripted-vlm")
        described = {ids[n] for n in (0, *SAID, *LATER)}
        assert all(e["description"] is None for e in everything if e["id"] not in described)
        assert {e["id"] for e in everything if e["description"] is not None} == described
        scores = [e["score"] for e in everything]
        assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores)


def test_every_filter_applies_inside_the_description_query_too(stored):
    service, ids = stored
    texts = service.app.state.vector_index.texts
    for n in (0, *SAID):
        describe(service, ids[n])
    assert wait_until(lambda: all(texts.get(ids[n]) is not None for n in (0, *SAID)), timeout=30)
    with service.client() as client:
        # When the search keeps to the camera "door" (3 of the 12), then exactly those 3 come back, though
        # the street's described events are closer by what was said than most of the door's
        door = search(client, q="a blue car parked in the street", camera="door")["events"]
        assert {e["id"] for e in door} == {ids[n] for n in DOOR}
        assert [e["matched"] for e in door if e["id"] == ids[0]] == [["image", "description"]]
        # and without the filter the street's described events are there, found by what was said too
        anywhere = {e["id"]: e for e in search(client, q="a blue car parked in the street")["events"]}
        assert all("description" in anywhere[ids[n]]["matched"] for n in SAID)


def test_a_reindex_embeds_descriptions_without_a_text_vector_and_a_delete_takes_it(stored):
    service, ids = stored
    texts = service.app.state.vector_index.texts
    with service.client() as client:
        # When a reindex runs (every event has its image vector already), then it embeds the described
        # events that have no text vector, and only those
        missing = {m.event_id for m in texts.missing(service.app.state.embedder.get().model_id, 100)}
        assert ids[3] in missing and missing <= {ids[n] for n in (0, 1, 2, 3)}
        assert client.post("/api/v1/events/reindex").status_code == 202
        done = lambda: client.get("/api/v1/events/reindex").json()["state"] == "done"  # noqa: E731
        assert wait_until(done, timeout=60), client.get("/api/v1/events/reindex").json()
        progress = ReindexAnswer.model_validate(client.get("/api/v1/events/reindex").json())
        assert (progress.done, progress.texts_done, progress.failed) == (len(missing), len(missing), 0)
        assert texts.get(ids[3]) is not None
        # and the words it says find it first by what was said
        said = [e for e in search(client, q=LATER[3])["events"] if e["text_score"] is not None]
        assert max(said, key=lambda e: e["text_score"])["id"] == ids[3]
        # and an identity's events carry their descriptions too
        journey = IdentityAnswer.model_validate(client.get("/api/v1/identities/walker-1").json())
        assert {e.id: e.description for e in journey.events} == {ids[0]: UMBRELLA, ids[1]: SAID[1]}
        # When the event is deleted, then its text vector goes with it
        assert client.delete(f"/api/v1/events/{ids[3]}").status_code == 200
        assert texts.get(ids[3]) is None
        assert ids[3] not in {e["id"] for e in search(client, q=LATER[3])["events"]}


def test_an_ask_recalls_by_what_was_said_as_a_search_by_words_ranks(stored):
    service, ids = stored
    texts = service.app.state.vector_index.texts
    vlm = service.app.state.vlm.get()
    for n in (0, *SAID):
        describe(service, ids[n])
    assert wait_until(lambda: all(texts.get(ids[n]) is not None for n in (0, *SAID)), timeout=30)
    before = len(vlm.requests)
    with service.client() as client:
        # When asked with room for 3 candidates, where by what was seen alone 4, 5 and 6 would fill it
        answer = client.post("/api/v1/ask", json={"question": "red umbrella", "recall_limit": 3, "top_k": 3})
        assert answer.status_code == 200, answer.text
        results = AskAnswer.model_validate(answer.json()).model_dump()["results"]
        # then the umbrella, which looks least like the words, is a candidate: recalled by what was said
        recalled = {r["event_id"]: r for r in results}
        assert ids[0] in recalled, [(r["event_id"], r["recall_score"], r["matched"]) for r in results]
        assert recalled[ids[0]]["matched"] == ["image", "description"]
        # and the candidates are a search's first page for the same words, with its scores
        page = search(client, q="red umbrella", limit=3)["events"]
        assert {r["event_id"]: (r["recall_score"], r["matched"]) for r in results} == {
            e["id"]: (round(e["score"], 4), e["matched"]) for e in page
        }
    # and the model was shown each candidate's own snapshot, the umbrella's among them
    asked = vlm.requests[before:]
    assert sorted(shown(r) for r in asked) == sorted(ids.index(r["event_id"]) for r in results)
