"""The viewer page in a real browser, against the real service and a real RTSP camera."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
expect = sync_api.expect

from viewer_page import (  # noqa: E402 (after the skip: it imports Playwright too)
    ARTIFACTS,
    CANVAS_SIGNATURE,
    LIT,
    LIVE_TIMEOUT_MS,
    fill_start_form,
    hud_number,
    new_session,
    poll,
    start_session,
    viewers,
    watch_from_list,
)


def test_start_shows_live_video_numbers_and_alerts_then_stop_returns_to_a_blank_idle_view(
    page, live_service, rtsp_url, api, sessions_before
):
    # given the page, a key and the test camera, with an alert rule that fires on any detection
    page.goto(live_service.base_url + "/")
    fill_start_form(page, live_service.api_key, rtsp_url)

    # when the person presses Enter in the form
    page.get_by_label("Stream URL").press("Enter")

    # then the session runs and the untrained-weights warning is prominent
    expect(page.locator("#state-badge")).to_have_text("running", timeout=LIVE_TIMEOUT_MS)
    expect(page.locator("#warning-banner")).to_be_visible()
    expect(page.locator("#warning-banner")).to_contain_text("NOT trained")

    # and the canvas shows the stream at its own size, not blank, and moving
    first = poll(
        "a painted frame",
        lambda: (s := page.evaluate(CANVAS_SIGNATURE))["lit"] > LIT and s,
        timeout_s=LIVE_TIMEOUT_MS / 1000,
    )
    session = new_session(api, sessions_before)
    assert (first["width"], first["height"]) == (session["stream"]["width"], session["stream"]["height"])
    poll("the picture to change", lambda: page.evaluate(CANVAS_SIGNATURE)["checksum"] != first["checksum"])

    # and the HUD counts up: frames received, fps from the service, end-to-end latency
    frames_before = hud_number(page, "hud-frames")
    poll("more frames in the HUD", lambda: hud_number(page, "hud-frames") > frames_before)
    poll("a source fps", lambda: (hud_number(page, "hud-source-fps") or 0) > 0)
    poll("an inference fps", lambda: (hud_number(page, "hud-inference-fps") or 0) > 0)
    expect(page.locator("#hud-latency")).to_contain_text("ms")
    expect(page.locator("#hud-classes li:not(.muted)").first).to_be_visible()
    expect(page.locator("#hud-damaged")).to_have_text("0")
    expect(page.locator("#hud-failed")).to_have_text("0 / 0")

    # and it says where the network runs, as the service reports it (the reason on hover)
    model = session["model"]
    precision = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[model["dtype"]]
    expect(page.locator("#hud-backend")).to_have_text(f"{model['backend']} {precision}, 1 thread")
    assert model["backend_reason"] and page.locator("#hud-backend").get_attribute("title") == model["backend_reason"]

    # and alerts pop up as toasts and land in the log with a thumbnail of the object
    expect(page.locator("#toasts .toast:not(.more)").first).to_contain_text("Alert:", timeout=LIVE_TIMEOUT_MS)
    expect(page.locator("#alert-log li img.thumb").first).to_be_visible(timeout=LIVE_TIMEOUT_MS)
    assert int(page.locator("#alert-count").inner_text()) >= 1

    ARTIFACTS.mkdir(exist_ok=True)
    page.wait_for_timeout(300)  # let the toast's entrance animation finish
    page.screenshot(path=str(ARTIFACTS / "viewer.png"), full_page=True)

    # when the person presses Stop
    page.get_by_role("button", name="Stop", exact=True).click()

    # then the page is idle and the service no longer runs the session
    expect(page.locator("#state-badge")).to_have_text("idle")
    expect(page.get_by_role("button", name="Start", exact=True)).to_be_enabled()
    status = api.get(f"/api/v1/video/status/{session['session_id']}")
    assert status.status_code == 404 or status.json()["state"] == "stopped"

    # and the last frame is gone from the canvas, and the hint does not ask for the key it has
    assert page.evaluate(CANVAS_SIGNATURE)["lit"] == 0
    expect(page.locator("#overlay")).to_be_visible()
    expect(page.locator("#overlay")).not_to_contain_text("Enter a key")


@pytest.mark.parametrize(
    ("key", "stream_url"),
    [("wrong-key", None), (None, "file:///etc/passwd")],
    ids=["wrong key", "unsupported url"],
)
def test_a_refused_start_shows_the_services_words(page, live_service, rtsp_url, key, stream_url):
    # given what the service itself says about this request
    key = key or live_service.api_key
    stream_url = stream_url or rtsp_url
    answer = httpx.post(
        live_service.base_url + "/api/v1/video/start",
        headers={"apikey": key},
        json={"stream_url": stream_url},
        timeout=30,
    )
    assert answer.status_code in (401, 422), answer.text
    detail = answer.json()["detail"]

    # when the person starts it from the page
    page.goto(live_service.base_url + "/")
    fill_start_form(page, key, stream_url, alert_everything=False)
    page.get_by_role("button", name="Start", exact=True).click()

    # then the page shows those words, not a status code, and stays ready for another try
    expect(page.locator("#error-banner")).to_be_visible()
    expect(page.locator("#error-text")).to_have_text(detail)
    expect(page.locator("#state-badge")).to_have_text("idle")
    expect(page.get_by_role("button", name="Start", exact=True)).to_be_enabled()


def test_the_key_stays_out_of_urls_and_in_session_storage(page, live_service, rtsp_url):
    # given a key typed and a start refused (the URL is not a stream)
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(live_service.base_url + "/")
    fill_start_form(page, live_service.api_key, "file:///etc/passwd", alert_everything=False)
    page.get_by_role("button", name="Start", exact=True).click()
    expect(page.locator("#error-banner")).to_be_visible()

    # then the key is in this tab's sessionStorage and in no URL the page asked for
    assert page.evaluate("() => Object.values(sessionStorage)").count(live_service.api_key) == 1
    assert not [url for url in requests + [page.url] if live_service.api_key in url]

    # and a reload of the tab keeps it, so the person need not type it again
    page.reload()
    expect(page.get_by_label("API key")).to_have_value(live_service.api_key)


def test_closing_the_tab_leaves_no_viewer_behind(page, live_service, rtsp_url, api, sessions_before):
    # given a page watching a session it started
    page.goto(live_service.base_url + "/")
    fill_start_form(page, live_service.api_key, rtsp_url, alert_everything=False)
    page.get_by_role("button", name="Start", exact=True).click()
    expect(page.locator("#state-badge")).to_have_text("running", timeout=LIVE_TIMEOUT_MS)
    session_id = new_session(api, sessions_before)["session_id"]
    poll("the viewer to be counted", lambda: viewers(api, session_id) == 1)

    # when the tab is closed
    page.close()

    # then the service counts no viewer within a few seconds (the session itself keeps running)
    poll("viewers == 0 after the tab closed", lambda: viewers(api, session_id) == 0, timeout_s=5)
    assert api.get(f"/api/v1/video/status/{session_id}").json()["state"] in ("running", "reconnecting")


def test_attach_to_a_running_session_pause_resume_and_leave(page, live_service, rtsp_url, api):
    # given a session started by someone else, with alerts off
    session_id = start_session(api, rtsp_url)

    # when the person lists the running sessions and picks it
    watch_from_list(page, live_service.base_url, live_service.api_key)

    # then its live video shows
    expect(page.locator("#state-badge")).to_have_text("running", timeout=LIVE_TIMEOUT_MS)
    poll("a painted frame", lambda: page.evaluate(CANVAS_SIGNATURE)["lit"] > LIT, timeout_s=LIVE_TIMEOUT_MS / 1000)
    poll("the viewer to be counted", lambda: viewers(api, session_id) == 1)

    # when the person pauses, then resumes, from the keyboard
    page.get_by_role("button", name="Pause", exact=True).focus()
    page.keyboard.press("Enter")
    poll("the session to pause", lambda: api.get(f"/api/v1/video/status/{session_id}").json()["paused"])
    expect(page.locator("#state-badge")).to_have_text("paused")
    page.get_by_role("button", name="Resume", exact=True).press("Enter")
    poll("the session to resume", lambda: not api.get(f"/api/v1/video/status/{session_id}").json()["paused"])
    expect(page.locator("#state-badge")).to_have_text("running")

    # when the person leaves the session
    page.get_by_role("button", name="Leave", exact=True).click()

    # then the page is idle, the viewer is gone, and the session keeps running for others
    expect(page.locator("#state-badge")).to_have_text("idle")
    poll("viewers == 0 after leaving", lambda: viewers(api, session_id) == 0, timeout_s=5)
    assert api.get(f"/api/v1/video/status/{session_id}").json()["state"] in ("running", "reconnecting")


def test_a_lost_camera_shows_reconnecting_then_live_again(page, live_service, rtsp_camera, api):
    # given a page watching the test camera
    page.goto(live_service.base_url + "/")
    fill_start_form(page, live_service.api_key, rtsp_camera.url, alert_everything=False)
    page.get_by_role("button", name="Start", exact=True).click()
    expect(page.locator("#state-badge")).to_have_text("running", timeout=LIVE_TIMEOUT_MS)

    # when the camera goes away
    rtsp_camera.stop()
    try:
        # then the page says the camera is lost and the service is reconnecting
        expect(page.locator("#state-badge")).to_have_text("camera lost — reconnecting", timeout=20_000)
        expect(page.locator("#overlay")).to_contain_text("Camera lost")
    finally:
        rtsp_camera.start()

    # and when it is back, the page is live again without the person doing anything
    expect(page.locator("#state-badge")).to_have_text("running", timeout=LIVE_TIMEOUT_MS)
    frames = hud_number(page, "hud-frames")
    poll("frames after the camera came back", lambda: hud_number(page, "hud-frames") > frames)


def test_the_page_fits_a_phone(page, live_service):
    # given a phone-sized window
    page.set_viewport_size({"width": 390, "height": 844})

    # when the page opens
    page.goto(live_service.base_url + "/")

    # then nothing scrolls sideways and the live view fits the width
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    box = page.locator("#video").bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390
    expect(page.get_by_label("API key")).to_be_visible()


@pytest.fixture
def one_viewer_per_session(live_service) -> Iterator[None]:
    """The live service with MAX_VIEWERS=1 for this test (its settings are read per connection)."""
    # By hand: monkeypatch's undo deletes attributes of starlette's State instead of restoring them.
    state = live_service.app.state
    settings = state.settings
    state.settings = settings.model_copy(update={"max_viewers": 1})
    try:
        yield
    finally:
        state.settings = settings


def test_a_viewer_over_the_limit_is_told_why_and_asks_again_only_slowly(
    page, chromium, live_service, rtsp_url, api, one_viewer_per_session
):
    # given a session with one viewer, the most the service allows
    session_id = start_session(api, rtsp_url)
    watch_from_list(page, live_service.base_url, live_service.api_key)
    expect(page.locator("#state-badge")).to_have_text("running", timeout=LIVE_TIMEOUT_MS)
    poll("the first viewer to be counted", lambda: viewers(api, session_id) == 1)

    # when a second person, in another browser, tries to watch it too
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    try:
        second = context.new_page()
        sockets: list[str] = []
        errors: list[str] = []
        second.on("websocket", lambda ws: sockets.append(ws.url))
        second.on("pageerror", lambda error: errors.append(str(error)))
        watch_from_list(second, live_service.base_url, live_service.api_key)
        clicked = time.monotonic()

        # then the page says the service refused a viewer too many, in the service's words
        expect(second.locator("#overlay")).to_contain_text("Too many viewers", timeout=5_000)
        expect(second.locator("#overlay")).not_to_contain_text("Connection to the service lost")

        # and over ten seconds it asks again at most a couple of times, not twice a second
        second.wait_for_timeout(max(0.0, 10.0 - (time.monotonic() - clicked)) * 1000)
        expect(second.locator("#overlay")).to_contain_text("Too many viewers")
        assert 1 <= len(sockets) <= 3, f"{len(sockets)} WebSocket connections in 10 s"
        assert not errors, errors
    finally:
        context.close()

    # and the first viewer goes on watching
    assert viewers(api, session_id) == 1
    expect(page.locator("#state-badge")).to_have_text("running")


def test_a_page_that_cannot_decode_frames_says_so_instead_of_waiting_forever(page, live_service, rtsp_url, api):
    # given a browser whose JPEG decoder fails on every frame
    page.add_init_script("window.createImageBitmap = () => Promise.reject(new Error('decoder broken'));")
    start_session(api, rtsp_url)

    # when the person watches a running session
    watch_from_list(page, live_service.base_url, live_service.api_key)
    expect(page.locator("#state-badge")).to_have_text("running", timeout=LIVE_TIMEOUT_MS)

    # then after a few seconds without a picture the overlay says why, and the HUD counts the failures
    expect(page.locator("#overlay")).to_contain_text("could not decode", timeout=LIVE_TIMEOUT_MS)
    expect(page.locator("#overlay")).not_to_contain_text("Waiting for the first frame")
    poll("page decode errors in the HUD", lambda: int(page.locator("#hud-failed").inner_text().split("/")[1]) > 0)
