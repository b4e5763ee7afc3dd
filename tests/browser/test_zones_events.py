"""Zones, lines, counts and events on the viewer page, in a real browser against the real service.

Zones and counts go end to end. The events panel is also tested against a fixed event list
(the random-weight test model makes events of its own, but which and when is chance).
"""

from __future__ import annotations

import base64
import json
import re
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
Page, expect = sync_api.Page, sync_api.expect

from viewer_page import (  # noqa: E402 (after the skip: it imports Playwright too)
    ARTIFACTS,
    LIVE_TIMEOUT_MS,
    poll,
    start_session,
    watch_from_list,
)

DOOR = [(0.2, 0.2), (0.6, 0.2), (0.6, 0.7), (0.2, 0.7)]

# Most opaque pixel of the zones layer within 3 screen pixels left or right of a normalised point
# moved `dy_px` screen pixels down (a thin stroke need not fall on one exact pixel).
LAYER_ALPHA = """([fx, fy, dyPx]) => {
  const canvas = document.getElementById("zones-layer");
  const ratio = canvas.width / canvas.clientWidth;
  const x = Math.round(fx * canvas.width - 3 * ratio);
  const y = Math.floor(fy * canvas.height + dyPx * ratio);
  const { data } = canvas.getContext("2d").getImageData(x, y, Math.round(6 * ratio) + 1, 1);
  let most = 0;
  for (let i = 3; i < data.length; i += 4) most = Math.max(most, data[i]);
  return most;
}"""

# Every blob: URL the page holds (created and not yet revoked).
COUNT_BLOB_URLS = """
window.liveBlobUrls = new Set();
const create = URL.createObjectURL.bind(URL);
const revoke = URL.revokeObjectURL.bind(URL);
URL.createObjectURL = (object) => { const url = create(object); window.liveBlobUrls.add(url); return url; };
URL.revokeObjectURL = (url) => { window.liveBlobUrls.delete(url); revoke(url); };
"""

# A 64x36 JPEG made by the browser's own encoder: what the fake snapshot route serves.
SMALL_JPEG = """() => {
  const canvas = document.createElement("canvas");
  canvas.width = 64;
  canvas.height = 36;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#1e3c5a";
  ctx.fillRect(0, 0, 64, 36);
  ctx.strokeStyle = "#ffc800";
  ctx.strokeRect(20, 8, 24, 22);
  return canvas.toDataURL("image/jpeg").split(",")[1];
}"""


def watch_running_session(page: Page, live_service, api: httpx.Client, rtsp_url: str, **start) -> str:
    """A session started through the API (alerts off), watched in the page until it runs: its id."""
    if start:
        answer = api.post("/api/v1/video/start", json={"stream_url": rtsp_url, "alert": None, **start})
        assert answer.status_code == 200, answer.text
        session_id = answer.json()["session_id"]
    else:
        session_id = start_session(api, rtsp_url)
    watch_from_list(page, live_service.base_url, live_service.api_key)
    expect(page.locator("#state-badge")).to_have_text("running", timeout=LIVE_TIMEOUT_MS)
    return session_id


def click_video(page: Page, fx: float, fy: float, *, double: bool = False) -> None:
    """Click (or double-click) the live video at a normalised point."""
    video = page.locator("#video")
    box = video.bounding_box()
    position = {"x": fx * box["width"], "y": fy * box["height"]}
    if double:
        video.dblclick(position=position)
    else:
        video.click(position=position)


def zones_of(api: httpx.Client, session_id: str) -> dict:
    answer = api.get(f"/api/v1/video/sessions/{session_id}/zones")
    assert answer.status_code == 200, answer.text
    return answer.json()["zones"]


def alpha(page: Page, fx: float, fy: float, dy_px: float = 0) -> int:
    return page.evaluate(LAYER_ALPHA, [fx, fy, dy_px])


def button(page: Page, name: str):
    return page.get_by_role("button", name=name, exact=True)


def test_a_zone_drawn_by_clicking_the_video_is_applied_to_the_session_and_drawn_over_it(
    page, live_service, rtsp_url, api
):
    # given a page watching a running session without zones
    session_id = watch_running_session(page, live_service, api, rtsp_url)
    assert zones_of(api, session_id)["zones"] == []

    # when the person draws a four-cornered zone named "door" on the video and presses Finish
    button(page, "Draw zone").click()
    page.get_by_label("Name", exact=True).fill("door")
    for corner in DOOR:
        click_video(page, *corner)
    button(page, "Finish").click()

    # then the session has that zone, its corners where the person clicked
    zones = poll("the zone on the service", lambda: zones_of(api, session_id)["zones"])
    assert [z["name"] for z in zones] == ["door"]
    assert zones[0]["points"] == [pytest.approx(list(corner), abs=0.01) for corner in DOOR]

    # and the page lists it and paints it over the video: tinted inside, clear outside
    expect(page.locator('#zones-list li[data-name="door"]')).to_be_visible()
    expect(page.locator("#zone-draft")).to_be_hidden()
    expect(page.locator("#zone-error")).to_be_hidden()
    poll("the zone painted over the video", lambda: alpha(page, 0.4, 0.45) > 0)
    assert alpha(page, 0.85, 0.85) == 0


def test_a_line_shows_its_in_side_and_remove_takes_it_off_the_session(page, live_service, rtsp_url, api):
    # given a page watching a running session
    session_id = watch_running_session(page, live_service, api, rtsp_url)

    # when the person draws a line "gate" from left to right across the middle
    button(page, "Draw line").click()
    page.get_by_label("Name", exact=True).fill("gate")
    click_video(page, 0.1, 0.5)
    click_video(page, 0.9, 0.5)

    # then the session has it, with the ends where the person clicked
    lines = poll("the line on the service", lambda: zones_of(api, session_id)["lines"])
    assert [(line["name"], line["a"], line["b"]) for line in lines] == [
        ("gate", pytest.approx([0.1, 0.5], abs=0.01), pytest.approx([0.9, 0.5], abs=0.01))
    ]

    # and its arrow points down the picture, the side that counts as "in" for a left-to-right line
    # (while the service answers, the dashed drawing is on screen: wait for the applied line)
    expect(page.locator('#zones-list li[data-name="gate"]')).to_be_visible()
    poll("the line's arrow painted", lambda: alpha(page, 0.5, 0.5, 15) > 0)
    assert alpha(page, 0.5, 0.5) > 0
    assert alpha(page, 0.5, 0.5, -15) == 0

    # when the person removes it
    button(page, "Remove line gate").click()

    # then it is gone from the session, the list and the video
    poll("the line removed on the service", lambda: zones_of(api, session_id)["lines"] == [])
    expect(page.locator('#zones-list li[data-name="gate"]')).to_have_count(0)
    poll("the line wiped off the video", lambda: alpha(page, 0.5, 0.5) == 0)


def test_a_double_click_closes_a_zone_with_its_alert_rule_and_escape_cancels_a_drawing(
    page, live_service, rtsp_url, api
):
    # given a page watching a running session
    session_id = watch_running_session(page, live_service, api, rtsp_url)

    # when the person draws a zone with two clicks and a double-click, asking for an alert on persons
    button(page, "Draw zone").click()
    page.get_by_label("Alert when a person enters").check()
    click_video(page, 0.1, 0.1)
    click_video(page, 0.4, 0.1)
    click_video(page, 0.25, 0.4, double=True)

    # then the zone has three corners (the double-click closed it, it added one corner only)
    zones = poll("the zone on the service", lambda: zones_of(api, session_id)["zones"])
    assert len(zones) == 1 and len(zones[0]["points"]) == 3
    name = zones[0]["name"]

    # and an "enter" rule for persons watches it, listed under the zone
    rules = zones_of(api, session_id)["rules"]
    assert [(r["kind"], r["zone"], r["classes"]) for r in rules] == [("enter", name, ["person"])]
    expect(page.locator(f'#zones-list li[data-name="{name}"] .zone-rules')).to_contain_text("person enters")

    # when the person begins another zone, clicks once and presses Escape
    button(page, "Draw zone").click()
    click_video(page, 0.7, 0.7)
    page.keyboard.press("Escape")

    # then the drawing is gone and nothing was sent
    expect(page.locator("#zone-draft")).to_be_hidden()
    assert len(zones_of(api, session_id)["zones"]) == 1
    assert alpha(page, 0.7, 0.7) == 0


def test_a_zone_the_service_refuses_shows_its_words_and_can_be_mended(page, live_service, rtsp_url, api):
    # given what the service says about a zone of two corners
    session_id = watch_running_session(page, live_service, api, rtsp_url)
    two_corners = {"zones": [{"name": "door", "points": [list(DOOR[0]), list(DOOR[1])]}]}
    refused = api.put(f"/api/v1/video/sessions/{session_id}/zones", json=two_corners)
    assert refused.status_code == 422, refused.text

    # when the person draws one with two corners and presses Finish
    button(page, "Draw zone").click()
    page.get_by_label("Name", exact=True).fill("door")
    click_video(page, *DOOR[0])
    click_video(page, *DOOR[1])
    button(page, "Finish").click()

    # then the page shows the service's words and keeps the drawing open
    expect(page.locator("#zone-error")).to_have_text(refused.json()["detail"])
    expect(page.locator("#zone-draft")).to_be_visible()
    assert zones_of(api, session_id)["zones"] == []

    # when the person adds a third corner and finishes again
    click_video(page, *DOOR[2])
    button(page, "Finish").click()

    # then the zone is applied and the error is gone
    poll("the mended zone on the service", lambda: len(zones_of(api, session_id)["zones"]) == 1)
    expect(page.locator("#zone-error")).to_be_hidden()


def test_the_counts_of_the_live_service_and_the_track_ids_show_on_the_page(page, live_service, rtsp_url, api):
    # given a session with a zone over the whole picture, where the random-weight model finds things
    whole = {"zones": [{"name": "all", "points": [[0, 0], [1, 0], [1, 1], [0, 1]]}]}
    watch_running_session(page, live_service, api, rtsp_url, confidence_threshold=0.0, zones=whole)

    # then the zone's live count of objects inside goes up from zero
    now = page.locator('#zones-list li[data-name="all"] .count-current')
    expect(now).to_have_text(re.compile(r"^[1-9]\d* \("), timeout=LIVE_TIMEOUT_MS)

    # and the detections in the HUD carry their track ids
    expect(page.locator("#hud-classes .tracks").first).to_have_text(re.compile(r"#\d+"), timeout=LIVE_TIMEOUT_MS)


FIXED_COUNTS = {
    "zones": {"door": {"current": {"person": 2, "car": 1}, "entered": {"person": 5}}},
    "lines": {"gate": {"in": {"person": 3}, "out": {"person": 1, "dog": 1}}},
    "rules": {"door-enter": 4},
}


def test_the_counts_panel_shows_the_counts_of_each_status_message(page, live_service, rtsp_url, api):
    # given a session with a zone, a line and a rule, whose status messages carry fixed counts
    # (the socket is the real one; only `counts` in its status messages is replaced)
    zones = {
        "zones": [{"name": "door", "points": [list(p) for p in DOOR]}],
        "lines": [{"name": "gate", "a": [0.1, 0.8], "b": [0.9, 0.8]}],
        "rules": [{"name": "door-enter", "kind": "enter", "zone": "door", "classes": ["person"]}],
    }

    def relay(ws) -> None:
        server = ws.connect_to_server()

        def to_page(message) -> None:
            if isinstance(message, str):  # frames come as bytes, the other messages as JSON text
                decoded = json.loads(message)
                if decoded.get("type") == "status":
                    message = json.dumps(dict(decoded, counts=FIXED_COUNTS, events_open=7))
            ws.send(message)

        server.on_message(to_page)
        ws.on_message(server.send)

    page.route_web_socket(re.compile(r"/ws/stream/"), relay)

    # when the person watches it
    watch_running_session(page, live_service, api, rtsp_url, zones=zones)

    # then the panel shows what the status messages say, per zone and per line
    door = page.locator('#zones-list li[data-name="door"]')
    expect(door.locator(".count-current")).to_have_text("3 (person 2, car 1)", timeout=10_000)
    expect(door.locator(".count-entered")).to_have_text("5 (person 5)")
    expect(door.locator(".zone-rules")).to_contain_text("fired 4")
    gate = page.locator('#zones-list li[data-name="gate"]')
    expect(gate.locator(".count-in")).to_have_text("3 (person 3)")
    expect(gate.locator(".count-out")).to_have_text("2 (dog 1, person 1)")
    expect(page.locator("#events-open")).to_have_text("7 open")

    # and a Remove button keeps the keyboard focus while the counts keep coming (one status a second)
    remove = button(page, "Remove line gate")
    remove.focus()
    page.wait_for_timeout(2500)
    expect(remove).to_be_focused()


def fixed_events(session_id: str) -> list[dict]:
    """Three events of the session: an active person, an ended car, an ended person without a snapshot."""
    start = 1_700_000_000.0

    def event(number: int, label: str, *, active: bool, snapshot: bool, zones: list[str]) -> dict:
        event_id = f"ev{number}"
        return {
            "id": event_id,
            "session_id": session_id,
            "camera": "front-door",
            "track_id": number,
            "label": label,
            "class_id": 0 if label == "person" else 2,
            "start_time": start + number,
            "end_time": None if active else start + number + 6,
            "last_seen": start + number + 6,
            "best_confidence": 0.87 if label == "person" else 0.64,
            "best_bbox": [20, 8, 44, 30],
            "zones": zones,
            "rules": ["door-enter"] if zones else [],
            "has_snapshot": snapshot,
            "active": active,
            "snapshot_url": f"/api/v1/events/{event_id}/snapshot.jpg" if snapshot else None,
        }

    return [
        event(12, "person", active=True, snapshot=True, zones=["door"]),
        event(9, "car", active=False, snapshot=True, zones=[]),
        event(5, "person", active=False, snapshot=False, zones=[]),
    ]


def test_the_events_panel_lists_events_with_snapshots_filters_enlarges_and_frees_them(
    page, live_service, rtsp_url, api
):
    # given the service's event routes answering a fixed list of three events and a small JPEG
    page.add_init_script(COUNT_BLOB_URLS)
    jpeg = base64.b64decode(page.evaluate(SMALL_JPEG))
    requests: list[tuple[str, str | None]] = []
    session = {}

    def events_route(route) -> None:
        requests.append((route.request.url, route.request.headers.get("apikey")))
        label = parse_qs(urlsplit(route.request.url).query).get("label", [None])[0]
        events = [e for e in fixed_events(session["id"]) if label is None or e["label"] == label]
        route.fulfill(json={"events": events, "next_cursor": None})

    def snapshot_route(route) -> None:
        requests.append((route.request.url, route.request.headers.get("apikey")))
        route.fulfill(body=jpeg, content_type="image/jpeg")

    page.route(re.compile(r"/api/v1/events\?"), events_route)
    page.route(re.compile(r"/api/v1/events/[^/]+/snapshot\.jpg$"), snapshot_route)

    # when the person watches a session (with a zone, to see both in one picture)
    session["id"] = start_session(api, rtsp_url)
    zones = {
        "zones": [{"name": "door", "points": [list(p) for p in DOOR]}],
        "lines": [{"name": "gate", "a": [0.1, 0.85], "b": [0.9, 0.85]}],
    }
    assert api.put(f"/api/v1/video/sessions/{session['id']}/zones", json=zones).status_code == 200
    watch_from_list(page, live_service.base_url, live_service.api_key)
    expect(page.locator("#state-badge")).to_have_text("running", timeout=LIVE_TIMEOUT_MS)

    # then the panel lists the three, newest first, active and ended, with time, zones and confidence
    rows = page.locator("#events-list li[data-event-id]")
    expect(rows).to_have_count(3, timeout=10_000)
    expect(rows.nth(0)).to_contain_text("person #12")
    expect(rows.nth(0)).to_contain_text("active")
    expect(rows.nth(0)).to_contain_text("zones: door")
    expect(rows.nth(0)).to_contain_text("best 87%")
    expect(rows.nth(1)).to_contain_text("car #9")
    expect(rows.nth(1)).to_contain_text("ended")
    expect(rows.nth(1).locator("time")).to_contain_text("(6 s)")
    expect(rows.nth(2).locator(".thumb.none")).to_have_text("no image")

    # and the two snapshots show as thumbnails through blob: URLs, fetched with the key in a header
    thumbs = page.locator("#events-list img.thumb")
    expect(thumbs).to_have_count(2)
    decoded_width = "(img) => img.complete && img.naturalWidth"
    for i in range(2):
        poll("a decoded thumbnail", lambda i=i: thumbs.nth(i).evaluate(decoded_width) == 64)
        assert thumbs.nth(i).get_attribute("src").startswith("blob:")
    snapshot_requests = [(url, key) for url, key in requests if "snapshot.jpg" in url]
    assert snapshot_requests and all(key == live_service.api_key for _, key in snapshot_requests)
    assert not [url for url, _ in requests if live_service.api_key in url]

    # and the list is asked for again every few seconds, for this session only
    def list_requests() -> list[dict]:
        return [parse_qs(urlsplit(url).query) for url, _ in requests if "snapshot.jpg" not in url]

    # (waiting inside Playwright, not in time.sleep: the sync API answers routes only while in a call)
    poll("the list asked for again", lambda: page.wait_for_timeout(200) or len(list_requests()) >= 2, timeout_s=10)
    assert all(query["session_id"] == [session["id"]] for query in list_requests())

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "viewer-zones-events.png"), full_page=True)

    # when the person shows only cars
    page.get_by_label("Show events of").select_option("car")

    # then only the car is listed, asked of the service by label
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("car #9")
    assert any(parse_qs(urlsplit(url).query).get("label") == ["car"] for url, _ in requests)

    # when the person clicks its thumbnail
    button(page, "Enlarge the snapshot of car #9").click()

    # then the snapshot opens large, and Escape closes it
    dialog = page.locator("#snapshot-dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("car #9")
    poll("the enlarged snapshot", lambda: page.locator("#snapshot-image").evaluate("(img) => img.naturalWidth") == 64)
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()

    # and so does its close button
    button(page, "Enlarge the snapshot of car #9").click()
    expect(dialog).to_be_visible()
    button(page, "Close the snapshot").click()
    expect(dialog).to_be_hidden()

    # when the person stops the session
    button(page, "Stop").click()
    expect(page.locator("#state-badge")).to_have_text("idle")

    # then the panel is empty again, no blob: URL is left, and the list is no longer asked for
    expect(rows).to_have_count(0)
    poll("every blob: URL revoked", lambda: page.evaluate("() => window.liveBlobUrls.size") == 0, timeout_s=5)
    asked = len(requests)
    page.wait_for_timeout(4000)  # longer than the page's refresh interval
    assert len(requests) == asked
