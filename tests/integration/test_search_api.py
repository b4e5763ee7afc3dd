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
EMBED_CROPS_PER_EVENT=0: each vector is the best view alone, so a JPEG cut from an event's snapshot is
that view (with the snapshot's drawn box: it scores about 0.75 against its event, the other band about
-0.3); averaged with views from elsewhere on the walk, a random-weight vector is nearer no single crop.
"""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from rtdetr_service.outputs.embeddings.crops import cut
from rtdetr_service.web.app import embedder_from_settings
from rtdetr_service.web.schemas import IdentityAnswer, ReadyAnswer, SearchAnswer

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
        embed_crops_per_event=0,
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


def test_text_search_answers_with_scores_and_keeps_to_its_filters(walked):
    service, events = walked
    a_ids = {e["id"] for e in events["a"]}
    with service.client() as client:
        # When the events are searched by words, then every event comes with a score, closest first
        answer = client.get("/api/v1/events/search", params={"q": "a person walking"})
        assert answer.status_code == 200, answer.text
        body = SearchAnswer.model_validate(answer.json()).model_dump()
        scores = [e["score"] for e in body["events"]]
        assert len(scores) == 4 and scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
        assert "tiny-siglip" in body["model_id"] and body["trained"] is False
        # and the filters hold inside the search: one session, a class nobody is, a confidence nobody has
        session_a = events["a"][0]["session_id"]
        only_a = client.get("/api/v1/events/search", params={"q": "a person walking", "session_id": session_a})
        assert {e["id"] for e in only_a.json()["events"]} == a_ids
        assert client.get("/api/v1/events/search", params={"q": "x", "label": ["car", "dog"]}).json()["events"] == []
        labelled = client.get("/api/v1/events/search", params={"q": "x", "label": ["car", "person"]}).json()
        assert len(labelled["events"]) == 4
        assert client.get("/api/v1/events/search", params={"q": "x", "min_confidence": 0.99}).json()["events"] == []
        later = client.get("/api/v1/events/search", params={"q": "x", "after": events["a"][1]["start_time"] - 0.5})
        assert {e["id"] for e in later.json()["events"]} == {events["a"][1]["id"], events["b"][1]["id"]}
        # and a page of one hands a cursor to the next page of the same search, not to another search
        first = client.get("/api/v1/events/search", params={"q": "x", "limit": 1}).json()
        second = client.get("/api/v1/events/search", params={"q": "x", "limit": 1, "cursor": first["next_cursor"]})
        assert second.status_code == 200 and second.json()["events"][0]["id"] != first["events"][0]["id"]
        whole = client.get("/api/v1/events/search", params={"q": "x"}).json()["events"]
        assert [first["events"][0]["id"], second.json()["events"][0]["id"]] == [e["id"] for e in whole[:2]]
        other = client.get("/api/v1/events/search", params={"q": "y", "limit": 1, "cursor": first["next_cursor"]})
        assert other.status_code == 422 and other.json()["error"] == "invalid_cursor", other.text
        # and a search by words reads past its page (fusion needs it), so a last full page says it is the last
        last = client.get("/api/v1/events/search", params={"q": "x", "limit": 4}).json()
        assert len(last["events"]) == 4 and last["next_cursor"] is None
        assert all(e["matched"] == ["image"] and e["text_score"] is None for e in last["events"])  # none described
        # while one by example cannot know: a full page may have more, the next one says
        by_example = {"similar_to": events["a"][0]["id"], "limit": 3}
        full = client.get("/api/v1/events/search", params=by_example).json()
        assert len(full["events"]) == 3 and full["next_cursor"] is not None
        after = client.get("/api/v1/events/search", params={**by_example, "cursor": full["next_cursor"]}).json()
        assert after["events"] == [] and after["next_cursor"] is None
        assert all(e["score"] == e["image_score"] and e["matched"] == ["image"] for e in full["events"])


def crop_jpeg(client, event: dict) -> bytes:
    """The event's best box cut from its snapshot as the embedding stage cuts it, as a JPEG."""
    snapshot = client.get(event["snapshot_url"])
    image = cv2.imdecode(np.frombuffer(snapshot.content, np.uint8), cv2.IMREAD_COLOR)
    rgb = cut(image, tuple(event["best_bbox"]), 224)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return data.tobytes()


def test_a_jpeg_of_an_events_crop_finds_that_event_first(walked):
    service, events = walked
    a_bottom = events["a"][1]
    with service.client() as client:
        picture = crop_jpeg(client, a_bottom)
        headers = {"content-type": "image/jpeg"}
        anywhere = client.post("/api/v1/events/search", content=picture, headers=headers)
        assert anywhere.status_code == 200, anywhere.text
        hits = SearchAnswer.model_validate(anywhere.json()).events
        twins = {a_bottom["id"], events["b"][1]["id"]}
        assert {hits[0].id, hits[1].id} == twins, [(h.id, h.score) for h in hits]
        params = {"session_id": a_bottom["session_id"]}
        in_a = client.post("/api/v1/events/search", content=picture, headers=headers, params=params).json()
        assert in_a["events"][0]["id"] == a_bottom["id"]


def test_an_identity_lists_its_appearances_across_sessions_oldest_first(walked):
    service, events = walked
    a_top, b_top = events["a"][0], events["b"][0]
    with service.client() as client:
        answer = client.get(f"/api/v1/identities/{a_top['global_id']}")
        assert answer.status_code == 200, answer.text
        body = IdentityAnswer.model_validate(answer.json()).model_dump()
        ids = [e["id"] for e in body["events"]]
        assert {a_top["id"], b_top["id"]} <= set(ids)
        starts = [(e["start_time"], e["id"]) for e in body["events"]]
        assert starts == sorted(starts)
        assert all(e["global_id"] == a_top["global_id"] for e in body["events"])
        # and pages of one walk through them in the same order
        first = client.get(f"/api/v1/identities/{a_top['global_id']}", params={"limit": 1}).json()
        rest = client.get(f"/api/v1/identities/{a_top['global_id']}", params={"cursor": first["next_cursor"]}).json()
        assert [e["id"] for e in first["events"] + rest["events"]] == ids
        missing = client.get("/api/v1/identities/no-such-identity")
        assert missing.status_code == 404 and missing.json()["error"] == "identity_not_found"


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG whose frame header says it is width x height: a decompression bomb's shape."""
    ok, data = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))
    data = bytearray(data.tobytes())
    i = 2
    while data[i + 1] not in (0xC0, 0xC2):
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    data[i + 5 : i + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


@pytest.mark.parametrize(
    ("params", "status", "code", "words"),
    [
        ({}, 422, "invalid_request", "exactly one of q"),
        ({"q": "red", "similar_to": "0" * 32}, 422, "invalid_request", "exactly one of q"),
        ({"q": "   "}, 422, "invalid_request", "q:"),
        ({"q": "x" * 257}, 422, "invalid_request", "q:"),
        ({"q": "red\x00"}, 422, "invalid_request", "control characters"),
        ({"similar_to": "0" * 32}, 404, "event_not_found", "No event"),
        ({"similar_to": "../etc"}, 404, "event_not_found", "32 hex digits"),
        ({"q": "red", "cursor": "not-a-cursor"}, 422, "invalid_cursor", "cursor"),
        ({"q": "red", "limit": 101}, 422, "invalid_request", "limit"),
        ({"q": "red", "min_confidence": 2}, 422, "invalid_request", "min_confidence"),
        ({"q": "red", "after": 10, "before": 5}, 422, "invalid_request", "after"),
        ({"q": "red", "label": ["bad\u200bname"]}, 422, "invalid_request", "label"),
    ],
)
def test_bad_searches_are_refused_in_words(walked, params, status, code, words):
    service, _ = walked
    with service.client() as client:
        answer = client.get("/api/v1/events/search", params=params)
    assert (answer.status_code, answer.json()["error"]) == (status, code), answer.text
    assert words in answer.json()["detail"]


def test_bad_pictures_are_refused_in_words_before_they_are_decoded(walked):
    service, _ = walked
    headers = {"content-type": "image/jpeg"}
    ok, png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
    cases = [
        (b"", 400, "invalid_image", "empty"),
        (png.tobytes(), 400, "invalid_image", "not a JPEG"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF" + b"\x00" * 20, 400, "invalid_image", "not a JPEG"),
        (jpeg_claiming(60000, 60000), 413, "image_too_large", "60000x60000"),
        (jpeg_claiming(16, 16)[:-40], 400, "invalid_image", "could not be decoded"),
        (b"\xff\xd8" + b"\x00" * (2048 * 1024 + 1), 413, "body_too_large", "SEARCH_IMAGE_MAX_KB"),
    ]
    with service.client() as client:
        for body, status, code, words in cases:
            answer = client.post("/api/v1/events/search", content=body, headers=headers)
            assert (answer.status_code, answer.json()["error"]) == (status, code), (body[:20], answer.text)
            assert words in answer.json()["detail"], answer.text


# -- while the encoder loads, when it failed, when search is off ------------------------------------


def test_search_answers_503_in_words_while_the_encoder_loads_then_works(tiny_model_dir, tiny_siglip, tmp_path):
    # Given an encoder whose loading the test holds back (the route under test, not the loader)
    release = threading.Event()

    def slow_encoder(settings):
        release.wait(60)
        return embedder_from_settings(settings)

    settings = search_settings(tiny_model_dir, tiny_siglip, tmp_path / "data")
    service = run_service(settings, detector_factory=lambda _s: ScheduledWalks(), embedder_factory=slow_encoder)
    try:
        with service.client() as client:
            # When it searches meanwhile, then 503 says the encoder is loading, and so does /ready
            for params in ({"q": "red"}, {"similar_to": "0" * 32}):
                answer = client.get("/api/v1/events/search", params=params)
                assert (answer.status_code, answer.json()["error"]) == (503, "encoder_loading"), answer.text
                assert "loaded" in answer.json()["detail"]
            assert client.get("/ready").json()["search"]["state"] == "loading"
            # and a parameter that is wrong is named first
            assert client.get("/api/v1/events/search", params={"q": ""}).status_code == 422
            # When the encoder is there, then search answers (nothing stored yet) and says its weights are random
            release.set()
            assert wait_until(lambda: search_ready(client), timeout=60)
            answer = client.get("/api/v1/events/search", params={"q": "red"})
            assert answer.status_code == 200, answer.text
            assert answer.json()["events"] == [] and answer.json()["next_cursor"] is None
            ready = ReadyAnswer.model_validate(client.get("/ready").json())
            status = ready.search.model_dump()
            assert status["trained"] is False and "random weights" in status["detail"]
    finally:
        release.set()
        service.stop()


def test_search_says_why_when_the_encoder_failed_or_search_is_off(tiny_model_dir, tiny_siglip, tmp_path):
    def broken_encoder(_settings):
        raise RuntimeError("EMBED_MODEL holds no weights we can read")

    settings = search_settings(tiny_model_dir, tiny_siglip, tmp_path / "failed")
    service = run_service(settings, detector_factory=lambda _s: ScheduledWalks(), embedder_factory=broken_encoder)
    try:
        with service.client() as client:
            assert wait_until(lambda: client.get("/ready").json()["search"]["state"] == "failed", timeout=30)
            answer = client.get("/api/v1/events/search", params={"q": "red"})
            assert (answer.status_code, answer.json()["error"]) == (503, "encoder_failed"), answer.text
            assert "no weights we can read" in answer.json()["detail"]
    finally:
        service.stop()

    settings = search_settings(tiny_model_dir, tiny_siglip, tmp_path / "off", embed_enabled="false")
    service = run_service(settings, detector_factory=lambda _s: ScheduledWalks())
    try:
        with service.client() as client:
            for answer in (
                client.get("/api/v1/events/search", params={"q": "red"}),
                client.post("/api/v1/events/search", content=crop_bytes(), headers={"content-type": "image/jpeg"}),
                client.post("/api/v1/events/reindex"),
                client.get("/api/v1/events/reindex"),
            ):
                assert (answer.status_code, answer.json()["error"]) == (503, "search_unavailable"), answer.text
                assert "EMBED_ENABLED=false" in answer.json()["detail"]
            assert client.get("/ready").json()["search"] == {
                "enabled": False,
                "state": "off",
                "model_id": None,
                "trained": None,
                "detail": "Search is off: EMBED_ENABLED=false",
            }
    finally:
        service.stop()


def crop_bytes() -> bytes:
    return cv2.imencode(".jpg", np.full((32, 32, 3), 128, np.uint8))[1].tobytes()
