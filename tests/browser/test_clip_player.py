"""The clip player on the viewer page, in Debian's chromium against the real service: an event's clip
plays with its box drawn where the track says at the moment on screen, the download saves the bytes
played, and a camera's last minutes play from its continuous recording. The scripted walking people
make real events with a known moving box; the GStreamer camera sends H.264 with a keyframe a second."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from scripted_detector import WalkingPeople
from support import make_settings, run_service, start_session

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
Page, expect = sync_api.Page, sync_api.expect

from viewer_page import (  # noqa: E402 (after the skip: it imports Playwright too)
    ARTIFACTS,
    LIVE_TIMEOUT_MS,
    poll,
    watch_from_list,
)

PADDING_S = 1.0
KEYFRAME_S = 1.0

# The overlay's alpha at a point of the video given in source pixels: the test maps it onto the
# canvas itself (the <video> letterboxes its picture inside the element), so a page that drew at the
# wrong scale or offset reads empty there.
OVERLAY_ALPHA = """([sx, sy]) => {
  const video = document.getElementById("clip-video");
  const canvas = document.getElementById("clip-overlay");
  const scale = Math.min(canvas.width / video.videoWidth, canvas.height / video.videoHeight);
  const x = Math.round((canvas.width - video.videoWidth * scale) / 2 + sx * scale);
  const y = Math.round((canvas.height - video.videoHeight * scale) / 2 + sy * scale);
  return canvas.getContext("2d").getImageData(x, y, 1, 1).data[3];
}"""

# Seek the paused clip; resolves once the seek is done and a frame has been painted.
SEEK = """(time) => new Promise((resolve) => {
  const video = document.getElementById("clip-video");
  video.pause();
  video.addEventListener("seeked", () => requestAnimationFrame(() => resolve(video.currentTime)), { once: true });
  video.currentTime = time;
})"""

# Where the overlay is painted along a row (source pixels): [first, last] x, or null, and the video's time.
PAINTED = """(sy) => {
  const video = document.getElementById("clip-video");
  const canvas = document.getElementById("clip-overlay");
  const scale = Math.min(canvas.width / video.videoWidth, canvas.height / video.videoHeight);
  const left = (canvas.width - video.videoWidth * scale) / 2;
  const y = Math.round((canvas.height - video.videoHeight * scale) / 2 + sy * scale);
  const { data } = canvas.getContext("2d").getImageData(0, y, canvas.width, 1);
  const xs = [];
  for (let i = 3; i < data.length; i += 4) if (data[i]) xs.push(((i - 3) / 4 - left) / scale);
  return { painted: xs.length ? [xs[0], xs[xs.length - 1]] : null, time: video.currentTime, paused: video.paused };
}"""

VIDEO_STATE = """() => {
  const v = document.getElementById("clip-video");
  return { readyState: v.readyState, currentTime: v.currentTime, width: v.videoWidth, height: v.videoHeight,
           error: v.error && v.error.code };
}"""


@pytest.fixture(scope="module")
def live_service(tiny_model_dir, tmp_path_factory):
    """The service with the walking people for a detector, recording in 1-s segments, events ending
    a second after their object left (replaces the shared service for this module)."""
    settings = make_settings(
        tiny_model_dir,
        data_dir=tmp_path_factory.mktemp("clip-player"),
        record_segment_s=1.0,
        record_segment_max_s=3.0,
        record_sweep_s=0.5,
        record_pre_s=PADDING_S,
        record_post_s=PADDING_S,
        event_end_after_s=1.0,
    )
    service = run_service(settings, detector_factory=lambda _settings: WalkingPeople())
    yield service
    service.stop()


def recorded_event(api: httpx.Client, session_id: str) -> dict:
    """An ended event of the session whose clip is recorded from its pre-roll to its post-roll."""

    def found():
        events = api.get("/api/v1/events", params={"session_id": session_id, "limit": 50}).json()["events"]
        segments = api.get("/api/v1/recordings", params={"session_id": session_id}).json()["segments"]
        if not segments:
            return None
        first, newest = segments[0]["start_time"], max(s["end_time"] for s in segments)
        return next(
            (
                e
                for e in events
                if e["end_time"]
                and e["end_time"] + PADDING_S < newest
                and e["start_time"] - PADDING_S - KEYFRAME_S > first
                and e["end_time"] - e["start_time"] > 2.0  # a whole walk: its box crosses the picture
            ),
            None,
        )

    return poll("an ended event with its clip recorded", found, timeout_s=40)


def alpha(page: Page, x: float, y: float) -> int:
    return page.evaluate(OVERLAY_ALPHA, [x, y])


def drawn_at(page: Page, x: float, y: float) -> bool:
    """Whether the overlay is painted at (x, y) of the source picture; on failure, where it is."""
    if alpha(page, x, y) > 0:
        return True
    print(f"not painted at {x:.0f},{y:.0f}: {page.evaluate(PAINTED, y)}")
    return False


def centre(point: dict) -> tuple[float, float]:
    x1, y1, x2, y2 = point["bbox"]
    return (x1 + x2) / 2, (y1 + y2) / 2


def plays(page: Page) -> dict:
    """The clip decodes (readyState >= 2) and its time moves on; its state."""
    try:
        ready = poll("the clip ready to play", lambda: (s := page.evaluate(VIDEO_STATE))["readyState"] >= 2 and s)
    except BaseException:
        print(f"the player says: {page.locator('#clip-status').inner_text()!r}; {page.evaluate(VIDEO_STATE)}")
        raise
    assert ready["error"] is None, ready
    first = ready["currentTime"]
    poll(
        "the clip's time moving on",
        lambda: page.wait_for_timeout(100) or page.evaluate(VIDEO_STATE)["currentTime"] > first + 0.3,
        timeout_s=10,
    )
    return ready


def test_an_events_clip_plays_with_its_box_where_the_track_says_and_downloads_the_same_bytes(
    page, live_service, rtsp_url, api
):
    # given a session recording around its events, and one of them ended and recorded
    session_id = start_session(api, rtsp_url, alert=None, camera="gate", record="events")["session_id"]
    event = recorded_event(api, session_id)
    track = api.get(f"/api/v1/events/{event['id']}/track").json()
    points = track["points"]
    assert len(points) >= 5, track
    clip_start = float(api.get(f"/api/v1/events/{event['id']}/clip.mp4").headers["x-clip-start"])

    # when the person watches the session and presses the event's Play clip
    watch_from_list(page, live_service.base_url, live_service.api_key)
    play = page.locator(f'#events-list li[data-event-id="{event["id"]}"] .play-btn')
    expect(play).to_be_visible(timeout=LIVE_TIMEOUT_MS)
    served = {}

    def clip_route(route) -> None:  # the real answer, its bytes kept to compare with the download
        served["key"], served["url"] = route.request.headers.get("apikey"), route.request.url
        answer = route.fetch()
        served["status"], served["body"] = answer.status, answer.body()
        route.fulfill(response=answer)

    page.route(f"**/api/v1/events/{event['id']}/clip.mp4", clip_route)
    play.click()

    # then the clip was fetched with the key in a header, never in the URL
    poll("the clip asked for", lambda: page.wait_for_timeout(100) or "status" in served, timeout_s=10)
    assert served["status"] == 200 and served["key"] == live_service.api_key
    assert live_service.api_key not in served["url"]

    # and it plays: the camera's size, decoded, its time moving on
    state = plays(page)
    assert (state["width"], state["height"]) == (320, 240)

    # when the clip stands at an early point of the walk, then at a late one
    early, late = points[1], points[-2]
    assert late["t"] - early["t"] > 1.0  # the walker moves ~90 px/s; its box is 48 px wide
    page.evaluate(SEEK, early["t"] - clip_start + 0.05)

    # then the box is drawn where the early point is, not where the late one will be
    assert drawn_at(page, *centre(early))
    assert alpha(page, *centre(late)) == 0
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "viewer-clip-player.png"))

    page.evaluate(SEEK, late["t"] - clip_start + 0.05)
    assert drawn_at(page, *centre(late))
    assert alpha(page, *centre(early)) == 0

    # and before the object appeared (the pre-roll) no box is drawn at all
    page.evaluate(SEEK, max(0.0, points[0]["t"] - clip_start - 0.5))
    assert alpha(page, *centre(points[0])) == 0

    # when the person presses Download
    with page.expect_download() as download:
        page.locator("#clip-download").click()

    # then the file is the event's clip, the very bytes that were played
    assert download.value.suggested_filename == f"event-{event['id']}.mp4"
    assert Path(download.value.path()).read_bytes() == served["body"]


def test_a_cameras_last_minutes_play_and_a_camera_without_recordings_says_so(page, live_service, rtsp_url, api):
    # given a session of camera "yard" recording continuously, a few segments written
    start_session(api, rtsp_url, alert=None, camera="yard", record="continuous")
    poll(
        "segments of the yard",
        lambda: len(api.get("/api/v1/recordings", params={"camera": "yard"}).json()["segments"]) >= 2,
    )
    page.goto(live_service.base_url + "/")
    page.get_by_label("API key").fill(live_service.api_key)
    page.get_by_role("button", name="Refresh", exact=True).click()
    camera = page.get_by_label("Camera", exact=True)
    expect(camera).to_have_value("yard")  # suggested by the running sessions

    # when the person asks for the last minute of a camera that recorded nothing
    camera.fill("nowhere")
    page.get_by_label("Last minutes").fill("1")
    page.get_by_role("button", name="Play", exact=True).click()

    # then the player says so in the service's words, with nothing to play or download
    status = page.locator("#clip-status")
    expect(status).to_contain_text("Nothing was recorded of camera 'nowhere'")
    expect(page.locator("#clip-stage")).to_be_hidden()
    expect(page.locator("#clip-download")).to_be_hidden()
    page.get_by_role("button", name="Close the player").click()

    # when the person asks for the yard's last minute
    camera.fill("yard")
    page.get_by_role("button", name="Play", exact=True).click()

    # then it plays, and can be downloaded
    state = plays(page)
    assert (state["width"], state["height"]) == (320, 240)
    expect(page.locator("#clip-download")).to_be_visible()
    expect(page.locator("#clip-stage canvas")).to_be_attached()
