"""What the viewer page shows of the vision-language model, in Debian's chromium against the real
service: the "Ask" box over events the real pipeline made (the GStreamer camera, the scripted walkers,
the tiny random-weight SigLIP recalling, a scripted VLM checking: tests/scripted_vlm.py), a rule's
answer arriving on the viewer's WebSocket under its alert, and an event's description and answers on
its row. The model's words are hostile here (markup that would run if it were parsed): the page must
show them as the characters they are, and nothing may run.

Descriptions and answers on the event rows are not in the events API of this branch yet (the
description stage adds them): the row test hands the page real event documents with those fields
added, as the events API will send them.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from page_problems import PageProblems

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
Page, expect = sync_api.Page, sync_api.expect

from viewer_page import watch_from_list  # noqa: E402

from scripted_detector import ScheduledWalks  # noqa: E402
from scripted_vlm import ScriptedVlm  # noqa: E402
from support import make_settings, run_service, running_camera, start_session, wait_until  # noqa: E402
from tiny_model import save_tiny_siglip  # noqa: E402

pytestmark = pytest.mark.timeout(300)

TOP, BOTTOM = (0.05, 0.45), (0.70, 0.98)
HOSTILE = '<img src=x onerror="window.__pwned=1">'


def hostile_verdict(request) -> str:
    if request.purpose == "ask":
        return json.dumps({"answer": "yes", "score": 0.8, "reason": f"looks like it {HOSTILE}"})
    return HOSTILE


@pytest.fixture(scope="module")
def asked(tiny_model_dir, tmp_path_factory):
    """The service with search and a scripted VLM, a camera, and one session's two walks, ended."""
    siglip = save_tiny_siglip(tmp_path_factory.mktemp("embed") / "tiny-siglip")
    detector = ScheduledWalks(walk_s=3.0)
    vlm = ScriptedVlm(hostile_verdict)
    settings = make_settings(
        tiny_model_dir,
        data_dir=tmp_path_factory.mktemp("vlm-page"),
        event_end_after_s=1.0,
        track_keep_s=0.5,
        track_min_hits=2,
        embed_enabled="true",
        embed_model=str(siglip),
        embed_backend="torch",
        embed_crops_per_event=0,
        vlm_provider="openai",
    )
    with running_camera(pattern="smpte") as camera:
        service = run_service(settings, detector_factory=lambda _s: detector, vlm_factory=lambda _s: vlm)
        try:
            with service.client() as client:
                ready = lambda: client.get("/ready").json().get("search", {}).get("state") == "ready"  # noqa: E731
                assert wait_until(ready, timeout=60)
                session_id = start_session(client, camera.url)["session_id"]
                now = time.time()
                detector.add(now + 1.5, *TOP)
                detector.add(now + 6.0, *BOTTOM)

                def ended() -> list[dict]:
                    events = client.get("/api/v1/events", params={"session_id": session_id}).json()["events"]
                    return [e for e in events if not e["active"]]

                assert wait_until(lambda: len(ended()) >= 2, timeout=40), client.get("/api/v1/events").json()
                client.post("/api/v1/video/stop", json={"session_id": session_id})
                model_id = service.app.state.embedder.get().model_id
                assert wait_until(lambda: service.app.state.vector_index.count(model_id) >= 2, timeout=30)
                events = sorted(ended(), key=lambda e: e["start_time"])
            yield service, camera, events
        finally:
            service.stop()


@pytest.fixture
def tab(chromium, asked) -> Iterator[Page]:
    service, _, _ = asked
    problems = PageProblems(urlsplit(service.base_url).netloc)
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.on("pageerror", lambda error: problems.errors.append(str(error)))
    page.on("request", lambda request: problems.request(request.url))
    try:
        yield page
        assert page.evaluate("typeof window.__pwned") == "undefined", "the model's words ran as markup"
        assert page.locator("img[src='x']").count() == 0, "the model's words became an element"
    finally:
        context.close()
    assert not problems.errors, f"script errors on the page: {problems.errors}"
    assert not problems.outside, f"the page reached outside the service: {problems.outside}"


def open_with_key(page: Page, service) -> None:
    page.goto(service.base_url + "/")
    page.get_by_label("API key").fill(service.api_key)


def test_the_ask_box_lists_checked_events_with_their_reasons_as_text(tab, asked):
    service, _, events = asked
    open_with_key(tab, service)
    tab.get_by_label("Ask a yes/no question about every camera's stored events").fill("is someone walking?")
    tab.get_by_role("button", name="Ask", exact=True).click()
    rows = tab.locator("#ask-list li[data-event-id]")
    expect(rows).to_have_count(2, timeout=20_000)
    assert {rows.nth(i).get_attribute("data-event-id") for i in range(2)} == {e["id"] for e in events}
    expect(tab.locator("#ask-status")).to_contain_text("2 events checked")
    # the model's words, shown as the characters they are
    expect(rows.first.locator(".ask-reason")).to_have_text(f"looks like it {HOSTILE}")
    expect(rows.first).to_contain_text("yes")
    expect(rows.first).to_contain_text("score 0.80")
    # each with its snapshot, fetched with the key (a blob: URL), and a clip button where recordings hold it
    expect(tab.locator("#ask-list img.thumb[src^='blob:']")).to_have_count(2)
    if any(e["has_clip"] for e in events):
        expect(tab.locator("#ask-list .play-btn").first).to_be_visible()
    # the encoder that recalls has random weights: said beside the box
    expect(tab.locator("#ask-notice")).to_contain_text("random weights")


def test_a_rules_answer_on_the_websocket_is_shown_under_its_alert_as_text(tab, asked):
    service, camera, events = asked
    with service.client() as client:
        session_id = start_session(client, camera.url)["session_id"]
    try:
        watch_from_list(tab, service.base_url, service.api_key)
        hub = service.app.state.hub
        assert wait_until(lambda: hub.viewer_count(session_id) == 1, timeout=20)
        event_id = events[0]["id"]
        # Given an alert of a rule with a question (its event named), then the model's answer
        alert = {
            "class_name": "person",
            "confidence": 0.9,
            "bbox": [1, 2, 3, 4],
            "track_id": 7,
            "kind": "enter",
            "rule": "door",
            "zone": "door",
            "line": None,
            "direction": None,
            "count": None,
            "event_id": event_id,
        }
        hub.publish_event(
            session_id, {"type": "alert", "session_id": session_id, "timestamp": time.time(), "data": alert}
        )
        expect(tab.locator(f'#alert-log li[data-event-id="{event_id}"]')).to_have_count(1, timeout=10_000)
        answer = {
            "rule": "door",
            "question": f"is it a courier? {HOSTILE}",
            "time": time.time(),
            "event_id": event_id,
            "session_id": session_id,
            "camera": None,
            "text": HOSTILE,
            "answer": "no",
            "score": 0.1,
            "model_id": "scripted-vlm",
            "error": None,
        }
        hub.publish_event(session_id, {"type": "answer", **answer})
        failed = {
            **answer,
            "question": "is the door open?",
            "answer": None,
            "score": None,
            "text": "",
            "error": f"every key is cooling down {HOSTILE}",
        }
        hub.publish_event(session_id, {"type": "answer", "session_id": session_id, "data": failed})
        # Then both show under the alert, the words as text
        shown = tab.locator(f'#alert-log li[data-event-id="{event_id}"] .vlm-answer')
        expect(shown).to_have_count(2, timeout=10_000)
        expect(shown.first).to_contain_text(f"is it a courier? {HOSTILE}")
        expect(shown.first.locator("strong")).to_have_text("no (0.10)")
        expect(shown.first.locator(".vlm-reason")).to_have_text(HOSTILE)
        expect(shown.nth(1).locator("strong")).to_have_text("no answer")
        expect(shown.nth(1).locator(".vlm-reason")).to_have_text(f"every key is cooling down {HOSTILE}")
        # and an answer whose alert is not listed gets a row of its own
        hub.publish_event(session_id, {"type": "answer", **answer, "event_id": "f" * 32, "rule": "gate"})
        expect(tab.locator(f'#alert-log li[data-event-id="{"f" * 32}"] .vlm-answer')).to_have_count(1)
    finally:
        with service.client() as client:
            client.post("/api/v1/video/stop", json={"session_id": session_id})


def test_an_events_description_and_answers_show_on_its_row_as_text(tab, asked):
    service, _, events = asked
    described = {
        **events[0],
        "description": f"A person in a grey coat {HOSTILE}",
        "description_model": HOSTILE,
        "answers": [
            {
                "rule": "door",
                "question": f"carrying a parcel? {HOSTILE}",
                "time": events[0]["start_time"],
                "event_id": events[0]["id"],
                "session_id": events[0]["session_id"],
                "camera": None,
                "text": HOSTILE,
                "answer": "yes",
                "score": 0.75,
                "model_id": "scripted-vlm",
                "error": None,
            },
            {
                "rule": "door",
                "question": "is the door open?",
                "time": events[0]["start_time"],
                "event_id": events[0]["id"],
                "session_id": events[0]["session_id"],
                "camera": None,
                "text": "",
                "answer": None,
                "score": None,
                "model_id": None,
                "error": f"timed out {HOSTILE}",
            },
        ],
    }
    answer = {
        "events": [{**described, "score": 0.5}],
        "next_cursor": None,
        "model_id": "m",
        "trained": True,
        "notice": None,
    }
    # The search answer the service gives, with the fields the events API adds for described events
    tab.route(re.compile(r"/api/v1/events/search\?"), lambda route: route.fulfill(json=answer))
    open_with_key(tab, service)
    tab.get_by_label("Search every camera's events by words").fill("grey coat")
    tab.get_by_role("button", name="Search", exact=True).click()
    row = tab.locator(f'#events-list li[data-event-id="{events[0]["id"]}"]')
    expect(row).to_have_count(1)
    expect(row.locator(".vlm-description")).to_have_text(f"A person in a grey coat {HOSTILE}")
    answers = row.locator(".vlm-answer")
    expect(answers).to_have_count(2)
    expect(answers.first).to_contain_text(f"carrying a parcel? {HOSTILE}")
    expect(answers.first.locator("strong")).to_have_text("yes (0.75)")
    expect(answers.nth(1).locator(".vlm-reason")).to_have_text(f"timed out {HOSTILE}")


def test_the_ask_box_says_when_the_vlm_is_off(chromium, tiny_model_dir, tmp_path):
    settings = make_settings(tiny_model_dir, data_dir=tmp_path / "off")
    service = run_service(settings, detector_factory=lambda _s: ScheduledWalks())
    context = chromium.new_context()
    try:
        page = context.new_page()
        page.goto(service.base_url + "/")
        expect(page.locator("#ask-notice")).to_contain_text("VLM_PROVIDER=off", timeout=10_000)
        expect(page.locator("#ask-text")).to_be_disabled()
    finally:
        context.close()
        service.stop()
