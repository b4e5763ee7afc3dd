"""Browser fixtures: Debian's chromium driven by Playwright, never a downloaded browser."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from page_problems import PageProblems

try:
    from playwright import sync_api
except ImportError:  # the tests in this folder skip themselves
    sync_api = None

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def chromium() -> Iterator[sync_api.Browser]:
    """One headless chromium per test module. Not one per run: Playwright's sync API keeps its event
    loop marked running on the main thread while it is open, and every later test there that
    calls asyncio.run() would fail ("cannot be called from a running event loop")."""
    if sync_api is None:
        pytest.skip("Playwright for Python is not installed")
    executable = CHROMIUM if CHROMIUM.exists() else shutil.which("chromium")
    if not executable:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(executable), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def api(live_service) -> Iterator[httpx.Client]:
    """HTTP client for the service's control routes, with the key in the `apikey` header."""
    with httpx.Client(base_url=live_service.base_url, headers={"apikey": live_service.api_key}, timeout=30) as client:
        yield client


@pytest.fixture(autouse=True)
def sessions_before(api: httpx.Client) -> Iterator[set[str]]:
    """Ids of the sessions running before the test; every session the test started is stopped after it."""
    before = {s["session_id"] for s in api.get("/api/v1/video/sessions").json()["sessions"]}
    yield before
    for session in api.get("/api/v1/video/sessions").json()["sessions"]:
        if session["session_id"] not in before:
            api.post("/api/v1/video/stop", json={"session_id": session["session_id"]})


@pytest.fixture
def page(chromium, live_service) -> Iterator[sync_api.Page]:
    """A fresh tab (own sessionStorage) at laptop size; fails the test on script errors or outside requests."""
    problems = PageProblems(urlsplit(live_service.base_url).netloc)
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    tab = context.new_page()
    tab.on("pageerror", lambda error: problems.errors.append(str(error)))
    tab.on("request", lambda request: problems.request(request.url))
    tab.on("websocket", lambda ws: problems.request(ws.url))
    try:
        yield tab
    finally:
        context.close()
    assert not problems.errors, f"script errors on the page: {problems.errors}"
    assert not problems.outside, f"the page reached outside the service (must work offline): {problems.outside}"
