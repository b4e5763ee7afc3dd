"""Descriptions and rules' questions end to end: the real service and the GStreamer camera, a scripted
detector (people walking across) and the scripted vision-language model in place of a provider
(VLM_PROVIDER=openai, so the app's loader runs; `vlm_factory` builds the script), everything else real:
rules with `ask`, the VLM stage, the event store on SQLite, a signed webhook, the WebSocket, the API."""

from __future__ import annotations

import copy
import json
import threading
import time

import pytest
from websockets.sync.client import connect

from rtdetr_service.core.vlm import VlmError

from chat_server import ANONYMOUS, ChatServer, Reply
from scripted_detector import WALK_ZONES, WalkingPeople
from scripted_vlm import ScriptedVlm, default_script
from servers import WebhookReceiver
from support import make_settings, run_service, start_session
from support import wait_until as _wait
from tiny_model import save_tiny_siglip, save_tiny_vlm

PARCEL = "Is the person carrying a parcel?"
FAILS = "Is anyone there?"


def asking_zones() -> dict:
    """The walkers' zones, the enter rule asking about a parcel, the crossing asking what the model fails at."""
    zones = copy.deepcopy(WALK_ZONES)
    zones["rules"][0]["ask"] = PARCEL
    zones["rules"][1]["ask"] = FAILS
    return zones


def script(request):
    if FAILS in request.prompt:
        return VlmError("every key is cooling down after a 429", "rate_limited")
    if request.purpose == "describe":
        return "A person walking. " * 500  # far past the bound
    return default_script(request)


@pytest.fixture
def vlm_settings(tiny_model_dir, tmp_path):
    def settings(**overrides):
        values = dict(
            data_dir=tmp_path / "data",
            event_end_after_s=1.0,
            track_keep_s=0.5,
            track_min_hits=2,
            vlm_provider="openai",
            vlm_answer_max_chars=300,
        )
        return make_settings(tiny_model_dir, **(values | overrides))

    return settings


def _events(client, session_id: str) -> list[dict]:
    return client.get("/api/v1/events", params={"session_id": session_id}).json()["events"]


def test_a_described_session_and_a_rule_that_asks_get_their_words_stored_and_sent(vlm_settings, rtsp_url):
    # given the service with a webhook, a scripted model, and a session that describes people after
    # 0.5 s live and whose rules ask a question (one the model answers, one it fails)
    receiver = WebhookReceiver("vlm-secret")
    vlm = ScriptedVlm(script)
    settings = vlm_settings(webhook={"urls": receiver.url, "secret": receiver.secret})
    service = run_service(settings, detector_factory=lambda _s: WalkingPeople(), vlm_factory=lambda _s: vlm)
    try:
        with service.client() as client:
            body = start_session(
                client, rtsp_url, camera="cam1", zones=asking_zones(), alert=None, describe={"after_s": 0.5}
            )
            session_id = body["session_id"]
            status = client.get(f"/api/v1/video/status/{session_id}").json()
            assert status["describe"] == {"labels": None, "prompt": None, "after_s": 0.5}
            zones = client.get(f"/api/v1/video/sessions/{session_id}/zones").json()["zones"]
            assert [r["ask"] for r in zones["rules"]] == [PARCEL, FAILS]
            answers, alerts = [], []
            # when a viewer watches a walk
            with connect(service.ws_base + body["websocket_path"], open_timeout=10) as ws:
                deadline = time.monotonic() + 12
                while time.monotonic() < deadline and {a["rule"] for a in answers} != {"someone-right", "passing"}:
                    message = json.loads(ws.recv(timeout=10))
                    if message["type"] == "answer":
                        answers.append(message["data"])
                    elif message["type"] == "alert":
                        alerts.append(message["data"])
            # then the viewer got each rule's answer: the verdict parsed, or the error in words
            by_rule = {a["rule"]: a for a in answers}
            assert by_rule["someone-right"]["answer"] == "yes" and by_rule["someone-right"]["score"] == 0.9
            assert by_rule["someone-right"]["question"] == PARCEL and by_rule["someone-right"]["error"] is None
            assert by_rule["passing"]["answer"] is None
            assert by_rule["passing"]["error"] == "every key is cooling down after a 429"
            # (an answer may come for an alert raised before the viewer connected)
            assert alerts and {a["ask"] for a in alerts if a["rule"]} <= {PARCEL, FAILS}

            # and an ended walk is stored with its description (bounded) and both answers, which the
            # publisher's later updates and the end did not wipe
            def ended_and_said():
                return next(
                    (
                        e
                        for e in _events(client, session_id)
                        if not e["active"] and e["description"] and len(e["answers"]) == 2
                    ),
                    None,
                )

            event = _wait(ended_and_said, timeout=20)
            assert event, _events(client, session_id)
            assert len(event["description"]) <= 300 and event["description_model"] == "scripted-vlm"
            stored = client.get(f"/api/v1/events/{event['id']}").json()
            assert stored["description"] == event["description"]
            assert {a["rule"]: a["answer"] for a in stored["answers"]} == {"someone-right": "yes", "passing": None}
            # each event was described once at most (after 0.5 s in view, not again at its end)
            describes = [r for r in vlm.requests if r.purpose == "describe"]
            assert 1 <= len(describes) <= len(_events(client, session_id))

            # and the webhook got the update that brought the description, and the answers on their own
            def bodies():
                return [json.loads(r["body"]) for r in receiver.received()]

            assert _wait(
                lambda: any(
                    b["schema"] == "rtdetr.event.v1" and b["after"]["id"] == event["id"] and b["after"]["description"]
                    for b in bodies()
                ),
                timeout=10,
            )
            assert {b["answer"]["rule"] for b in bodies() if b["schema"] == "rtdetr.answer.v1"} >= {
                "someone-right",
                "passing",
            }
            said = [
                b
                for b in bodies()
                if b["schema"] == "rtdetr.event.v1" and b["after"]["id"] == event["id"] and b["after"]["description"]
            ]
            assert said[0]["before"]["description"] is None
            # and the stage's counts are in the outputs' status and /metrics
            outputs = {o["name"]: o for o in client.get("/api/v1/outputs").json()["outputs"]}
            purposes = outputs["vlm"]["purposes"]
            assert purposes["rule"]["answered"] >= 1 and purposes["rule"]["failed"] >= 1
            assert purposes["describe"]["answered"] >= 1
            metrics = client.get("/metrics").text
            assert 'rtdetr_vlm_answered_total{purpose="describe"}' in metrics
    finally:
        service.stop()
        receiver.close()


def test_an_undescribed_session_without_questions_asks_nothing(vlm_settings, rtsp_url):
    vlm = ScriptedVlm()
    service = run_service(vlm_settings(), detector_factory=lambda _s: WalkingPeople(), vlm_factory=lambda _s: vlm)
    try:
        with service.client() as client:
            session_id = start_session(client, rtsp_url, zones=WALK_ZONES, alert=None)["session_id"]
            assert _wait(lambda: any(not e["active"] for e in _events(client, session_id)), timeout=20)
            assert vlm.requests == []
            assert all(e["description"] is None and e["answers"] == [] for e in _events(client, session_id))
    finally:
        service.stop()


def test_a_stalled_model_never_slows_the_publisher_and_its_drops_are_counted(vlm_settings, rtsp_url):
    # given a model that never answers, a small queue, and two sessions of one camera: one that
    # describes every event and asks at every rule, one that asks nothing
    vlm = ScriptedVlm()
    vlm.stall()
    settings = vlm_settings(vlm_queue_size=1, vlm_workers=1)
    detector = WalkingPeople(rows=3, walk_s=2.0, period_s=3.0)
    service = run_service(settings, detector_factory=lambda _s: detector, vlm_factory=lambda _s: vlm)
    try:
        with service.client() as client:
            asking = start_session(
                client, rtsp_url, zones=asking_zones(), alert=None, describe={"after_s": 0.2}, enable_drawing=True
            )["session_id"]
            plain = start_session(client, rtsp_url, zones=WALK_ZONES, alert=None, enable_drawing=True)["session_id"]

            # when they run for 8 s side by side
            done = _published_side_by_side(client, asking, plain)
            # then the asking session published as many frames as the other (within 20 %)
            assert done[plain] > 0 and done[asking] >= 0.8 * done[plain], done
            # and the stage, stuck on its one request, dropped the rest, counted by purpose
            vlm_out = next(o for o in client.get("/api/v1/outputs").json()["outputs"] if o["name"] == "vlm")
            assert vlm_out["in_flight"] == 1 and vlm_out["queued"] <= 1 and vlm_out["dropped"] > 0, vlm_out
            assert vlm_out["purposes"]["rule"]["dropped"] + vlm_out["purposes"]["describe"]["dropped"] > 0
            assert vlm_out["state"] == "degraded"
            assert "rtdetr_vlm_dropped_total" in client.get("/metrics").text
    finally:
        stopper = threading.Thread(target=service.stop, daemon=True)
        stopper.start()
        stopper.join(30)
        vlm.resume()


def test_a_stalled_openai_endpoint_never_slows_the_publisher(vlm_settings, rtsp_url):
    # given the real `openai` provider against a local chat-completions server that holds every request
    # and never answers, a short bound on each request, and two sessions of one camera: one that
    # describes every event and asks at every rule, one that asks nothing
    with ChatServer() as server:
        server.script(ANONYMOUS, Reply(stall=True))
        settings = vlm_settings(
            vlm_base_url=server.base_url, vlm_model="stand-in", vlm_timeout_s=3.0, vlm_retries=0, vlm_queue_size=4
        )
        detector = WalkingPeople(rows=3, walk_s=2.0, period_s=3.0)
        service = run_service(settings, detector_factory=lambda _s: detector)  # the app's own vlm_factory
        try:
            with service.client() as client:
                asking = start_session(
                    client, rtsp_url, zones=asking_zones(), alert=None, describe={"after_s": 0.2}, enable_drawing=True
                )["session_id"]
                plain = start_session(client, rtsp_url, zones=WALK_ZONES, alert=None, enable_drawing=True)["session_id"]

                # when they run for 8 s side by side while the endpoint stalls
                done = _published_side_by_side(client, asking, plain)
                # then the asking session published as many frames as the other (within 20 %)
                assert done[plain] > 0 and done[asking] >= 0.8 * done[plain], done
                # and the endpoint did get the questions, which ended as timeouts said in words
                assert server.seen, "no request reached the endpoint"
                assert _wait(lambda: _vlm_output(client)["failed"] > 0, timeout=10), _vlm_output(client)
                status = client.get("/api/v1/vlm").json()
                assert status["provider_status"]["keys"][0]["counts"]["timeouts"] > 0, status
        finally:
            stopper = threading.Thread(target=service.stop, daemon=True)
            stopper.start()
            stopper.join(30)


def _published_side_by_side(client, asking: str, plain: str, seconds: float = 8.0) -> dict[str, int]:
    """Frames each session published over `seconds`, after 2 s to settle."""

    def published(session_id: str) -> int:
        return client.get(f"/api/v1/video/status/{session_id}").json()["stats"]["frames_published"]

    time.sleep(2.0)
    first = {s: published(s) for s in (asking, plain)}
    time.sleep(seconds)
    return {s: published(s) - first[s] for s in (asking, plain)}


def _vlm_output(client) -> dict:
    return next(o for o in client.get("/api/v1/outputs").json()["outputs"] if o["name"] == "vlm")


def test_the_tiny_local_model_describes_answers_and_checks_asks_through_the_real_service(
    vlm_settings, rtsp_url, tmp_path_factory
):
    # given the `transformers` provider on the tiny random-weight SmolVLM (its words are nonsense, the
    # path is the real one: the app's loader, batching, the stage, the store, /ask) and the tiny SigLIP
    # for /ask's recall
    vlm_dir = save_tiny_vlm(tmp_path_factory.mktemp("vlm") / "tiny-smolvlm")
    siglip = save_tiny_siglip(tmp_path_factory.mktemp("embed") / "tiny-siglip")
    settings = vlm_settings(
        vlm_provider="transformers",
        vlm_model=str(vlm_dir),
        vlm_max_tokens=8,
        embed_enabled="true",
        embed_model=str(siglip),
        embed_backend="torch",
        embed_crops_per_event=0,
    )
    service = run_service(settings, detector_factory=lambda _s: WalkingPeople())  # the app's own vlm_factory
    try:
        with service.client() as client:
            assert _wait(lambda: client.get("/api/v1/vlm").json()["state"] == "ready", timeout=60), client.get(
                "/api/v1/vlm"
            ).json()
            assert client.get("/api/v1/vlm").json()["trained"] is False
            session_id = start_session(client, rtsp_url, zones=asking_zones(), alert=None, describe=True)["session_id"]
            status = client.get(f"/api/v1/video/status/{session_id}").json()
            assert status["describe"] == {"labels": None, "prompt": None, "after_s": None}  # true: the defaults

            # when walks end, then one is stored with the model's words (bounded) and its rules' answers
            def said():
                return next(
                    (e for e in _events(client, session_id) if not e["active"] and e["description"] and e["answers"]),
                    None,
                )

            event = _wait(said, timeout=60)
            assert event, _events(client, session_id)
            assert event["description_model"] == "tiny-smolvlm" and len(event["description"]) <= 300
            assert {a["question"] for a in event["answers"]} <= {PARCEL, FAILS}
            # (nonsense holds no verdict: the words are kept, no yes/no is believed, and the answer says so)
            for a in event["answers"]:
                assert a["model_id"] == "tiny-smolvlm" and isinstance(a["text"], str) and a["answer"] is None, a
                assert a["error"] == "the model's words held no yes/no verdict", a
            client.post("/api/v1/video/stop", json={"session_id": session_id})

            # and /ask recalls stored events and has the model check each, with its words as the reason
            # (nonsense words fail the verdict's schema check: no score, ranked last, never believed)
            assert _wait(lambda: client.get("/ready").json()["search"]["state"] == "ready", timeout=30)
            answer = client.post("/api/v1/ask", json={"question": "is someone carrying a parcel?", "top_k": 3})
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["model_id"] == "tiny-smolvlm" and body["trained"] is False and body["checked"] >= 1
            assert body["results"] and all(isinstance(r["reason"], str) for r in body["results"])
            assert all(r["score"] is None for r in body["results"])
    finally:
        service.stop()
