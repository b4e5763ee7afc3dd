"""POST /api/v1/ask, GET /api/v1/vlm and the VLM's figures in /ready and /metrics, through the real
service under uvicorn: the GStreamer camera (the static SMPTE bars), the scripted detector (three
people walking across at times the test sets, each in a band of rows of its own), the tiny
random-weight SigLIP loaded through the real loader for recall, and a scripted VLM (tests/scripted_vlm.py)
in place of the provider, since what is under test is what calls it: recall, snapshots, batches,
verdicts, ranking, the bound on asks, the words of every refusal.

The scripted model knows the events only by what it is shown: each request's picture is matched to
the nearest of the three events' snapshots (the walks' boxes are drawn in different bands, so the
snapshots differ there), and it says yes for the middle band's event, no for the top's, and words
without a verdict for the bottom's.
"""

from __future__ import annotations

import json
import threading
import time

import cv2
import httpx
import numpy as np
import pytest

from rtdetr_service.core.vlm import VERDICT_INSTRUCTIONS, VlmError, VlmRequest
from rtdetr_service.web.schemas import AskAnswer, ReadyAnswer, VlmAnswerOut

from scripted_detector import ScheduledWalks
from scripted_vlm import ScriptedVlm
from support import make_settings, run_service, running_camera, start_session, wait_until
from tiny_model import save_tiny_siglip

pytestmark = pytest.mark.timeout(300)

BANDS = {"top": (0.05, 0.30), "middle": (0.38, 0.62), "bottom": (0.70, 0.98)}
SECRET_KEY = "sk-ask-test-SECRET-7f3a9c21e8"
SECRET_URL = "http://someone:pw-SECRET-44d1@127.0.0.1:9/v1"
MARKUP = '<img src=x onerror="window.__pwned=1">'
IMAGE_MAX_PX = 128  # below the camera's 320x240: every snapshot is shrunk before it is sent


class PoolShapedVlm(ScriptedVlm):
    """The scripted model with a status shaped as a hosted provider's key pool, and one slip in it (a
    key inside a reason), so what the service shows of a provider's status is tested, not assumed."""

    model_id = "scripted-pool-vlm"

    def status(self) -> dict:
        with self._lock:
            handed = len(self.requests)
        return {
            "provider": "openai",
            "model": self.model_id,
            "trained": True,
            "keys": [
                {"label": "key-1", "state": "ok", "in_flight": 0, "counts": {"requests": handed, "ok": handed}},
                {
                    "label": "key-2",
                    "state": "disabled",
                    "reason": f"refused with 401: Bearer {SECRET_KEY}",
                    "in_flight": 0,
                    "counts": {"requests": 1, "401": 1},
                },
                {"label": SECRET_KEY, "state": "ok", "counts": {"ok": 1}},  # a label that is no label
            ],
            "requests": handed,
        }


def decoded(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image.astype(np.float32)


class Oracle:
    """Which event a request's picture shows: the nearest of the events' snapshots at its size."""

    def __init__(self) -> None:
        self.snapshots: dict[str, np.ndarray] = {}  # band -> snapshot pixels
        self.seen: list[dict] = []

    def band(self, request: VlmRequest) -> str:
        seen = decoded(request.images[0])
        height, width = seen.shape[:2]
        distance = {
            band: float(np.abs(cv2.resize(shot, (width, height), interpolation=cv2.INTER_AREA) - seen).mean())
            for band, shot in self.snapshots.items()
        }
        self.seen.append(distance)
        return min(distance, key=distance.get)

    def script(self, request: VlmRequest) -> str | VlmError:
        band = self.band(request)
        if band == "middle":
            verdict = {"answer": "yes", "score": 0.9, "reason": f"a ladder {MARKUP}"}
            return f"Sure. {json.dumps(verdict)}"
        if band == "top":
            return '```json\n{"answer": "no", "score": 0.2, "reason": "nothing carried"}\n```'
        return f"I cannot tell {MARKUP}"


@pytest.fixture(scope="module")
def tiny_siglip(tmp_path_factory):
    return save_tiny_siglip(tmp_path_factory.mktemp("embed") / "tiny-siglip")


def ask_settings(tiny_model_dir, tiny_siglip, data_dir, **overrides):
    values = dict(
        data_dir=data_dir,
        event_end_after_s=1.0,
        track_keep_s=0.5,
        track_min_hits=2,
        embed_enabled="true",
        embed_model=str(tiny_siglip),
        embed_backend="torch",
        embed_early_s=1.0,
        embed_crops_per_event=0,
        vlm_provider="openai",
        vlm_api_keys=SECRET_KEY,
        vlm_base_url=SECRET_URL,
        vlm_image_max_px=IMAGE_MAX_PX,
        vlm_batch=2,
        ask_concurrency=1,
    )
    values.update(overrides)
    return make_settings(tiny_model_dir, **values)


@pytest.fixture(scope="module")
def footage(tiny_model_dir, tiny_siglip, tmp_path_factory):
    """One camera ("yard"), three walks in three bands, ended, embedded; the scripted VLM knows their snapshots."""
    detector = ScheduledWalks(walk_s=3.0)
    oracle = Oracle()
    vlm = PoolShapedVlm(oracle.script)
    settings = ask_settings(tiny_model_dir, tiny_siglip, tmp_path_factory.mktemp("ask"))
    with running_camera(pattern="smpte") as camera:
        service = run_service(settings, detector_factory=lambda _s: detector, vlm_factory=lambda _s: vlm)
        try:
            with service.client() as client:
                ready = lambda: client.get("/ready").json().get("search", {}).get("state") == "ready"  # noqa: E731
                assert wait_until(ready, timeout=60), client.get("/ready").json()
                session_id = start_session(client, camera.url, camera="yard")["session_id"]
                now = time.time()
                for i, band in enumerate(BANDS.values()):
                    detector.add(now + 1.5 + 4.5 * i, *band)

                def ended() -> list[dict]:
                    events = client.get("/api/v1/events", params={"session_id": session_id}).json()["events"]
                    return sorted((e for e in events if not e["active"]), key=lambda e: e["start_time"])

                assert wait_until(lambda: len(ended()) >= 3, timeout=40), client.get("/api/v1/events").json()
                client.post("/api/v1/video/stop", json={"session_id": session_id})
                events = dict(zip(BANDS, ended(), strict=False))
                for band, event in events.items():
                    oracle.snapshots[band] = decoded(client.get(event["snapshot_url"]).content)
                # every event has its vector before anything is asked
                assert wait_until(
                    lambda: service.app.state.vector_index.count(service.app.state.embedder.get().model_id) >= 3,
                    timeout=30,
                )
            yield service, vlm, events
        finally:
            service.stop()


def ask(client: httpx.Client, **body) -> httpx.Response:
    return client.post("/api/v1/ask", json={"question": "is someone carrying a ladder?", **body})


def test_ask_checks_each_candidate_and_ranks_by_the_models_score(footage):
    service, vlm, events = footage
    before = len(vlm.requests)
    with service.client() as client:
        answer = ask(client, top_k=3)
        assert answer.status_code == 200, answer.text
        body = AskAnswer.model_validate(answer.json()).model_dump()
    # Then every candidate was shown to the model once, as a question about its snapshot, shrunk
    sent = vlm.requests[before:]
    assert len(sent) == 3 and all(r.purpose == "ask" and len(r.images) == 1 for r in sent)
    assert all("is someone carrying a ladder?" in r.prompt and r.prompt.endswith(VERDICT_INSTRUCTIONS) for r in sent)
    assert all(max(decoded(r.images[0]).shape[:2]) <= IMAGE_MAX_PX for r in sent)
    assert vlm.batches[-2:] == [2, 1]  # VLM_BATCH=2: three candidates in two calls
    # and the answers come ranked by the model's score, the one without a verdict last with score null
    results = body["results"]
    assert [r["event_id"] for r in results] == [events[b]["id"] for b in ("middle", "top", "bottom")], (
        [(r["event_id"], r["answer"]) for r in results],
        {b: e["id"] for b, e in events.items()},
        vlm.script.__self__.seen[-3:],
    )
    assert [(r["answer"], r["score"]) for r in results] == [("yes", 0.9), ("no", 0.2), (None, None)]
    assert results[0]["reason"] == f"a ladder {MARKUP}"  # the model's words, as words
    assert results[2]["reason"] == f"I cannot tell {MARKUP}"
    assert body["checked"] == 3 and body["failed"] == 0
    assert body["model_id"] == "scripted-pool-vlm" and body["trained"] is True
    assert any("random weights" in n for n in body["notices"])  # the encoder's: recall order means nothing
    middle = results[0]
    assert (middle["camera"], middle["label"]) == ("yard", "person")
    assert middle["start"] == events["middle"]["start_time"] and middle["end"] == events["middle"]["end_time"]
    assert middle["snapshot_url"] == events["middle"]["snapshot_url"]
    # the clip as the events API names it: the session recorded (RECORD=events by default)
    assert middle["clip_url"] == events["middle"]["clip_url"] and events["middle"]["has_clip"] is True
    assert all(-1 <= r["recall_score"] <= 1 for r in results)


def test_ask_keeps_to_top_k_recall_limit_and_filters(footage):
    service, vlm, events = footage
    with service.client() as client:
        first = ask(client, top_k=1).json()
        assert [r["event_id"] for r in first["results"]] == [events["middle"]["id"]] and first["checked"] == 3
        # recall_limit bounds what the model is asked at all
        before = len(vlm.requests)
        few = ask(client, recall_limit=2).json()
        assert few["checked"] == 2 and len(vlm.requests) - before == 2 and len(few["results"]) == 2
        # filters hold inside the recall: another camera, a class nobody is, a time after the first walk
        for body in ({"cameras": ["gate"]}, {"labels": ["car"]}):
            nothing = ask(client, **body).json()
            assert nothing["results"] == [] and nothing["checked"] == 0, nothing
            assert any("No stored event matches" in n for n in nothing["notices"])
        assert ask(client, cameras=["yard"], labels=["person"]).json()["checked"] == 3
        later = ask(client, after=events["top"]["start_time"] + 0.5).json()
        assert {r["event_id"] for r in later["results"]} == {events["middle"]["id"], events["bottom"]["id"]}


def test_a_candidate_the_model_cannot_answer_is_counted_and_said(footage):
    service, vlm, events = footage
    script = vlm.script
    oracle_band = script.__self__.band
    vlm.script = (
        lambda r: VlmError("every key is cooling down", "rate_limited") if oracle_band(r) == "top" else script(r)
    )
    try:
        with service.client() as client:
            body = ask(client).json()
    finally:
        vlm.script = script
    assert body["checked"] == 2 and body["failed"] == 1, body
    assert events["top"]["id"] not in {r["event_id"] for r in body["results"]}
    assert any("could not answer 1 candidate" in n and "cooling down" in n for n in body["notices"])


@pytest.mark.parametrize(
    ("body", "status", "code", "words"),
    [
        ({}, 422, "invalid_request", "question"),
        ({"question": ""}, 422, "invalid_request", "question"),
        ({"question": "   "}, 422, "invalid_request", "not only spaces"),
        ({"question": "x" * 501}, 422, "invalid_request", "question"),
        ({"question": "a ladder?\x00"}, 422, "invalid_request", "control characters"),
        ({"question": "q", "top_k": 0}, 422, "invalid_request", "top_k"),
        ({"question": "q", "top_k": 51}, 422, "invalid_request", "top_k"),
        ({"question": "q", "recall_limit": 201}, 422, "invalid_request", "recall_limit"),
        ({"question": "q", "after": 10, "before": 5}, 422, "invalid_request", "after"),
        ({"question": "q", "cameras": ["bad\u200bname"]}, 422, "invalid_request", "cameras"),
        ({"question": "q", "labels": ["person"] * 21}, 422, "invalid_request", "labels"),
        ({"question": "q", "everything": True}, 422, "invalid_request", "everything"),
    ],
)
def test_bad_asks_are_refused_in_words(footage, body, status, code, words):
    service, vlm, _ = footage
    before = len(vlm.requests)
    with service.client() as client:
        answer = client.post("/api/v1/ask", json=body)
    assert (answer.status_code, answer.json()["error"]) == (status, code), answer.text
    assert words in answer.json()["detail"]
    assert len(vlm.requests) == before


def test_not_json_is_refused(footage):
    service, _, _ = footage
    with service.client() as client:
        answer = client.post("/api/v1/ask", content=b"{question", headers={"content-type": "application/json"})
    assert (answer.status_code, answer.json()["error"]) == (400, "invalid_json"), answer.text


def test_one_ask_too_many_is_refused_at_once_and_the_place_comes_back(footage):
    service, vlm, _ = footage
    first: dict = {}
    vlm.stall()
    try:
        with service.client() as client:
            worker = threading.Thread(target=lambda: first.update(answer=ask(client, recall_limit=1)))
            worker.start()
            # Given one ask held by a stalled model (ASK_CONCURRENCY=1)
            assert wait_until(lambda: client.get("/api/v1/vlm").json()["asks"]["running"] == 1, timeout=20)
            # When another comes, then it is refused at once, in words
            second = ask(client, recall_limit=1)
            assert (second.status_code, second.json()["error"]) == (429, "too_many_asks"), second.text
            assert "ASK_CONCURRENCY=1" in second.json()["detail"]
            vlm.resume()
            worker.join(30)
            assert first["answer"].status_code == 200, first["answer"].text
            # and once the first has its answer, the next one runs
            assert wait_until(lambda: client.get("/api/v1/vlm").json()["asks"]["running"] == 0, timeout=20)
            assert ask(client, recall_limit=1).status_code == 200
            assert "rtdetr_asks_refused_total 1.0" in client.get("/metrics").text
    finally:
        vlm.resume()


def test_the_vlm_status_ready_and_metrics_show_keys_by_label_never_a_key(footage):
    service, _, _ = footage
    with service.client() as client:
        answer = client.get("/api/v1/vlm")
        ready = client.get("/ready")
        metrics = client.get("/metrics")
    assert answer.status_code == 200, answer.text
    status = VlmAnswerOut.model_validate(answer.json()).model_dump()
    assert (status["state"], status["provider"], status["model_id"]) == ("ready", "openai", "scripted-pool-vlm")
    keys = status["provider_status"]["keys"]
    assert [k["label"] for k in keys][:2] == ["key-1", "key-2"] and keys[1]["state"] == "disabled"
    assert keys[1]["reason"] == "[redacted]"  # the provider's slip, caught
    assert status["asks"]["limit"] == 1
    assert ReadyAnswer.model_validate(ready.json()).vlm.state == "ready"
    text = metrics.text
    assert 'rtdetr_vlm_key_state{key="key-2",state="disabled"} 1.0' in text
    assert 'rtdetr_vlm_key_state{key="key-1",state="ok"} 1.0' in text
    assert 'rtdetr_vlm_key_requests_total{key="key-2",outcome="401"} 1.0' in text
    assert "rtdetr_vlm_ready 1.0" in text
    for page in (answer.text, ready.text, text):
        for secret in (SECRET_KEY, "SECRET", "pw-SECRET-44d1"):
            assert secret not in page


# -- while the VLM loads, when it failed, when it is off ---------------------------------------------


def test_ask_answers_503_in_words_while_the_vlm_loads_then_works(tiny_model_dir, tiny_siglip, tmp_path):
    release = threading.Event()

    def slow_vlm(_settings):
        release.wait(60)
        return ScriptedVlm()

    settings = ask_settings(tiny_model_dir, tiny_siglip, tmp_path / "data")
    service = run_service(settings, detector_factory=lambda _s: ScheduledWalks(), vlm_factory=slow_vlm)
    try:
        with service.client() as client:
            answer = ask(client)
            assert (answer.status_code, answer.json()["error"]) == (503, "vlm_loading"), answer.text
            assert "loading" in answer.json()["detail"]
            assert client.get("/ready").json()["vlm"]["state"] == "loading"
            assert client.get("/api/v1/vlm").json()["provider_status"] is None
            assert "rtdetr_vlm_ready 0.0" in client.get("/metrics").text
            # a wrong question is named first
            assert ask(client, question="").status_code == 422
            release.set()
            assert wait_until(lambda: client.get("/ready").json()["vlm"]["state"] == "ready", timeout=30)
            assert wait_until(lambda: client.get("/ready").json()["search"]["state"] == "ready", timeout=60)
            answer = ask(client)
            assert answer.status_code == 200, answer.text
            assert answer.json()["results"] == [] and answer.json()["checked"] == 0
    finally:
        release.set()
        service.stop()


def test_ask_says_why_when_the_vlm_failed_or_is_off(tiny_model_dir, tiny_siglip, tmp_path):
    def broken(_settings):
        raise RuntimeError("VLM_BASE_URL answers nothing we understand")

    settings = ask_settings(tiny_model_dir, tiny_siglip, tmp_path / "failed", embed_enabled="false")
    service = run_service(settings, detector_factory=lambda _s: ScheduledWalks(), vlm_factory=broken)
    try:
        with service.client() as client:
            assert wait_until(lambda: client.get("/ready").json()["vlm"]["state"] == "failed", timeout=30)
            answer = ask(client)
            assert (answer.status_code, answer.json()["error"]) == (503, "vlm_unavailable"), answer.text
            assert "answers nothing we understand" in answer.json()["detail"]
    finally:
        service.stop()

    settings = ask_settings(tiny_model_dir, tiny_siglip, tmp_path / "off", embed_enabled="false", vlm_provider="off")
    service = run_service(settings, detector_factory=lambda _s: ScheduledWalks())
    try:
        with service.client() as client:
            answer = ask(client)
            assert (answer.status_code, answer.json()["error"]) == (503, "vlm_unavailable"), answer.text
            assert "VLM_PROVIDER=off" in answer.json()["detail"]
            assert client.get("/ready").json()["vlm"] == {
                "enabled": False,
                "state": "off",
                "provider": "off",
                "model_id": None,
                "trained": None,
                "detail": answer.json()["detail"],
            }
            # with the VLM there but search off, the ask says recall is what is missing
    finally:
        service.stop()

    settings = ask_settings(tiny_model_dir, tiny_siglip, tmp_path / "nosearch", embed_enabled="false")
    service = run_service(settings, detector_factory=lambda _s: ScheduledWalks(), vlm_factory=lambda _s: ScriptedVlm())
    try:
        with service.client() as client:
            assert wait_until(lambda: client.get("/ready").json()["vlm"]["state"] == "ready", timeout=30)
            answer = ask(client)
            assert (answer.status_code, answer.json()["error"]) == (503, "search_unavailable"), answer.text
            assert "recalls events by the question's words" in answer.json()["detail"]
            assert "EMBED_ENABLED=false" in answer.json()["detail"]
    finally:
        service.stop()


def test_the_real_openai_providers_keys_show_by_label_and_state_never_the_key(tiny_model_dir, tmp_path):
    # Given the service with the `openai` provider against a real chat-completions server, whose second
    # key is refused with a 401 that echoes it (as OpenAI's own answer does)
    from rtdetr_service.inference.vlm.openai import OpenAiVlm

    from chat_server import ChatServer, refused

    keys = ("sk-ask-first-0c4e7d91a2b35f60", "sk-ask-second-9e8d7c6b5a493827")
    with ChatServer(keys) as server:
        server.script(keys[1], refused(401, echo=keys[1]))
        settings = make_settings(
            tiny_model_dir,
            data_dir=tmp_path / "data",
            vlm_provider="openai",
            vlm_model="test-vlm",
            vlm_base_url=server.base_url,
            vlm_api_keys=",".join(keys),
            vlm_timeout_s=10.0,
        )
        service = run_service(settings, detector_factory=lambda _s: ScheduledWalks(), vlm_factory=OpenAiVlm)
        try:
            with service.client() as client:
                assert wait_until(lambda: client.get("/ready").json()["vlm"]["state"] == "ready", timeout=30)
                vlm = service.app.state.vlm.get()
                # When it is asked enough for both keys to be tried
                answers = vlm.generate([VlmRequest("hello?", purpose="rule") for _ in range(4)])
                assert all(not isinstance(a, VlmError) for a in answers), answers
                status = client.get("/api/v1/vlm").json()
                metrics = client.get("/metrics").text
                ready = client.get("/ready").text
        finally:
            service.stop()
    # Then the refused key shows as disabled, by its label, in the status and in /metrics
    by_label = {k["label"]: k for k in status["provider_status"]["keys"]}
    assert by_label["key-2"]["state"] == "disabled" and by_label["key-1"]["state"] == "ok", by_label
    assert 'rtdetr_vlm_key_state{key="key-2",state="disabled"} 1.0' in metrics
    assert 'rtdetr_vlm_key_state{key="key-1",state="ok"} 1.0' in metrics
    # and no key, nor a piece of one, appears anywhere
    for page in (str(status), metrics, ready):
        for key in keys:
            assert key not in page and key[8:20] not in page
