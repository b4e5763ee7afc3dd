"""The viewer page in front of several replicas: when the replica it watches through dies, the page
reconnects by itself through the balancer, and the picture comes back once another replica runs
the session."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")

from page_problems import PageProblems  # noqa: E402
from playwright.sync_api import expect  # noqa: E402 (after the skip: it imports Playwright too)
from viewer_page import LIVE_TIMEOUT_MS, hud_number, poll, watch_from_list  # noqa: E402

from cluster import HAPROXY, LEASE_S  # noqa: E402
from support import running_camera  # noqa: E402

pytestmark = pytest.mark.skipif(not os.path.exists(HAPROXY), reason="haproxy is not installed")


@pytest.fixture(autouse=True)
def sessions_before() -> Iterator[set[str]]:
    """Not the single service's cleanup: the deployment's replicas end with the test."""
    yield set()


def test_the_page_reconnects_by_itself_when_its_replica_dies_and_the_picture_comes_back(chromium, deployment):
    balancer = deployment.balancer
    with running_camera() as camera, deployment.client("r1") as r1:
        started = r1.post("/api/v1/video/start", json={"stream_url": camera.url, "camera": "yard"})
        assert started.status_code == 200 and started.headers["x-replica"] == "r1", started.text
        session_id = started.json()["session_id"]

        # given the page, its calls and its WebSocket sent to r1 by the balancer (a cookie: the
        # browser sends it with every request and with the WebSocket's upgrade)
        host = urlsplit(balancer.url).hostname
        context = sync_api_context(chromium, host, balancer.port)
        problems = PageProblems(urlsplit(balancer.url).netloc)
        page = context.new_page()
        page.on("pageerror", lambda error: problems.errors.append(str(error)))
        page.on("request", lambda request: problems.request(request.url))
        try:
            watch_from_list(page, balancer.url, deployment.key)
            expect(page.locator("#state-badge")).to_have_text("running", timeout=LIVE_TIMEOUT_MS)
            poll("frames from r1", lambda: (hud_number(page, "hud-frames") or 0) > 2)

            # when r1 dies without a word
            deployment.replicas.signal("r1", signal.SIGKILL)
            deployment.replicas.wait("r1", 5)

            # then the page says it lost the connection, reconnects through the balancer to r2
            # (r1 is down: the cookie is passed over), and once r2 runs the session after r1's
            # lease, the picture comes back without anyone touching the page
            expect(page.locator("#state-badge")).not_to_have_text("running", timeout=10_000)
            frames = hud_number(page, "hud-frames") or 0
            expect(page.locator("#state-badge")).to_have_text("running", timeout=(LEASE_S + 30) * 1000)
            poll("frames after the move", lambda: (hud_number(page, "hud-frames") or 0) > frames + 2, timeout_s=30)
            status = r1.get(f"/api/v1/video/status/{session_id}").json()  # r1 is gone: r2 answers
            assert status["replica"] == "r2" and status["state"] == "running", status
        finally:
            context.close()
        assert not problems.errors, f"script errors on the page: {problems.errors}"
        assert not problems.outside, f"the page reached outside the service: {problems.outside}"


def sync_api_context(chromium, host: str, port: int):
    """A fresh browser context whose requests to the balancer ask for r1 (the `route` cookie)."""
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    context.add_cookies([{"name": "route", "value": "r1", "url": f"http://{host}:{port}/"}])
    return context
