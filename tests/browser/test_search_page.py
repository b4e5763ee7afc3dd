"""Search on the viewer page, in Debian's chromium against the real service: the search box, "Similar"
on an event, and the same object's appearances across cameras, over events the real pipeline made
(two sessions on one camera URL, the scripted walkers, the tiny random-weight SigLIP: see
tests/integration/test_search_api.py for why the twin events are known to match). And what the page
shows of hostile text in an answer (a label holding markup) stays text.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from page_problems import PageProblems

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
Page, expect = sync_api.Page, sync_api.expect

from scripted_detector import ScheduledWalks  # noqa: E402
from support import make_settings, run_service, running_camera, start_session, wait_until  # noqa: E402
from tiny_model import save_tiny_siglip  # noqa: E402

pytestmark = pytest.mark.timeout(300)

TOP, BOTTOM = (0.05, 0.45), (0.70, 0.98)
HOSTILE = '<img src=x onerror="window.pwned=1">'


@pytest.fixture(scope="module")
def searchable(tiny_model_dir, tmp_path_factory):
    """The service with search on, and two sessions' events of two walks, ended and linked."""
    siglip = save_tiny_siglip(tmp_path_factory.mktemp("embed") / "tiny-siglip")
    detector = ScheduledWalks(walk_s=3.0)
    settings = make_settings(
        tiny_model_dir,
        data_dir=tmp_path_factory.mktemp("search-page"),
        event_end_after_s=1.0,
        track_keep_s=0.5,
        track_min_hits=2,
        embed_enabled="true",
        embed_model=str(siglip),
        embed_backend="torch",
        embed_crops_per_event=0,
        reid_threshold=0.9,
    )
    with running_camera(pattern="smpte") as camera:
        service = run_service(settings, detector_factory=lambda _s: detector)
        try:
            with service.client() as client:
                ready = lambda: client.get("/ready").json().get("search", {}).get("state") == "ready"  # noqa: E731
                assert wait_until(ready, timeout=60)
                ids = [start_session(client, camera.url)["session_id"] for _ in range(2)]
                now = time.time()
                detector.add(now + 1.5, *TOP)
                detector.add(now + 7.0, *BOTTOM)

                def linked() -> list[dict]:
                    events = client.get("/api/v1/events").json()["events"]
                    return [e for e in events if not e["active"] and e["global_id"]]

                assert wait_until(lambda: len(linked()) >= 4, timeout=40), client.get("/api/v1/events").json()
                for session_id in ids:
                    client.post("/api/v1/video/stop", json={"session_id": session_id})
                events = sorted(linked(), key=lambda e: (e["start_time"], e["session_id"]))
            yield service, events
        finally:
            service.stop()


@pytest.fixture
def tab(chromium, searchable) -> Iterator[Page]:
    service, _ = searchable
    problems = PageProblems(urlsplit(service.base_url).netloc)
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.on("pageerror", lambda error: problems.errors.append(str(error)))
    page.on("request", lambda request: problems.request(request.url))
    try:
        yield page
    finally:
        context.close()
    assert not problems.errors, f"script errors on the page: {problems.errors}"
    assert not problems.outside, f"the page reached outside the service: {problems.outside}"


def open_with_key(page: Page, service) -> None:
    page.goto(service.base_url + "/")
    page.get_by_label("API key").fill(service.api_key)


def test_the_search_box_similar_and_the_same_object_work_on_real_events(tab, searchable):
    service, events = searchable
    first_walk = [e for e in events if e["global_id"] == events[0]["global_id"]]
    assert len(first_walk) == 2
    open_with_key(tab, service)
    # The service says its encoder has random weights, beside the box
    expect(tab.locator("#search-notice")).to_contain_text("random weights", timeout=10_000)

    # When a person searches by words, then every event of every session is listed with its score
    tab.get_by_label("Search every camera's events by words").fill("a person walking")
    tab.get_by_role("button", name="Search", exact=True).click()
    rows = tab.locator("#events-list li[data-event-id]")
    expect(rows).to_have_count(4, timeout=10_000)
    expect(rows.first).to_contain_text("score")
    expect(tab.locator("#events-status")).to_contain_text("4 events")

    # When they ask for events like one of the first walk, then its twin (the other session) comes first
    example, twin = first_walk
    row = tab.locator(f'#events-list li[data-event-id="{example["id"]}"]')
    row.get_by_role("button", name=re.compile("look like")).click()
    expect(tab.locator("#events-status")).to_contain_text("Looks like")
    expect(rows).to_have_count(3)
    expect(rows.first).to_have_attribute("data-event-id", twin["id"])

    # When they open the same object, then both sessions' appearances are listed, oldest first, with snapshots
    rows.first.get_by_role("button", name=re.compile("on every camera")).click()
    dialog = tab.locator("#identity-dialog")
    expect(dialog).to_be_visible()
    expect(tab.locator("#identity-status")).to_contain_text("2 appearances on 2 cameras")
    appearances = tab.locator("#identity-list li")
    expect(appearances).to_have_count(2)
    assert {appearances.nth(i).get_attribute("data-event-id") for i in range(2)} == {example["id"], twin["id"]}
    expect(tab.locator("#identity-list img.thumb")).to_have_count(2)
    tab.keyboard.press("Escape")
    expect(dialog).to_be_hidden()

    # and back to the live list
    tab.get_by_role("button", name="Back to live events").click()
    expect(tab.locator("#events-list")).to_contain_text("The events of the watched session appear here.")


def test_hostile_text_in_search_answers_renders_inert(tab, searchable):
    service, events = searchable
    hostile = {**events[0], "label": HOSTILE, "camera": HOSTILE, "zones": [HOSTILE], "rules": [HOSTILE]}
    answer = {"events": [{**hostile, "score": 0.5}], "next_cursor": None, "model_id": HOSTILE, "trained": False,
              "notice": HOSTILE}  # fmt: skip
    tab.route(re.compile(r"/api/v1/events/search\?"), lambda route: route.fulfill(json=answer))
    tab.route(re.compile(r"/api/v1/identities/"), lambda route: route.fulfill(
        json={"global_id": events[0]["global_id"], "events": [hostile], "next_cursor": None}))  # fmt: skip
    open_with_key(tab, service)
    tab.get_by_label("Search every camera's events by words").fill(HOSTILE)
    tab.get_by_role("button", name="Search", exact=True).click()
    row = tab.locator("#events-list li[data-event-id]")
    expect(row).to_have_count(1)
    expect(row).to_contain_text(HOSTILE)  # shown as the characters it is
    expect(tab.locator("#search-notice")).to_have_text(HOSTILE)
    row.get_by_role("button", name=re.compile("on every camera")).click()
    expect(tab.locator("#identity-list li")).to_have_count(1)
    expect(tab.locator("#identity-list")).to_contain_text(HOSTILE)
    tab.wait_for_timeout(500)
    # No element was made from the text: the only images are the snapshots (blob: URLs), nothing ran
    sources = tab.evaluate("() => [...document.querySelectorAll('img')].map((img) => img.getAttribute('src'))")
    assert all(src is None or src.startswith("blob:") for src in sources), sources
    assert tab.evaluate("() => window.pwned") is None
