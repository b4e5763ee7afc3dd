"""Driving the viewer page in tests: fill the form, start or watch a session, wait for things."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
LIVE_TIMEOUT_MS = 45_000  # opening the stream plus the first CPU inferences of the test model
LIT = 0.01  # share of non-black pixels that says a frame was painted (the test camera is mostly black)

# Sums of the canvas's pixels: how much of it is not black, and a checksum that moves with the picture.
CANVAS_SIGNATURE = """() => {
  const canvas = document.getElementById("video");
  const { data } = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
  let lit = 0, checksum = 0;
  for (let i = 0; i < data.length; i += 4) {
    const v = data[i] + data[i + 1] + data[i + 2];
    if (v > 30) lit += 1;
    checksum = (checksum * 31 + v) % 1000000007;
  }
  return { width: canvas.width, height: canvas.height, lit: lit / (data.length / 4), checksum };
}"""


def poll(what: str, probe, timeout_s: float = 30.0, interval_s: float = 0.25):
    """Call probe until it returns something truthy; fail naming `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")


def fill_start_form(page: Page, key: str, stream_url: str, *, alert_everything: bool = True) -> None:
    """Type the key and URL; optionally set the advanced fields so an alert must fire on random weights."""
    page.get_by_label("API key").fill(key)
    page.get_by_label("Stream URL").fill(stream_url)
    if alert_everything:
        page.locator("#advanced summary").click()
        page.get_by_label("Confidence threshold").fill("0")
        page.get_by_label("Alert classes").fill("")
        page.get_by_label("Alert min confidence").fill("0")
        page.get_by_label("Alert cooldown (s)").fill("1")


def hud_number(page: Page, element_id: str) -> float | None:
    text = page.locator(f"#{element_id}").inner_text().split()[0]
    try:
        return float(text)
    except ValueError:
        return None


def new_session(api: httpx.Client, before: set[str]) -> dict:
    """The one session started since `before` was taken."""
    sessions = [s for s in api.get("/api/v1/video/sessions").json()["sessions"] if s["session_id"] not in before]
    assert len(sessions) == 1, sessions
    return sessions[0]


def start_session(api: httpx.Client, stream_url: str) -> str:
    """A session started by someone else (through the API), alerts off: its id."""
    started = api.post("/api/v1/video/start", json={"stream_url": stream_url, "alert": None})
    assert started.status_code == 200, started.text
    return started.json()["session_id"]


def watch_from_list(page: Page, base_url: str, key: str) -> None:
    """Open the page, give the key, list the running sessions and watch the first."""
    page.goto(base_url + "/")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Refresh", exact=True).click()
    page.locator("#sessions-list button", has_text="Watch").first.click()


def viewers(api: httpx.Client, session_id: str) -> int:
    return api.get(f"/api/v1/video/status/{session_id}").json()["stats"]["viewers"]
